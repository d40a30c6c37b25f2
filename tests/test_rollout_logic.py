"""Issue 9, by value: rollout batches, the per-host summary, the lock's shell command (exact string, and run in a
real shell against a real file), the startup ladder's rungs, and what vlmfleet-release reads from vLLM's journal."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from cfgs import cfg

from vlmfleet import rollout as ro
from vlmfleet.catalog import vllm_version
from vlmfleet.config import build
from vlmfleet.flags import serve_args, wish_from_serve_args
from vlmfleet.gpus import parse_spec
from vlmfleet.ladder import startup_ladder
from vlmfleet.planner import evaluate
from vlmfleet.profiles import plan_profile
from vlmfleet.service import release_id, release_manifest, render_unit
from vlmfleet.wish import Wish

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("vlmfleet_release", REPO / "vlmfleet/remote/vlmfleet_release.py")
release_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_tool)


# ---- batches ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec_, hosts, sizes", [
    ([1, "25%", "100%"], 8, [1, 2, 5]),
    ([1, "25%", "100%"], 1, [1]),
    ([1, "25%", "100%"], 2, [1, 1]),
    ([1, "25%", "100%"], 3, [1, 1, 1]),
    ([1, "25%", "100%"], 20, [1, 5, 14]),
    ([2], 5, [2, 2, 1]),
    (["50%"], 5, [3, 2]),
    (["100%"], 4, [4]),
    ([1, 1], 3, [1, 1, 1]),
])
def test_batch_sizes(spec_, hosts, sizes):
    assert ro.batch_sizes(spec_, hosts) == sizes
    assert sum(sizes) == hosts


def test_batches_keep_inventory_order():
    assert ro.batches(["a", "b", "c", "d"], [1, "50%"]) == [["a"], ["b", "c"], ["d"]]
    assert ro.batch_index("d", ["a", "b", "c", "d"], [1, "50%"]) == 2


@pytest.mark.parametrize("value, why", [
    ([], "must be a non-empty list"),
    ("25%", "must be a non-empty list"),
    ([0], "0 is not a host count"),
    (["0%"], "'0%' is not a percentage"),
    (["150%"], "'150%' is not a percentage"),
    (["half"], "'half' is not a percentage"),
    ([True], "True is not a count"),
    ([1.5], "1.5 is not a count"),
])
def test_bad_batches_are_named(value, why):
    assert why in ro.batch_problem(value)


def test_rollout_batches_data_key_is_checked_and_read_from_the_command_line():
    good, problems = build("h1", {"vlm_profile": "qwen7b", "api_bind": "127.0.0.1", "rollout_batches": "1,50%"})
    assert problems == [] and list(good.rollout_batches) == [1, "50%"]
    _, problems = build("h1", {"vlm_profile": "qwen7b", "api_bind": "127.0.0.1", "rollout_batches": [0]},
                        sources={"rollout_batches": "--data"})
    (p,) = problems
    assert "data key 'rollout_batches' = [0] (--data): 0 is not a host count (at least 1)" in p.render("h1")


def test_a_failed_release_stops_later_batches_a_failure_before_restart_does_not():
    outcomes = {"h1": ro.Outcome(ro.FAILED_BEFORE, "at 'Image | Pull': ...", 0),
                "h2": ro.Outcome(ro.UPDATED, "release a is healthy", 0)}
    assert ro.halted_by(outcomes, 1) == []
    outcomes["h3"] = ro.Outcome(ro.ROLLED_BACK, "release b failed; back on a, healthy", 1)
    assert ro.halted_by(outcomes, 1) == [] and ro.halted_by(outcomes, 2) == ["h3"]


def test_summary_has_a_line_per_host_and_counts():
    lines = ro.summary({"h2": ro.Outcome(ro.NOT_REACHED, "rollout stopped before batch 2", 1),
                        "h1": ro.Outcome(ro.ROLLED_BACK, "release b failed; back on a, healthy", 0),
                        "h3": ro.Outcome(ro.FAILED_BEFORE, "could not connect or plan: nothing changed")})
    assert lines == [
        "h1  failed and rolled back batch 1  release b failed; back on a, healthy",
        "h2  not reached            batch 2  rollout stopped before batch 2",
        "h3  failed before restart  -        could not connect or plan: nothing changed",
        "1 failed and rolled back, 1 failed before restart, 1 not reached",
    ]


# ---- the lock -----------------------------------------------------------------------------------------------------
def test_lock_command_exact():
    assert ro.unlock_command("/var/lib/vlmfleet/rollout.lock", "R1") == (
        "if grep -qx run=R1 /var/lib/vlmfleet/rollout.lock 2>/dev/null; then rm -f /var/lib/vlmfleet/rollout.lock; "
        "fi; true")
    assert ro.lock_command("/var/lib/vlmfleet/rollout.lock", "R1", "a@ctl").startswith(
        "mkdir -p /var/lib/vlmfleet && printf 'run=%s\\nwho=%s\\nsince=%s\\n' R1 a@ctl "
        "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > /var/lib/vlmfleet/rollout.lock.R1 || { rm -f "
        "/var/lib/vlmfleet/rollout.lock.R1; echo \"cannot write the rollout lock /var/lib/vlmfleet/rollout.lock "
        "(disk full?)\" >&2; exit 1; }; if ln /var/lib/vlmfleet/rollout.lock.R1 /var/lib/vlmfleet/rollout.lock "
        "2>/dev/null; then rm -f /var/lib/vlmfleet/rollout.lock.R1; exit 0; fi; rm -f "
        "/var/lib/vlmfleet/rollout.lock.R1; ")


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True)


def test_lock_in_a_real_shell(tmp_path):
    path = str(tmp_path / "state" / "rollout.lock")
    assert sh(ro.lock_command(path, "R1", "alice@ctl")).returncode == 0
    assert Path(path).read_text().startswith("run=R1\nwho=alice@ctl\nsince=20")
    assert sh(ro.lock_command(path, "R1", "alice@ctl")).returncode == 0  # this run's own: taken already
    held = sh(ro.lock_command(path, "R2", "bob@other"))
    assert held.returncode == 2
    assert held.stderr.startswith("another rollout holds this host's lock: alice@ctl since 20")
    assert "(run R1) — fix: wait for that run to end" in held.stderr and "rollout_break_lock=true" in held.stderr
    assert sh(ro.unlock_command(path, "R2")).returncode == 0 and Path(path).exists()  # not R2's to release
    broke = sh(ro.lock_command(path, "R2", "bob@other", break_lock=True))
    assert broke.returncode == 0 and "breaking the rollout lock of alice@ctl since" in broke.stderr
    assert Path(path).read_text().startswith("run=R2\nwho=bob@other\n")
    assert sh(ro.unlock_command(path, "R2")).returncode == 0 and not Path(path).exists()
    assert sorted(p.name for p in Path(path).parent.iterdir()) == []  # no file of a run left behind


def test_the_lock_cannot_be_taken_twice_at_once(tmp_path):
    path = str(tmp_path / "rollout.lock")
    procs = [subprocess.Popen(["sh", "-c", ro.lock_command(path, f"R{i}", f"u{i}")], stderr=subprocess.DEVNULL)
             for i in range(8)]
    codes = [p.wait() for p in procs]
    assert sorted(codes) == [0] + [2] * 7


# ---- the startup ladder -------------------------------------------------------------------------------------------
def test_startup_ladder_steps_down_in_the_seeds_order():
    p = plan_profile("qwen7b", parse_spec("1xL40S"), vllm_version("0.33.0"))
    rungs = startup_ladder(p, 3)
    assert [(r.rung, r.changes, r.only_utilisation) for r in rungs] == [
        (1, {"gpu_memory_utilization": 0.87}, True),
        (2, {"gpu_memory_utilization": 0.87, "max_model_len": 24576}, False),
        (3, {"gpu_memory_utilization": 0.87, "max_model_len": 24576, "kv_cache_dtype": "fp8"}, False),
    ]
    assert all(not r.plan.errors for r in rungs)
    assert [r.rung for r in startup_ladder(p, 1)] == [1] and startup_ladder(p, 0) == []


def test_startup_ladder_skips_fp8_where_the_gpu_does_not_support_it():
    p = plan_profile("qwen7b", parse_spec("2xA10"), vllm_version("0.33.0"))  # fp8 KV risky on sm86
    assert [r.changes.get("kv_cache_dtype") for r in startup_ladder(p, 3)] == [None, None]


def test_release_manifest_lists_the_rungs_and_holds_no_secret(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-secret-value\n")
    c = cfg(api_key_file=str(key))
    p = plan_profile("qwen7b", parse_spec("1xL40S"), vllm_version("0.33.0"))
    unit = render_unit(c, p)
    rungs = startup_ladder(p, 3)
    m = json.loads(release_manifest(c, p, unit, rungs))
    assert m["id"] == release_id(unit) and len(m["id"]) == 12
    assert [r["unit"] for r in m["ladder"]] == ["rung-1.service", "rung-2.service", "rung-3.service"]
    assert m["health"][:2] == ["/opt/vlmfleet/bin/vlmfleet-health", "--url"] and "--deadline" not in m["health"]
    assert m["auth_file"] == "/etc/vlmfleet/secrets/vllm-qwen7b.auth"
    assert "sk-secret" not in json.dumps(m)


def test_serve_args_read_back_give_the_same_memory():
    for profile, spec_, version in [("qwen7b", "1xL40S", "0.33.0"), ("qwen72b_awq", "4xA100-40", "0.33.0"),
                                    ("qwen7b", "2xA10", "0.8.2")]:
        p = plan_profile(profile, parse_spec(spec_), vllm_version(version))
        path, wish = wish_from_serve_args(serve_args(p, "/models/X", "x"))
        q = evaluate(p.model, p.inventory, p.version, Wish(**wish))
        assert path == "/models/X" and q.memory == p.memory and q.verdict == p.verdict


# ---- what vlmfleet-release reads in the journal -----------------------------------------------------------------
OOM_033 = ("ValueError: Free memory on device cuda:0 (40.94/44.56 GiB) on startup is less than desired GPU memory "
           "utilization (0.92, 40.99 GiB). Decrease GPU memory utilization or reduce GPU memory used by other "
           "processes.")
KV_033 = ("ValueError: To serve at least one request with the model's max seq len (32768), (1.75 GiB KV cache is "
          "needed, which is larger than the available KV cache memory (1.20 GiB). Based on the available memory, "
          "the estimated maximum model length is 22448. Try increasing `gpu_memory_utilization` or decreasing "
          "`max_model_len` when initializing the engine.")
KV_V0 = ("ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be "
         "stored in KV cache (20000). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
         "initializing the engine.")
TORCH_OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity"


@pytest.mark.parametrize("journal, kind", [
    (f"INFO loading\n{OOM_033}\n", "oom"), (TORCH_OOM, "oom"), (KV_033, "kv_cache"), (KV_V0, "kv_cache"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
     "no_cache_memory"),
    ("RuntimeError: The NVIDIA driver on your system is too old (found version 12020).", None),
    (f"{TORCH_OOM}\n...\n{KV_033}", "kv_cache"),  # the last memory message decides
])
def test_classify_vllms_startup_failures(journal, kind):
    assert release_tool.classify(journal) == kind


def test_next_rung_skips_a_utilisation_only_rung_for_a_kv_cache_too_small():
    ladder = [{"rung": 1, "only_utilisation": True}, {"rung": 2, "only_utilisation": False},
              {"rung": 3, "only_utilisation": False}]
    assert release_tool.next_rung(ladder, 0, "oom")["rung"] == 1
    assert release_tool.next_rung(ladder, 0, "kv_cache")["rung"] == 2
    assert release_tool.next_rung(ladder, 2, "oom")["rung"] == 3
    assert release_tool.next_rung(ladder, 3, "oom") is None
    assert release_tool.next_rung(ladder, 0, None) is None  # not a memory failure: straight to the rollback
    assert release_tool.next_rung(ladder, 0, "no_cache_memory") is None  # no rung gives the cache memory


def test_last_error_is_vllms_reason_not_the_traceback():
    journal = ("INFO vLLM stand-in 0.33.0\nERROR [core.py] EngineCore failed to start.\nTraceback (most recent call "
               f"last):\n  (vLLM stand-in)\n{OOM_033}\n")
    assert release_tool.last_error(journal) == OOM_033[:300]
    assert release_tool.memory_message(journal) == OOM_033


# ---- vlmfleet-release's failure paths, on stub systemctl / journalctl / docker and a stub health check -----------
STUB = """#!/bin/sh
echo "$0 $*" >> {log}
case "$(basename $0) $1" in
  "systemctl restart") [ -e {fail_restart} ] && {{ echo "Job for u.service failed because the control process exited with error code." >&2; exit 1; }}; exit 0;;
  "systemctl show") case "$3" in NRestarts) echo 0;; SubState) echo running;; ActiveState) echo active;; esac;;
  "journalctl -u") case "$*" in *show-cursor*) echo "-- cursor: s=1";; *) cat {journal} 2>/dev/null;; esac;;
  "docker image") echo sha256:abc;;
