"""Issue 9, safe rollouts, on real lab hosts: a release that fails at startup stops at the first batch and is
rolled back (verified healthy); the startup ladder answers vLLM's own out-of-memory message and records what
worked; the per-host lock; rollback on demand; and the faults a fleet meets — a killed container, an unreachable
host, the registry down during an upgrade.

Each test leaves the lab converged on the committed data (its last run is the main job with no overrides)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests
from conftest import run_pyinfra
from labutil import chat, hub, ssh, started_at
from pyinfra_results import parse_results

pytestmark = pytest.mark.lab

MAIN = ("-y", "inventories/lab.py", "deploys/vlm.py")
RELEASES = "/var/lib/vlmfleet/releases"


def service(host: dict) -> str:
    return "vllm-" + host["group"].replace("_", "-")


def rollout(out: str) -> dict[str, str]:
    """The end-of-run summary: host -> its line (``updated and healthy  batch 1  release ... is healthy``)."""
    _, sep, block = out.partition("--> Rollout:")
    assert sep, f"no rollout summary:\n{out[-3000:]}"
    lines = {}
    for line in block.splitlines()[1:]:
        if not line.startswith("    ") or not line.strip():
            break
        name, _, rest = line.strip().partition("  ")
        if " " in name:  # the closing count line, e.g. "2 unchanged, 1 updated and healthy"
            continue
        lines[name] = rest.strip()
    return lines


def release_state(lab: dict, host: dict) -> dict:
    return json.loads(ssh(lab, host["name"], f"sudo cat {RELEASES}/{service(host)}/state.json"))


def history(lab: dict, host: dict) -> list[dict]:
    text = ssh(lab, host["name"], f"sudo cat {RELEASES}/{service(host)}/history.jsonl")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def unit(lab: dict, host: dict) -> str:
    return ssh(lab, host["name"], f"sudo cat /etc/systemd/system/{service(host)}.service")


def qwen7b(lab: dict) -> list[dict]:
    return [h for h in lab["hosts"] if h["group"] == "qwen7b"]


def big(lab: dict) -> dict:
    return next(h for h in lab["hosts"] if h["group"] == "qwen72b_awq")


def set_gpu_pressure(lab_cfg, host: dict, **values) -> None:
    """What the planner cannot see on a host's simulated GPUs (vlmfleet/lab/standins/gpu_memory.py)."""
    path = lab_cfg.hosts_dir / host["name"] / "root/etc/vlmfleet-lab/gpus.json"
    gpus = json.loads(path.read_text())
    for key in ("used_by_others_mib", "peak_extra_mib"):
        gpus.pop(key, None)
    gpus.update(values)
    path.write_text(json.dumps(gpus, indent=1) + "\n")


@pytest.fixture(scope="module")
def converged(lab):
    run_pyinfra(*MAIN)
    return lab


