"""Seeing and reaching the fleet on the lab's hosts: deploys/monitoring.py and deploys/gateway.py over real SSH.

The operations host `ops` runs Debian's Prometheus (scraping the serving stand-ins, the node exporters and HAProxy)
and HAProxy (one address per group). A stopped replica fires its alert while requests through the gateway keep
succeeding; a rollout drains each replica before its restart and the gateway loses no request.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from conftest import run_pyinfra
from labutil import SERVED, api_key, ssh
from pyinfra_results import parse_results

from vlmfleet import monitoring

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def ops(lab):
    """The fleet serving (the main job), then monitoring and the gateway deployed; the ops host's address."""
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")
    for deploy in ("deploys/monitoring.py", "deploys/gateway.py"):
        proc = run_pyinfra("-y", "inventories/lab.py", deploy)
        rows = parse_results(proc.stderr + proc.stdout)
        assert rows and all(r.errors == 0 for r in rows), [r for r in rows if r.errors]
    return lab["ops"][0]["address"]


def prom(address: str, path: str, **params) -> dict:
    resp = requests.get(f"http://{address}:9090/api/v1/{path}", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success", body
    return body["data"]


def through_gateway(lab: dict, address: str, port: int = 8000, group: str = "qwen7b") -> requests.Response:
    return requests.post(f"http://{address}:{port}/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {api_key(lab)}"},
                         json={"model": SERVED[group], "messages": [{"role": "user", "content": "hello gateway"}]})


def wait_for(what: str, check, timeout_s: float, every_s: float = 1.0):
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f}s (last: {last!r})")


def test_a_second_run_of_monitoring_and_gateway_changes_nothing(ops):
    for deploy in ("deploys/monitoring.py", "deploys/gateway.py"):
        proc = run_pyinfra("-y", "inventories/lab.py", deploy)
        rows = parse_results(proc.stderr + proc.stdout)
        changed = [r for r in rows if r.changed or r.errors]
        assert rows and changed == [], (deploy, changed)


def test_prometheus_scrapes_every_target_of_the_inventory(lab, ops):
    want = {("vllm", h["name"]) for h in lab["hosts"]} | {("node", h["name"]) for h in lab["hosts"]}
    want |= {("node", "ops"), ("haproxy", "ops"), ("prometheus", None)}

    def all_up():
        targets = prom(ops, "targets")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"].get("host")): t["health"] for t in targets}
        return seen if set(seen) == want and set(seen.values()) == {"up"} else None

    wait_for("every target up", all_up, 60)
    up = prom(ops, "query", query="up")["result"]
    assert len(up) == len(want) and all(r["value"][1] == "1" for r in up), up
    rules = {r["name"] for g in prom(ops, "rules")["groups"] for r in g["rules"]}
    assert {a.name for a in monitoring.alerts(monitoring.Thresholds(), ["0.33.0"])} == rules


def test_every_dashboard_query_runs_on_the_lab_prometheus(lab, ops):
    for _ in range(5):  # some traffic, so latency and token panels have samples
        assert through_gateway(lab, ops).status_code == 200
    time.sleep(12)  # two scrapes
    empty = []
    for name, query in monitoring.dashboard_queries(monitoring.dashboard(["0.33.0"])):
        result = prom(ops, "query", query=query)["result"]
        if not result:
            empty.append(name)
    # only the GPU panels (no DCGM exporter without a GPU) have nothing to show in the lab
    assert empty and all(":gpu_" in n for n in empty), empty


def test_a_stopped_replica_fires_its_alert_while_the_gateway_keeps_serving(lab, ops):
    h2 = next(h for h in lab["hosts"] if h["name"] == "h2")
    unit = "vllm-" + h2["group"].replace("_", "-")
    ssh(lab, "h2", f"sudo systemctl stop {unit}")
    statuses = []
    try:
        def firing():
            statuses.append(through_gateway(lab, ops).status_code)
            alerts = prom(ops, "alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "VllmServerDown"
                    and a["labels"]["host"] == "h2" and a["state"] == "firing"]

        fired = wait_for("VllmServerDown firing for h2", firing, 200, every_s=2)
        assert fired[0]["labels"]["profile"] == "qwen7b"
        assert "has not answered /metrics for 2 minutes" in fired[0]["annotations"]["summary"]
        stats = requests.get(f"http://{ops}:8404/stats;csv", timeout=10).text
        row = next(line for line in stats.splitlines() if line.startswith("vlm_qwen7b,h2,"))
        assert row.split(",")[17].startswith("DOWN"), row
        names = {a["labels"]["alertname"] for a in prom(ops, "alerts")["alerts"] if a["state"] == "firing"}
        assert "VllmNoHealthyReplica" not in names  # h1 still serves the group
    finally:
        ssh(lab, "h2", f"sudo systemctl start {unit}")
    assert len(statuses) > 30 and set(statuses) == {200}, statuses
    wait_for("h2 healthy again", lambda: requests.get(f"http://{h2['address']}:8000/health", timeout=5).ok
             if _port_open(h2["address"]) else False, 120)


def _port_open(address: str) -> bool:
    try:
        requests.get(f"http://{address}:8000/health", timeout=2)
        return True
    except requests.RequestException:
        return False


def test_a_rollout_drains_each_replica_and_the_gateway_loses_no_request(lab, ops):
    statuses: list[int] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                statuses.append(through_gateway(lab, ops).status_code)
            except requests.RequestException as exc:
                statuses.append(repr(exc))
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        proc = run_pyinfra("-y", "--limit", "qwen7b", "inventories/lab.py", "deploys/vlm.py", "--data",
                           "vllm_max_num_seqs=32")
        back = run_pyinfra("-y", "--limit", "qwen7b", "inventories/lab.py", "deploys/vlm.py")
    finally:
        stop.set()
        worker.join(30)
    out = proc.stderr + proc.stdout
    assert out.count("draining: gateways send this replica no new requests") == 2, out[-3000:]
    assert "2 updated and healthy" in out and "2 updated and healthy" in back.stderr + back.stdout
    assert len(statuses) > 50 and set(statuses) == {200}, [s for s in statuses if s != 200][:5]


def test_each_group_has_its_own_address(lab, ops):
    models = requests.get(f"http://{ops}:8001/v1/models", timeout=10,
                          headers={"Authorization": f"Bearer {api_key(lab)}"})
    assert models.status_code == 200 and models.json()["data"][0]["id"] == SERVED["qwen72b_awq"]
    assert through_gateway(lab, ops, 8001, "qwen72b_awq").status_code == 200
    assert through_gateway(lab, ops, 8000, "qwen72b_awq").status_code == 404  # the other group's port