esac
exit 0
"""
HEALTH = """#!/bin/sh
grep -q GOOD {unit} && {{ echo '{{"healthy": true}}'; exit 0; }}
echo "not healthy" >&2; exit 1
"""


@pytest.fixture
def host_dir(tmp_path, monkeypatch):
    """A release folder and the live files of one service, with stubs for what vlmfleet-release calls."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log, fail, journal = tmp_path / "calls.log", tmp_path / "fail-restart", tmp_path / "journal.txt"
    for name in ("systemctl", "journalctl", "docker"):
        (bin_ / name).write_text(STUB.format(log=log, fail_restart=fail, journal=journal))
        (bin_ / name).chmod(0o755)
    live = tmp_path / "live"
    live.mkdir()
    health = bin_ / "health"
    health.write_text(HEALTH.format(unit=live / "u.service"))
    health.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    monkeypatch.setattr(release_tool, "POLL_S", 0.05)
    root = tmp_path / "releases"
    (root / "candidate").mkdir(parents=True)

    def stage(unit: str, rungs: int = 0, env: str = "VLLM_API_KEY=k1\n"):
        cand = root / "candidate"
        (cand / "vllm.service").write_text(unit)
        (cand / "env").write_text(env)
        (cand / "plan.json").write_text('{"rung": 0}\n')
        ladder = []
        for n in range(1, rungs + 1):
            (cand / f"rung-{n}.service").write_text(f"{unit} rung {n}\n")
            (cand / f"rung-{n}.plan.json").write_text(f'{{"rung": {n}}}\n')
            ladder.append({"rung": n, "changes": {"gpu_memory_utilization": 0.9 - n / 20}, "why": f"rung {n}",
                           "only_utilisation": n == 1, "unit": f"rung-{n}.service", "plan": f"rung-{n}.plan.json"})
        meta = {"id": unit.split()[0], "unit_name": "u.service", "unit_path": str(live / "u.service"),
                "env_file": str(live / "u.env"), "auth_file": str(live / "u.auth"), "plan_file": str(live / "plan.json"),
                "health": [str(health)], "deadline_s": 5, "image": "img", "ladder": ladder}
        (cand / "release.json").write_text(json.dumps(meta))

    def run(action: str):
        return release_tool.main([action, "--dir", str(root), "--run", "R1", "--who", "t@ctl"])

    return {"root": root, "live": live, "stage": stage, "run": run, "fail": fail, "journal": journal, "log": log}