def test_a_release_that_fails_at_startup_stops_at_the_first_batch_and_is_rolled_back(converged):
    lab = converged
    first, second = qwen7b(lab)[0], qwen7b(lab)[1]
    canaries = [first, big(lab)]  # batch 1 of each profile (rollout_batches default [1, "25%", "100%"])
    before, was = started_at(lab), {h["name"]: release_state(lab, h)["active"]["id"] for h in lab["hosts"]}
    broken = f"{lab['registry']}/vlmfleet-lab/vllm-standin:0.33.0-broken"
    proc = run_pyinfra(*MAIN, "--data", f"vllm_image={broken}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    summary = rollout(out)
    for h in canaries:
        line = summary[h["name"]]
        assert line.startswith("failed and rolled back batch 1"), line
        assert f"back on {was[h['name']]}, healthy" in line and "The NVIDIA driver on your system is too old" in line
        assert release_state(lab, h)["active"]["id"] == was[h["name"]]
        assert broken not in unit(lab, h)
        assert chat(lab, h, "still serving?").status_code == 200
        last = history(lab, h)[-1]
        assert last["result"] == f"failed, rolled back to {was[h['name']]}" and last["from"] == was[h["name"]]
        assert last["who"] and last["run"] and last["back_healthy"] is True
    assert summary[second["name"]].startswith("not reached"), summary
    assert f"{first['name']}, {big(lab)['name']} failed the new release; not restarted" in summary[second["name"]]
    assert started_at(lab)[second["name"]] == before[second["name"]]  # never restarted
    assert "Traceback" not in out

    # the committed data describes the release every host runs again: the next run stages that candidate again
    # and restarts nothing
    after = started_at(lab)
    again = run_pyinfra(*MAIN)
    changed = [r.operation for r in parse_results(again.stdout + again.stderr) if r.changed]
    assert changed and all(op.startswith("Service | Stage") for op in changed), changed
    assert all(line.startswith("unchanged") for line in rollout(again.stdout + again.stderr).values())
    assert started_at(lab) == after


def test_vllm_out_of_memory_at_startup_walks_the_ladder_and_the_rung_sticks(converged, lab_cfg):
    lab = converged
    h = qwen7b(lab)[1]  # 1xL40S: util 0.92 planned; 3000 MiB held by others leave less free at start
    set_gpu_pressure(lab_cfg, h, used_by_others_mib=3000)
    try:
        args = ("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py", "--data", "vllm_max_num_seqs=32")
        proc = run_pyinfra(*args)
        out = proc.stdout + proc.stderr
        assert "on startup is less than desired GPU memory utilization (0.92" in out  # vLLM's own message
        assert "trying ladder rung 1: gpu_memory_utilization 0.92 -> 0.87" in out
        line = rollout(out)[h["name"]]
        assert line.startswith("updated and healthy") and "after ladder rung 1: gpu_memory_utilization 0.92 -> 0.87" \
            in line, line
        state = release_state(lab, h)["active"]
        assert state["rung"] == 1 and state["changes"] == {"gpu_memory_utilization": 0.87}
        assert "--gpu-memory-utilization 0.87" in unit(lab, h)
        tried = history(lab, h)[-1]["tried"]
        assert [t["rung"] for t in tried] == [0, 1] and tried[0]["memory"] == "oom" and tried[1]["healthy"]
        assert "Free memory on device" in tried[0]["vllm_said"] and tried[1]["vllm_said"] == ""
        plan = json.loads(ssh(lab, h["name"], "sudo cat /var/lib/vlmfleet/vllm-qwen7b.plan.json"))
        assert plan["kv_capacity_tokens"] < json.loads(
            ssh(lab, h["name"], f"sudo cat {RELEASES}/vllm-qwen7b/candidate/plan.json"))["kv_capacity_tokens"]
        # the same data again: the rung that worked is the host's release; nothing changes, nothing restarts
        before = started_at(lab)[h["name"]]
        again = run_pyinfra(*args)
        assert [r for r in parse_results(again.stdout + again.stderr) if r.changed] == []
        assert started_at(lab)[h["name"]] == before
    finally:
        set_gpu_pressure(lab_cfg, h)
    run_pyinfra(*MAIN)
    assert release_state(lab, h)["active"]["rung"] == 0


def test_the_ladder_is_bounded_then_the_host_returns_to_its_release(converged, lab_cfg):
    """2 GiB held by others: the release asking 0.95 cannot start, the release it replaces (0.92) can."""
    lab = converged
    h = qwen7b(lab)[1]
    was = release_state(lab, h)["active"]["id"]
    set_gpu_pressure(lab_cfg, h, used_by_others_mib=2048)
    try:
        proc = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py", "--data",
                           "vllm_gpu_memory_utilization=0.95", "--data", "startup_ladder_steps=0", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "the startup ladder has no further rung for 'oom' (0 planned; startup_ladder_steps)" in out
        line = rollout(out)[h["name"]]
        assert line.startswith("failed and rolled back") and f"back on {was}, healthy" in line, line
        assert release_state(lab, h)["active"]["id"] == was and chat(lab, h, "back?").status_code == 200
    finally:
        set_gpu_pressure(lab_cfg, h)
    run_pyinfra(*MAIN)


def test_a_second_rollout_waits_for_the_lock_and_a_stale_one_is_broken_on_purpose(converged):
    lab = converged
    h, others = lab["hosts"][0], lab["hosts"][1:]
    lock = "run=20260101T000000Z-dead00\nwho=bob@elsewhere\nsince=2026-01-01T00:00:00Z\n"
    ssh(lab, h["name"], "sudo tee /var/lib/vlmfleet/rollout.lock >/dev/null", input=lock)
    before = started_at(lab)[h["name"]]
    try:
        _run_while_another_run_holds_the_lock(lab, h, lock, before, others)
        broke = run_pyinfra(*MAIN, "--data", "rollout_break_lock=true")
    finally:
        ssh(lab, h["name"], "sudo sh -c 'grep -q bob@elsewhere /var/lib/vlmfleet/rollout.lock && "
                            "rm -f /var/lib/vlmfleet/rollout.lock'; true", check=False)
    out = broke.stdout + broke.stderr
    assert "breaking the rollout lock of bob@elsewhere since 2026-01-01T00:00:00Z (run 20260101T000000Z-dead00)" \
        in out
    assert ssh(lab, h["name"], "sudo test -e /var/lib/vlmfleet/rollout.lock && echo held || echo free").strip() \
        == "free"


def _run_while_another_run_holds_the_lock(lab, h, lock, before, others):
    proc = run_pyinfra(*MAIN, "--data", "vllm_max_num_seqs=32", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("another rollout holds this host's lock: bob@elsewhere since 2026-01-01T00:00:00Z (run "
            "20260101T000000Z-dead00) — fix: wait for that run to end; if it is dead (interrupted, its machine "
            "gone), break the lock on purpose with --data rollout_break_lock=true") in out
    summary = rollout(out)
    assert summary[h["name"]].startswith("failed before restart")
    assert all(summary[o["name"]].startswith("updated and healthy") for o in others), summary
    assert started_at(lab)[h["name"]] == before
    assert ssh(lab, h["name"], "sudo cat /var/lib/vlmfleet/rollout.lock") == lock  # another run's lock stays
    for o in others:  # this run released the locks it took
        assert ssh(lab, o["name"], "sudo test -e /var/lib/vlmfleet/rollout.lock && echo held || echo free",
                   ).strip() == "free"


def test_rollback_on_demand_returns_to_the_release_before(converged):
    lab = converged
    h = qwen7b(lab)[0]
    first = release_state(lab, h)["active"]["id"]
    run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py", "--data", "vllm_max_num_seqs=32")
    assert release_state(lab, h)["active"]["id"] != first and "--max-num-seqs 32" in unit(lab, h)
    proc = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/rollback.py")
    out = proc.stdout + proc.stderr
    assert rollout(out)[h["name"]].startswith("rolled back and healthy"), out[-3000:]
    assert release_state(lab, h)["active"]["id"] == first and "--max-num-seqs 32" not in unit(lab, h)
    last = history(lab, h)[-1]
    assert last["action"] == "rollback" and last["to"] == first and last["back_healthy"] is True
    assert chat(lab, h, "rolled back?").status_code == 200
    # the committed data is the release it returned to: the candidate is staged again, nothing restarts
    after = started_at(lab)
    again = run_pyinfra(*MAIN)
    changed = [r.operation for r in parse_results(again.stdout + again.stderr) if r.changed]
    assert all(op.startswith("Service | Stage") for op in changed), changed
    assert rollout(again.stdout + again.stderr)[h["name"]].startswith("unchanged")
    assert started_at(lab) == after


def test_a_killed_container_is_restarted_by_systemd_and_health_sees_it_recover(converged):
    lab = converged
    h = qwen7b(lab)[0]
    name = service(h)
    restarts = int(ssh(lab, h["name"], f"systemctl show -P NRestarts {name}.service").strip())
    ssh(lab, h["name"], f"sudo docker kill {name}")
    down_seen, deadline = False, time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ok = requests.get(f"http://{h['address']}:8000/health", timeout=3).status_code == 200
        except requests.RequestException:
            ok = False
        down_seen = down_seen or not ok
        if down_seen and ok:
            break
        time.sleep(1)
    assert down_seen and ok, "the server did not come back within 120s of `docker kill`"
    assert int(ssh(lab, h["name"], f"systemctl show -P NRestarts {name}.service").strip()) == restarts + 1
    proc = run_pyinfra("-y", "inventories/lab.py", "deploys/health.py")
    assert all(r.errors == 0 for r in parse_results(proc.stdout + proc.stderr))
    assert chat(lab, h, "recovered?").status_code == 200


def test_an_unreachable_host_fails_alone_and_is_named(converged):
    lab = converged
    gone = big(lab)
    rule = ["OUTPUT", "-d", gone["address"], "-p", "tcp", "--dport", "22", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        proc = run_pyinfra(*MAIN, "--data", "vllm_max_num_seqs=32", check=False)
    finally:
        while subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode == 0:
            subprocess.run(["iptables", "-D", *rule], check=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    summary = rollout(out)
    assert summary[gone["name"]].startswith("failed before restart") and "could not connect" in summary[gone["name"]]
    for h in qwen7b(lab):
        assert summary[h["name"]].startswith("updated and healthy"), summary
        assert "--max-num-seqs 32" in unit(lab, h)
    assert chat(lab, gone, "untouched?").status_code == 200
    run_pyinfra(*MAIN)


def test_the_registry_down_during_an_upgrade_keeps_the_old_release_serving(converged, lab_cfg):
    from vlmfleet.lab import services

    lab = converged
    new = f"{lab['registry']}/vlmfleet-lab/vllm-standin:0.33.0-broken"  # any image the hosts do not have
    for h in lab["hosts"]:
        ssh(lab, h["name"], f"sudo docker rmi {new} >/dev/null 2>&1; true")
    before = started_at(lab)
    registry = next(d for d in services.daemons(lab_cfg) if d.name == "registry")
    services._stop_one(lab_cfg, registry)
    try:
        proc = run_pyinfra(*MAIN, "--data", f"vllm_image={new}", check=False)
    finally:
        services.start(lab_cfg)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "connection refused" in out.lower(), out[-3000:]
    summary = rollout(out)
    for h in lab["hosts"]:
        assert summary[h["name"]].startswith("failed before restart") and "Image | Pull" in summary[h["name"]]
        assert chat(lab, h, "old release?").status_code == 200
    assert started_at(lab) == before
    assert requests.get(f"http://{lab['registry']}/v2/", timeout=10).status_code == 200  # back for the next test
    run_pyinfra(*MAIN)


# ---- the weights: corrupted bytes from the hub, a disk that fills --------------------------------------------------
SHARD = "model-00001-of-00002.safetensors"
DEST = "/srv/models/Qwen2.5-VL-7B-Instruct"


def test_corrupted_bytes_from_the_hub_are_detected_refetched_and_never_served(converged):
    lab = converged
    h = qwen7b(lab)[0]
    want = next(e for e in hub(lab, "/api/models/Qwen/Qwen2.5-VL-7B-Instruct/tree/main?recursive=true").json()
                if e["path"] == SHARD)["lfs"]["oid"]
    # once: the first download is spoilt, vlmfleet-fetch sees the hash differ, fetches again, verifies
    ssh(lab, h["name"], f"sudo rm -f {DEST}/{SHARD}")
    hub(lab, "/_standin/reset-log", json={})
    hub(lab, "/_standin/corrupt", json={"file": SHARD, "times": 1})
    run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py")
    gets = [e for e in hub(lab, "/_standin/log").json() if e["path"].endswith(SHARD) and e["method"] == "GET"]
    assert len(gets) == 2, gets
    assert ssh(lab, h["name"], f"sudo sha256sum {DEST}/{SHARD}").split()[0] == want
    assert chat(lab, h, "verified?").status_code == 200

    # every time: the fetch gives up with a clear error; the running server is left alone, and a restart of it
    # refuses the unverified folder (the unit's guard) rather than serve it
    ssh(lab, h["name"], f"sudo rm -f {DEST}/{SHARD}")
    hub(lab, "/_standin/corrupt", json={"file": SHARD, "times": 10})
    try:
        proc = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert f"{SHARD} still differ from the hub's hashes after a second download" in out
        assert rollout(out)[h["name"]].startswith("failed before restart")
        assert chat(lab, h, "still serving?").status_code == 200
        guard = ssh(lab, h["name"], f"sudo systemctl restart {service(h)}; sleep 2; sudo journalctl -u {service(h)} "
                                    "-n 20 -o cat", check=False)
        assert f"{DEST} is not a verified copy of Qwen/Qwen2.5-VL-7B-Instruct@main (state missing)" in guard, guard
        assert "refusing to serve it" in guard
    finally:
        hub(lab, "/_standin/corrupt", json={"file": SHARD, "times": 0})
    run_pyinfra(*MAIN)
    assert chat(lab, h, "back?").status_code == 200


def test_the_disk_filling_during_the_weights_fetch_stops_it_clearly(converged):
    lab = converged
    h = big(lab)
    tiny = "/srv/vlmfleet-tiny"
    ssh(lab, h["name"], f"sudo mkdir -p {tiny} && sudo mount -t tmpfs -o size=150m tmpfs {tiny}")
    # something else fills the disk once the fetch has begun (the hub slowed so the fetch is still running)
    ssh(lab, h["name"], f"sudo sh -c 'nohup sh -c \"while [ ! -d {tiny}/Qwen2.5-VL-72B-Instruct-AWQ ]; do sleep 0.2; "
                        f"done; dd if=/dev/zero of={tiny}/filler bs=1M\" >/dev/null 2>&1 &'")
    hub(lab, "/_standin/throttle", json={"bytes_per_s": 2_000_000})
    try:
        proc = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py", "--data",
                           f"model_dir={tiny}", "--data", "weights_disk_gb=0.1", check=False)
    finally:
        hub(lab, "/_standin/throttle", json={"bytes_per_s": 0})
    out = proc.stdout + proc.stderr
    try:
        assert proc.returncode != 0
        assert f"no space left on the device of {tiny}/Qwen2.5-VL-72B-Instruct-AWQ while fetching" in out, out[-3000:]
        assert "Traceback" not in out
        line = rollout(out)[h["name"]]
        assert line.startswith("failed before restart") and "Weights | Fetch" in line
        assert f"{tiny}/" not in unit(lab, h)  # the unit still serves the verified folder
        assert ssh(lab, h["name"], f"sudo test -e {tiny}/Qwen2.5-VL-72B-Instruct-AWQ/.vlmfleet-verified.json "
                                   "&& echo verified || echo not").strip() == "not"
        assert chat(lab, h, "still serving?").status_code == 200
    finally:
        ssh(lab, h["name"], f"sudo umount {tiny}; sudo rmdir {tiny}", check=False)
    run_pyinfra(*MAIN)
