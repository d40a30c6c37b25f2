"""The first deploy over real SSH against every lab host, twice: the second run changes nothing."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import testinfra
from conftest import recreate_lab, run_pyinfra
from pyinfra_results import parse_results

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def fresh_lab(lab, lab_cfg):
    """Freshly installed hosts (a down + up), so the first run really starts from nothing."""
    return recreate_lab(lab_cfg)


@pytest.fixture(scope="module")
def two_runs(fresh_lab):
    first = run_pyinfra("-y", "inventories/lab.py", "deploys/hello.py")
    started = {h["name"]: _active_since(fresh_lab, h["name"]) for h in fresh_lab["hosts"]}
    second = run_pyinfra("-y", "inventories/lab.py", "deploys/hello.py")
    return first, second, started


def _ssh(lab_data, name, command):
    return subprocess.run(["ssh", "-F", lab_data["ssh_config"], name, command],
                          capture_output=True, text=True, check=True).stdout.strip()


def _active_since(lab_data, name):
    return _ssh(lab_data, name, "systemctl show -P ActiveEnterTimestampMonotonic vlmfleet-hello.service")


def test_first_run_changes_every_operation_on_every_host(two_runs, fresh_lab):
    first, _, _ = two_runs
    rows = parse_results(first.stderr + first.stdout)
    n = len(fresh_lab["hosts"])
    assert n == 3
    assert all(r.hosts == n and r.errors == 0 for r in rows), rows
    assert all(r.changed == n for r in rows), [r for r in rows if r.changed != n]


def test_second_run_reports_no_changes(two_runs, fresh_lab):
    _, second, _ = two_runs
    rows = parse_results(second.stderr + second.stdout)
    n = len(fresh_lab["hosts"])
    assert len(rows) >= 6
    changed = [r for r in rows if r.changed or r.errors or r.unchanged != n]
    assert changed == [], changed
    assert (second.stderr + second.stdout).count("] No changes") == n * len(rows)


def test_second_run_restarts_nothing(two_runs, fresh_lab):
    _, _, started = two_runs
    assert started == {h["name"]: _active_since(fresh_lab, h["name"]) for h in fresh_lab["hosts"]}
    assert all(v.isdigit() and int(v) > 0 for v in started.values()), started


@pytest.mark.parametrize("index", [0, 1, 2])
def test_host_state(two_runs, fresh_lab, index):
    name = fresh_lab["hosts"][index]["name"]
    group = fresh_lab["hosts"][index]["group"]
    host = testinfra.get_host(f"ssh://{name}", ssh_config=fresh_lab["ssh_config"], sudo=True)
    page = host.file("/var/lib/vlmfleet/hello/index.json")
    assert page.is_file and page.mode == 0o644
    assert json.loads(page.content_string) == {"host": name, "groups": sorted(["lab", group]), "vlmfleet": "0.1.0"}
    assert host.file("/etc/vlmfleet").is_directory
    assert host.package("jq").is_installed
    unit = host.file("/etc/systemd/system/vlmfleet-hello.service")
    assert "--directory /var/lib/vlmfleet/hello 9099" in unit.content_string
    service = host.service("vlmfleet-hello.service")
    assert service.is_running and service.is_enabled
    assert host.socket("tcp://0.0.0.0:9099").is_listening


def test_service_answers_from_this_machine(two_runs, fresh_lab):
    for h in fresh_lab["hosts"]:
        with urllib.request.urlopen(f"http://{h['address']}:9099/index.json", timeout=5) as resp:
            assert json.load(resp)["host"] == h["name"]