def _state(h):
    return json.loads((h["root"] / "state.json").read_text())["active"]


def _history(h):
    return [json.loads(x) for x in (h["root"] / "history.jsonl").read_text().splitlines()]


def test_a_healthy_release_becomes_the_known_good_one(host_dir, capsys):
    h = host_dir
    h["stage"]("A GOOD")
    assert h["run"]("apply") == 0
    assert _state(h)["id"] == "A" and (h["root"] / "good/vllm.service").read_text() == "A GOOD"
    assert (h["live"] / "u.auth").read_text() == "Authorization: Bearer k1\n"  # follows the release's env
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["result"] == "healthy"


def test_a_failing_release_returns_to_the_known_good_one(host_dir, capsys):
    h = host_dir
    h["stage"]("A GOOD")
    h["run"]("apply")
    h["stage"]("B bad", env="VLLM_API_KEY=k2\n")
    assert h["run"]("apply") == 3
    assert (h["live"] / "u.service").read_text() == "A GOOD" and (h["live"] / "u.env").read_text() == "VLLM_API_KEY=k1\n"
    assert _state(h)["id"] == "A" and _history(h)[-1]["result"] == "failed, rolled back to A"
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["result"] == "rolled_back" and "back on A, healthy" in out["message"]


def test_a_refused_start_is_a_failed_start_and_is_rolled_back(host_dir, capsys):
    """systemctl restart itself fails (the weights guard in ExecStartPre refused): rollback, record, no traceback."""
    h = host_dir
    h["stage"]("A GOOD")
    h["run"]("apply")
    h["stage"]("B GOOD too")
    h["fail"].write_text("")
    h["journal"].write_text("vlmfleet-fetch: /srv/models/X is not a verified copy of X@main (state missing): "
                            "refusing to serve it\n")
    assert h["run"]("apply") == 4  # the rollback's restart is refused too: nothing healthy runs
    last = _history(h)[-1]
    assert last["tried"][0]["failure"].startswith("systemctl restart u.service failed: Job for u.service failed")
    assert "which also failed" in last["result"] and _state(h)["failed"] is True
    h["fail"].unlink()
    assert h["run"]("apply") == 0 and _state(h)["id"] == "B"


