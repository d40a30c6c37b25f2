"""vllm serve arguments and environment, by exact value; every accepted profile passes the version's flag table."""

from dataclasses import replace

import pytest

from vlmfleet.catalog import model, vllm_version
from vlmfleet.flags import limit_mm_value, serve_args, serve_env
from vlmfleet.gpus import parse_spec
from vlmfleet.planner import Wish, plan
from vlmfleet.profiles import accepted
from vlmfleet.vllm_flags import check

M7, M72 = model("qwen2.5-vl-7b-instruct"), model("qwen2.5-vl-72b-instruct-awq")
V082, V033 = vllm_version("0.8.2"), vllm_version("0.33.0")
CHAT = Wish(max_model_len=32768, max_num_seqs=16, max_num_batched_tokens=8192, limit_images=5, limit_videos=0,
            max_pixels=1003520)
COMMON = ["vllm", "serve", "/models/Qwen2.5-VL-7B-Instruct", "--served-model-name", "qwen7b", "--host", "0.0.0.0",
          "--port", "8000", "--tensor-parallel-size", "2", "--dtype", "bfloat16", "--max-model-len", "32768",
          "--max-num-seqs", "16", "--max-num-batched-tokens", "8192"]


def test_0_8_2_arguments_exactly():
    p = plan(M7, parse_spec("2xA10"), V082, CHAT)
    assert serve_args(p, "/models/Qwen2.5-VL-7B-Instruct", "qwen7b") == COMMON + [
        "--gpu-memory-utilization", "0.90", "--limit-mm-per-prompt", "image=5,video=0",
        "--mm-processor-kwargs", '{"max_pixels":1003520}', "--disable-log-requests"]


def test_0_33_arguments_exactly():
    p = plan(M7, parse_spec("2xA10"), V033, CHAT)
    assert serve_args(p, "/models/Qwen2.5-VL-7B-Instruct", "qwen7b") == COMMON + [
        "--gpu-memory-utilization", "0.92", "--limit-mm-per-prompt", '{"image":5,"video":0}',
        "--mm-processor-kwargs", '{"max_pixels":1003520}']


def test_awq_on_t4_gets_the_awq_kernel_and_p2p_off():
    p = plan(M72, parse_spec("8xT4"), V082, replace(CHAT, max_model_len=8192, max_num_batched_tokens=None))
    args = serve_args(p, "/m", "q72")
    assert args[args.index("--quantization") + 1] == "awq"
    assert args[args.index("--dtype") + 1] == "float16"
    assert serve_env(p) == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "HF_HUB_OFFLINE": "1",
                            "NCCL_P2P_DISABLE": "1"}


@pytest.mark.parametrize("spec, tp, nccl", [("2xH100", 2, {}), ("2xA10", 2, {}), ("4xT4", 4, {"NCCL_P2P_DISABLE": "1"}),
                                            ("4xT4", 1, {})])
def test_nccl_settings_follow_the_interconnect_never_blanket(spec, tp, nccl):
    m = model("qwen2.5-vl-7b-instruct-awq")
    p = plan(m, parse_spec(spec), V033, replace(CHAT, tp=tp))
    env = serve_env(p)
    assert {k: v for k, v in env.items() if k.startswith("NCCL")} == nccl
    assert "NCCL_ALGO" not in env and "CUDA_DEVICE_MAX_CONNECTIONS" not in env


def test_optional_flags_only_when_asked():
    p = plan(M7, parse_spec("1xH100"), V033, replace(CHAT, kv_cache_dtype="fp8", enforce_eager=True,
                                                     max_pixels=12845056))
    args = serve_args(p, "/m", "x")
    assert args[-3:] == ["--kv-cache-dtype", "fp8", "--enforce-eager"]
    assert "--mm-processor-kwargs" not in args  # the default max_pixels is not rendered
    assert "--quantization" not in args


def test_limit_syntax_per_version():
    assert limit_mm_value(V082, 3, 2) == "image=3,video=2"
    assert limit_mm_value(V033, 3, 2) == '{"image":3,"video":2}'


@pytest.mark.parametrize("version", [V082, V033], ids=lambda v: v.version)
def test_every_accepted_profile_passes_the_flag_table_and_carries_no_secret(version):
    rows = list(accepted(version))
    assert len(rows) > 100  # 7 profiles x 9 GPU kinds x 4 counts, minus what never fits
    for pid, spec, p in rows:
        args = serve_args(p, "/models/m", pid)
        assert check(args, version.version) == [], (pid, spec, args)
        assert not any("api-key" in a or "api_key" in a for a in args)


def test_flag_table_catches_the_seeds_mistakes():
    assert check(["vllm", "serve", "M", "--chunked-prefix-reserve-ratio", "0.2"], "0.8.2") == [
        "--chunked-prefix-reserve-ratio does not exist in vLLM 0.8.2"]
    assert check(["vllm", "serve", "M", "--swap-space", "16G"], "0.8.2") == ["--swap-space expects a number, got '16G'"]
    assert check(["vllm", "serve", "M", "--limit-mm-per-prompt", "image=5,video=5"], "0.33.0") == [
        "--limit-mm-per-prompt expects JSON (e.g. '{\"image\":5,\"video\":0}'), got 'image=5,video=5'"]
    assert check(["vllm", "serve", "M", "--task", "generate", "--kv-cache-dtype", "fp4"], "0.8.2") == [
        "--kv-cache-dtype 'fp4' is not one of: auto, fp8, fp8_e5m2, fp8_e4m3"]
    assert check(["vllm", "serve", "M", "--task", "generate"], "0.33.0") == ["--task does not exist in vLLM 0.33.0"]
    assert check(["vllm", "serve", "M", "--max-model-len"], "0.33.0") == ["--max-model-len needs a value"]
