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
        "mkdir -p /var/lib/vlmfleet && if ( set -C; printf 'run=%s\\nwho=%s\\nsince=%s\\n' R1 a@ctl "
        "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > /var/lib/vlmfleet/rollout.lock ) 2>/dev/null; then exit 0; fi; ")


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
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", "kv_cache"),
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


def test_last_error_is_vllms_reason_not_the_traceback():
    journal = ("INFO vLLM stand-in 0.33.0\nERROR [core.py] EngineCore failed to start.\nTraceback (most recent call "
               f"last):\n  (vLLM stand-in)\n{OOM_033}\n")
    assert release_tool.last_error(journal) == OOM_033[:300]
    assert release_tool.memory_message(journal) == OOM_033