def test_the_ladder_walks_on_vllms_oom_and_the_rung_is_kept(host_dir):
    h = host_dir
    h["stage"]("A GOOD")
    h["run"]("apply")
    h["stage"]("B x", rungs=2)  # rung 1's unit reads "B x rung 1": not healthy; rung 2 neither
    h["journal"].write_text("ERROR EngineCore failed to start.\n" + OOM_033 + "\n")
    assert h["run"]("apply") == 3  # both rungs fail: back on A
    assert [t["rung"] for t in _history(h)[-1]["tried"]] == [0, 1, 2]
    h["stage"]("C GOOD", rungs=2)
    assert h["run"]("apply") == 0 and _state(h)["rung"] == 0


def test_an_env_only_change_that_fails_is_tried_again_next_run(host_dir):
    h = host_dir
    h["stage"]("A GOOD")
    h["run"]("apply")
    (h["root"] / "candidate/vllm.service").write_text("A GOOD")  # same unit, new key, and a health check that fails
    (h["root"] / "candidate/env").write_text("VLLM_API_KEY=k2\n")
    health = Path(json.loads((h["root"] / "candidate/release.json").read_text())["health"][0])
    health.write_text("#!/bin/sh\ngrep -q k2 " + str(h["live"] / "u.env") + " && exit 1; echo '{}'; exit 0\n")
    assert h["run"]("apply") == 3
    assert _state(h)["id"] == "A" and _state(h)["env_not_applied"] is True  # the deploy applies it again next run


