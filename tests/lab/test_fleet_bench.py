"""`vlmfleet bench` against the running lab: one qwen7b host for 15 s or 30 requests, then its group through the
gateway on the ops host; the report holds every request, successful, with the time to the first token growing
with the image, and the API key is printed nowhere."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from conftest import REPO, VLMFLEET, run_pyinfra
from labutil import api_key

from vlmfleet.bench import report

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(lab):
    """The main job has run: every lab host serves its release."""
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")
    return lab


def bench(out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VLMFLEET, "bench", "inventories/lab.py", *args, "--duration", "15s", "--requests", "30",
                           "--max-tokens", "32", "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def check_report(out, proc, lab, url: str) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    key = api_key(lab)
    assert key not in proc.stdout + proc.stderr + (out / "locust.log").read_text() + (out / "settings.json").read_text()
    rows = report.read_rows(out / "requests.csv")
    assert len(rows) == 30 and all(r["ok"] for r in rows), [r["error"] for r in rows if not r["ok"]]
    assert {r["target"] for r in rows} == {url}
    assert all(0 < r["ttft_s"] < r["e2e_s"] and r["output_tokens"] == 32 for r in rows)
    with open(out / "summary.csv") as fh:
        table = {r["group"]: r for r in csv.DictReader(fh)}
    assert list(table) == ["all", "text", "image", "image 448x448", "image 1280x720"]
    assert table["all"]["errors"] == "0" and int(table["all"]["output_tokens"]) == 30 * 32
    # the stand-in prefills 4000 tokens/s: 1280x720 is 1196 image tokens (~0.3 s), 448x448 256 (~0.06 s)
    assert float(table["image 1280x720"]["ttft_p50_s"]) > float(table["image 448x448"]["ttft_p50_s"]) + 0.1
    assert 30 < float(table["all"]["mean_decode_tokens_per_s"]) <= 55  # the stand-in's 50 tokens/s
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return table


def test_bench_one_host(deployed, tmp_path):
    host = next(h for h in deployed["hosts"] if h["group"] == "qwen7b")
    proc = bench(tmp_path / "host", "--host", host["name"])
    check_report(tmp_path / "host", proc, deployed, f"http://{host['address']}:8000")
    settings = json.loads((tmp_path / "host" / "settings.json").read_text())
    assert settings["targets"] == [{"url": f"http://{host['address']}:8000", "model": "qwen2.5-vl-7b-instruct"}]


def test_bench_a_group_through_its_gateway(deployed, tmp_path):
    proc = run_pyinfra("-y", "inventories/lab.py", "deploys/gateway.py")
    assert proc.returncode == 0
    ops = deployed["ops"][0]["address"]
    out = tmp_path / "group"
    proc = bench(out, "--group", "qwen7b")
    settings = json.loads((out / "settings.json").read_text()) if (out / "settings.json").exists() else {}
    url = settings.get("targets", [{}])[0].get("url", "")
    assert url.startswith(f"http://{ops}:"), proc.stdout + proc.stderr
    check_report(out, proc, deployed, url)
