"""`vlmfleet status` against the lab after the main job: every host active, healthy and current, in the table and
in --json; new data (`--data vllm_max_num_seqs=32`) shows as drift naming --max-num-seqs; the SSH tunnel path
(`--tunnel always`) reads the same."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, VLMFLEET, run_pyinfra

pytestmark = pytest.mark.lab


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VLMFLEET, "status", "inventories/lab.py", *args], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, COLUMNS="200"), timeout=120)


@pytest.fixture(scope="module")
def deployed(lab):
    """The main job has run: every lab host serves its release."""
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")
    return lab


def test_every_lab_host_is_active_healthy_and_current(deployed):
    proc = status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["HOST", "PROFILE", "UNIT"]
    hosts = {h["name"] for h in deployed["hosts"]}
    body = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert set(body) == hosts, proc.stdout  # serving hosts only (not ops), and no note lines under the table
    for line in body.values():
        assert "active/running" in line and " no " in line and "healthy" in line, line


def test_json_has_every_host_ok(deployed):
    proc = status("--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["host"] for r in rows) == sorted(h["name"] for h in deployed["hosts"])
    for r in rows:
        assert (r["unit"]["state"], r["healthy"], r["drift"], r["ok"], r["via"]) == \
            ("active/running", True, False, True, "direct"), r
        assert r["vllm_version"] == "0.33.0" and r["requests_waiting"] == 0.0 and r["kv_cache_usage"] is not None
        assert r["gpus"] and all(g["memory_total_mib"] > 0 for g in r["gpus"])
    key = open(deployed["api_key_file"]).read().strip()
    assert key not in proc.stdout + proc.stderr  # the API key is never printed


def test_new_data_shows_as_drift_naming_the_flag(deployed):
    proc = status("--data", "vllm_max_num_seqs=32", "--json")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # healthy, but drifted
    for r in json.loads(proc.stdout):
        assert r["drift"] is True and r["healthy"] is True, r
        assert "--max-num-seqs" in r["drift_detail"] and "-> 32" in r["drift_detail"], r["drift_detail"]
    table = status("--data", "vllm_max_num_seqs=32")
    assert table.returncode == 3 and "drift: --max-num-seqs" in table.stdout


def test_the_ssh_tunnel_reads_the_same(deployed):
    proc = status("--tunnel", "always", "--json", "--limit", "h1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(proc.stdout)
    assert (row["host"], row["via"], row["healthy"], row["drift"]) == ("h1", "ssh tunnel", True, False)
    table = status("--tunnel", "always", "--limit", "h1")
    assert "healthy via ssh tunnel" in table.stdout


def test_an_unknown_limit_is_one_line_and_exit_2(deployed):
    proc = status("--limit", "h9")
    assert proc.returncode == 2
    assert proc.stderr.startswith("vlmfleet status: error: --limit h9: no host or group of that name")