def test_a_first_failed_apply_returns_to_the_unit_the_host_ran_before(host_dir):
    h = host_dir
    (h["live"] / "u.service").write_text("# Managed by vlmfleet (old) GOOD")
    h["stage"]("B bad")
    assert h["run"]("apply") == 3
    assert (h["live"] / "u.service").read_text() == "# Managed by vlmfleet (old) GOOD"
    assert _state(h)["adopted"] is True


def test_a_first_failed_apply_with_nothing_before_stops_and_disables_the_unit(host_dir):
    h = host_dir
    h["stage"]("B bad")
    assert h["run"]("apply") == 4
    calls = h["log"].read_text()
    assert "systemctl stop u.service" in calls and "systemctl disable u.service" in calls


def test_rollback_on_demand_and_nothing_before(host_dir, capsys):
    h = host_dir
    h["stage"]("A GOOD")
    assert h["run"]("rollback") == 5  # nothing at all yet
    h["run"]("apply")
    assert h["run"]("rollback") == 5  # one release only
    h["stage"]("B GOOD")
    h["run"]("apply")
    capsys.readouterr()
    assert h["run"]("rollback") == 0
    assert _state(h)["id"] == "A" and (h["live"] / "u.service").read_text() == "A GOOD"
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["message"] == "rolled back from B to A, healthy"
    assert h["run"]("rollback") == 5  # A was the release before B; nothing before A is kept


