"""The plan made on a real H100 from its live nvidia-smi is reproduced here from the committed fixture.

tests/fixtures/gpu/h100-device/ holds the real bytes tools/capture_gpu_facts.sh captured on an NVIDIA H100 80GB
HBM3 (driver 580.159.04): the preflight query's CSV, `nvidia-smi topo -m`, and the JSON that
`vlmfleet plan --gpus local` printed there. What the facts decide (the inventory, CUDA's total, tp, dtype,
engine, KV bytes per token, the verdict) must come out the same from the fixture; the KV figures are those of
the planner at capture time (issue 7), since revised by the memory model per vLLM behaviour (issue 8), and are
not compared. No H100 has been lent since; the H200 capture (h200-device) is current.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "gpu" / "h100-device"
CASES = [(m, v) for m in ("qwen2.5-vl-7b-instruct", "qwen2.5-vl-72b-instruct-awq") for v in ("0.8.2", "0.33.0")]


def plan_from_capture(folder: Path, model: str, version: str) -> dict:
    """What `vlmfleet plan` gives from a capture's saved facts, with tools/capture_gpu_facts.sh's wishes."""
    proc = subprocess.run(
        [sys.executable, "-m", "vlmfleet.cli", "plan", "--nvidia-smi-csv", str(folder / "nvidia-smi-query.csv"),
         "--nvidia-smi-topo", str(folder / "nvidia-smi-topo.txt"), "--model", model, "--vllm", version,
         "--max-model-len", "32768", "--max-num-seqs", "16", "--limit-images", "5", "--limit-videos", "0",
         "--max-pixels", "1003520", "--format", "json"], capture_output=True, text=True)
    assert proc.returncode in (0, 4), proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("model, version", CASES)
def test_fixture_reproduces_the_live_plan(model, version):
    live = json.loads((FIX / f"plan-{model}-{version}.json").read_text())
    now = plan_from_capture(FIX, model, version)
    for key in ("gpus", "vllm", "engine", "verdict", "tp", "dtype", "quantization", "kv_bytes_per_token_per_gpu",
                "image_tokens_max", "errors", "config_source"):
        assert now[key] == live[key], key
    assert now["memory_per_gpu_bytes"]["total"] == live["memory_per_gpu_bytes"]["total"]


def test_live_facts_are_a_real_h100():
    csv = (FIX / "nvidia-smi-query.csv").read_text()
    assert csv == "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.159.04, 00000000:00:06.0\n"
    ctx = json.loads((FIX / "cuda-context.json").read_text())
    # CUDA's total is nvidia-smi's minus what the driver reserves: the catalog's reserved_mib for H100
    assert (81559 * 2**20 - ctx["total_bytes"]) / 2**20 == pytest.approx(480, abs=1)
    # CUDA context + cuBLAS outside PyTorch's allocator: the planner's context_gib + cublas_gib (0.68) covers it
    from vlmfleet.catalog import estimates
    e = estimates()
    assert (ctx["used_after_context_and_cublas_bytes"] - ctx["torch_allocated_bytes"]) / 2**30 <= \
        e["context_gib"] + e["cublas_gib"]


def _fact(text: str, name: str):
    """The JSON a `pyinfra @local fact ...` run printed for one fact."""
    block = text.split(f"--> Fact data for: {name}\n", 1)[1]
    return json.loads(block[: block.index("\n}\n") + 2])["@local"]


def test_pyinfra_local_facts_on_the_h100_feed_the_same_inventory():
    """`pyinfra @local fact vlmfleet.facts.GpuQuery ...` ran on the H100: the real fact path."""
    from vlmfleet.gpus import parse_nvidia_smi

    text = (FIX / "pyinfra-local-facts.txt").read_text()
    csv = _fact(text, "vlmfleet.facts.GpuQuery")
    assert csv + "\n" == (FIX / "nvidia-smi-query.csv").read_text()
    inv = parse_nvidia_smi(csv, _fact(text, "vlmfleet.facts.GpuTopology"))
    assert inv.describe() == "1xH100 (81559 MiB each, cc 9.0, nvlink)"
    assert _fact(text, "server.LinuxDistribution")["release_meta"]["VERSION_ID"] == "24.04"


@pytest.mark.parametrize("profile", ["qwen7b", "qwen72b_awq"])
def test_preflight_on_the_h100_is_reproduced_from_its_facts(profile):
    """`pyinfra -y -v @local deploys/preflight.py --data vlm_profile=...` on the H100 passed; the same facts here
    give the same verdict line."""
    from vlmfleet.config import config_for
    from vlmfleet.preflight import HostFacts, check

    text = (FIX / "pyinfra-local-facts.txt").read_text()
    live = (FIX / f"pyinfra-local-preflight-{profile}.txt").read_text()
    facts = HostFacts(os_id="ubuntu", os_version="24.04", gpu_csv=_fact(text, "vlmfleet.facts.GpuQuery"),
                      gpu_topo=_fact(text, "vlmfleet.facts.GpuTopology"))
    v = check(config_for("@local", {"vlm_profile": profile, "api_bind": "127.0.0.1"}, ssh_port=None), facts)
    assert v.ok
    # the line up to the verdict: the KV token count after it is the planner's of the time (see the docstring)
    assert f"[@local] noop: preflight passed: {v.summary.split(' fits, ')[0]} fits, " in live


H200 = Path(__file__).parent / "fixtures" / "gpu" / "h200-device"


def test_the_gpu_fact_on_a_real_h200_and_the_preflight_it_fed():
    """`pyinfra @local fact vlmfleet.facts.GpuQuery ...` and `deploys/preflight.py` ran on a lent H200 (driver
    580.159.04) with this version of the facts (rc line + output) and of the configuration; the same facts here
    give the same verdict lines."""
    from vlmfleet.config import config_for
    from vlmfleet.preflight import HostFacts, check

    text = (H200 / "pyinfra-local-facts.txt").read_text()
    gpu = _fact(text, "vlmfleet.facts.GpuQuery")
    assert gpu == {"csv": "0, NVIDIA H200, 143771, 9.0, 580.159.04, 00000000:00:06.0"}
    assert not _fact(text, "vlmfleet.facts.VlmfleetUnits")  # no vlmfleet unit on that machine
    facts = HostFacts(os_id="ubuntu", os_version="24.04", gpu_csv=gpu["csv"],
                      gpu_topo=_fact(text, "vlmfleet.facts.GpuTopology"))
    for profile in ("qwen7b", "qwen72b_awq"):
        v = check(config_for("@local", {"vlm_profile": profile, "api_bind": "127.0.0.1"}, ssh_port=None), facts)
        live = (H200 / f"pyinfra-local-preflight-{profile}.txt").read_text()
        assert v.ok and f"[@local] noop: preflight passed: {v.summary}\n" in live and live.endswith("rc=0\n")


@pytest.mark.parametrize("model, version", CASES)
def test_the_h200_capture_reproduces_the_live_plan(model, version):
    """tools/capture_gpu_facts.sh ran the current planner on the lent H200 (`vlmfleet plan --gpus local`): the
    saved facts give exactly the plan it printed there."""
    live = json.loads((H200 / f"plan-{model}-{version}.json").read_text())
    assert plan_from_capture(H200, model, version) == live


def test_bad_data_on_the_h200_failed_before_any_change():
    """The same runs with bad data: one line per problem, no traceback, nothing executed."""
    for name, line in (
        ("open-api", "@local: data key 'api_key_file' is unset: api_bind 0.0.0.0 serves beyond this host without a key"),
        ("bad-gpus", "@local: data key 'gpu_devices' = [0, 1]: names GPUs [1] the host does not have (it has [0]) — "
                     "fix: gpu_devices = [0] (or 'all')"),
        ("bad-data", "@local: data key 'vllm_tensor_parallel_size' = -2 (--data): must be between 1 and 64 — fix: "
                     "vllm_tensor_parallel_size = 1"),
        ("bad-data", "@local: data key 'vlm_stages' = [] (--data): must name at least one stage"),
    ):
        out = (H200 / f"pyinfra-local-preflight-{name}.txt").read_text()
        assert line in out and "Traceback" not in out and "Error: executed 0 commands" in out


def test_the_h200_capture_calibrates_its_reserved_memory_and_context():
    """tools/capture_gpu_facts.sh on the lent H200: CUDA's total is nvidia-smi's 143771 MiB less the catalog's
    reserved_mib (615, measured), and CUDA context + cuBLAS fit the planner's non-torch allowance as on the H100."""
    from vlmfleet.catalog import gpu_kind

    csv = (H200 / "nvidia-smi-query.csv").read_text()
    assert csv == "0, NVIDIA H200, 143771, 9.0, 580.159.04, 00000000:00:06.0\n"
    ctx = json.loads((H200 / "cuda-context.json").read_text())
    assert ctx["device"] == "NVIDIA H200"
    assert (143771 * 2**20 - ctx["total_bytes"]) / 2**20 == pytest.approx(gpu_kind("H200").reserved_mib, abs=1)
    assert (ctx["used_after_context_and_cublas_bytes"] - ctx["torch_allocated_bytes"]) / 2**30 < 0.7