def test_an_interrupted_swap_of_the_good_release_is_recovered(host_dir):
    h = host_dir
    h["stage"]("A GOOD")
    h["run"]("apply")
    (h["root"] / "good").rename(h["root"] / "good.old")  # killed between the two renames
    h["stage"]("B bad")
    assert h["run"]("apply") == 3 and (h["live"] / "u.service").read_text() == "A GOOD"


# ---- the drain for the gateways (vlmfleet-agent reads what vlmfleet-release writes) ---------------------------
def test_apply_drains_the_replica_before_the_restart_and_says_ready_after(host_dir, tmp_path, monkeypatch, capsys):
    h = host_dir
    state = tmp_path / "run" / "gateway-agent"
    seen = []
    real = release_tool.Host.start_and_check

    def spy(self, meta, deadline):  # what HAProxy's agent check reads while the server restarts
        seen.append(state.read_text())
        return real(self, meta, deadline)

    monkeypatch.setattr(release_tool.Host, "start_and_check", spy)
    drain = ["--agent-state", str(state), "--drain-s", "1", "--agent-unit", "vlmfleet-agent.service"]
    h["stage"]("A GOOD")
    assert release_tool.main(["apply", "--dir", str(h["root"]), "--run", "R1", "--who", "t@ctl", *drain]) == 0
    assert seen == ["drain\n"] and state.read_text() == "ready\n"
    h["stage"]("B bad")  # a failed release and its rollback: drained throughout, ready at the end
    assert release_tool.main(["apply", "--dir", str(h["root"]), "--run", "R2", "--who", "t@ctl", *drain]) == 3
    assert seen == ["drain\n"] * 3 and state.read_text() == "ready\n"
    err = capsys.readouterr().err
    assert "draining: gateways send this replica no new requests; restarting in 1s" in err


def test_no_drain_where_no_drain_agent_runs(host_dir, tmp_path, capsys):
    """The inventory has a gateway, but the gateway deploy has not run here yet: nothing asks, nothing to wait for."""
    h = host_dir
    h["stage"]("A GOOD")
    stub = tmp_path / "bin" / "systemctl"
    stub.write_text(stub.read_text().replace('case "$(basename $0) $1" in',
                                             'case "$(basename $0) $1" in\n  "systemctl is-active") exit 3;;'))
    state = tmp_path / "run" / "gateway-agent"
    assert release_tool.main(["apply", "--dir", str(h["root"]), "--run", "R1", "--who", "t@ctl", "--agent-state",
                              str(state), "--drain-s", "30", "--agent-unit", "vlmfleet-agent.service"]) == 0
    assert not state.exists()
    assert "no drain agent runs here (vlmfleet-agent.service is not active)" in capsys.readouterr().err


def test_apply_without_a_gateway_writes_no_agent_state(host_dir, tmp_path):
    h = host_dir
    h["stage"]("A GOOD")
    assert h["run"]("apply") == 0
    assert not (tmp_path / "run").exists()
