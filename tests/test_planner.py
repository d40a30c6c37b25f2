"""The planner by value: exact KV/weights arithmetic, tp validity, fit verdicts at their boundaries, the ladder."""

from dataclasses import replace

import pytest

from vlmfleet.catalog import GIB, model, model_with_config, vllm_version
from vlmfleet.gpus import parse_nvidia_smi, parse_spec
from vlmfleet.planner import (BLOCK_SIZE, Wish, image_tokens, kv_bytes_per_token, largest_fitting_len, plan,
                              smart_resize_tokens, tp_problems, valid_tps, weight_bytes)
from vlmfleet.memory_model import video_tokens

M7 = model("qwen2.5-vl-7b-instruct")
M72 = model("qwen2.5-vl-72b-instruct-awq")
V082, V033 = vllm_version("0.8.2"), vllm_version("0.33.0")
CHAT = Wish(max_model_len=32768, max_num_seqs=16, max_num_batched_tokens=8192, limit_images=5, limit_videos=0,
            max_pixels=1003520)
# 0.8.2 runs T4s on its V0 engine, which needs max_num_batched_tokens >= max_model_len: leave it to the default
T4_CHAT = replace(CHAT, max_num_batched_tokens=None)


# ---- exact arithmetic --------------------------------------------------------------------------------------
def test_kv_bytes_per_token_match_facts():
    assert kv_bytes_per_token(M7) == 57344 == 56 * 1024
    assert kv_bytes_per_token(M7, kv_dtype_bytes=1) == 28672
    assert kv_bytes_per_token(M72) == 327680 == 320 * 1024
    assert kv_bytes_per_token(M72, kv_dtype_bytes=1) == 163840
    # the seed's "16 MB/token" for 7B is ~300x too much
    assert 16 * 1024**2 / kv_bytes_per_token(M7) == pytest.approx(292.6, abs=0.1)


@pytest.mark.parametrize("m, tp, expected", [
    (M7, 2, 28672), (M7, 4, 14336), (M72, 8, 40960),
    (model("qwen2.5-vl-3b-instruct"), 4, 2 * 36 * 1 * 128 * 2),  # 2 kv heads at tp 4: replicated, 1 per GPU
])
def test_kv_bytes_per_gpu_under_tensor_parallel(m, tp, expected):
    assert kv_bytes_per_token(m, tp) == expected


def test_weights_match_the_checkpoints():
    assert weight_bytes(M7) / GIB == pytest.approx(15.44, abs=0.01)  # FACTS: 15.44 GiB bf16
    assert weight_bytes(M72) / 1e9 == pytest.approx(43.0, abs=0.1)  # FACTS: ~43 GB
    assert weight_bytes(model("qwen2.5-vl-72b-instruct")) / 1e9 == pytest.approx(146.8, abs=0.1)
    assert weight_bytes(model("qwen2.5-vl-3b-instruct")) / 1e9 == pytest.approx(7.5, abs=0.05)
    assert weight_bytes(M72, 8) == pytest.approx(weight_bytes(M72) / 8, rel=0.001)


@pytest.mark.parametrize("mid, tps", [
    ("qwen2.5-vl-7b-instruct", [1, 2, 4]), ("qwen2.5-vl-7b-instruct-awq", [1, 2, 4]),
    ("qwen2.5-vl-72b-instruct-awq", [1, 2, 4, 8]), ("qwen2.5-vl-72b-instruct", [1, 2, 4, 8]),
    ("qwen2.5-vl-3b-instruct-awq", [1, 2]), ("qwen2.5-vl-32b-instruct", [1, 2, 4, 8]),
])
def test_valid_tensor_parallel_sets(mid, tps):
    assert valid_tps(model(mid), 8) == tps


def test_tp_problems_name_the_dimension():
    assert tp_problems(M7, 8) == ["28 attention heads are not divisible by 8",
                                  "the vision MLP width 3420 is not divisible by 8"]
    assert tp_problems(M7, 3) == ["28 attention heads are not divisible by 3", "4 KV heads neither divide nor are "
                                  "divisible by 3", "16 vision heads are not divisible by 3"]
    unpadded = replace(M72, text=replace(M72.text, intermediate=29568))
    assert tp_problems(unpadded, 2) == ["AWQ: intermediate_size 29568 / tp 2 = 14784 is not a multiple of group_size 128"]


def test_image_tokens():
    assert image_tokens(M7, 12845056) == 16384
    assert image_tokens(M7, 1003520) == 1280
    assert smart_resize_tokens(M7, 1024, 1024) == 1369  # FACTS
    assert 1369 * kv_bytes_per_token(M7) / 2**20 == pytest.approx(74.9, abs=0.1)  # ≈75 MiB of KV per image


def test_dummy_video_profiling_grows_with_max_model_len():
    # one video at 128k context: 7 temporal groups of 16,384 tokens (FACTS: ~114k)
    assert video_tokens(V033.memory, 128000, 1, 1, 16384) == 114688
    assert video_tokens(V082.memory, 128000, 1, 1, 16384) == 98304  # 0.8.2 subtracts the image first
    assert video_tokens(V033.memory, 32768, 5, 0, 16384) == 0


# ---- verdicts and boundaries -------------------------------------------------------------------------------
def test_one_a10_chat_profile_fits_and_reports_capacity():
    p = plan(M7, parse_spec("1xA10"), V033, CHAT)
    assert p.verdict == "fits" and p.errors == []
    assert p.kv_bytes_per_token == 57344
    assert p.kv_capacity_tokens % BLOCK_SIZE == 0
    assert p.kv_capacity_tokens == p.memory.kv_cache // (57344 * BLOCK_SIZE) * BLOCK_SIZE
    assert p.concurrency == pytest.approx(p.kv_capacity_tokens / 32768)


def test_fit_boundary_is_the_kv_capacity_after_the_reserve():
    inv = parse_spec("1xA10")
    p = plan(M7, inv, V033, CHAT)
    safe = p.safe_capacity_tokens
    assert safe == (p.memory.kv_cache - p.memory.margin) // (57344 * BLOCK_SIZE) * BLOCK_SIZE
    assert p.memory.margin == max(GIB // 2, int(0.15 * p.memory.kv_cache), int(0.06 * p.memory.weights))
    at = plan(M7, inv, V033, replace(CHAT, max_model_len=safe))
    over = plan(M7, inv, V033, replace(CHAT, max_model_len=safe + 1))
    assert at.verdict == "fits" and over.verdict == "does not fit"
    assert over.kv_capacity_tokens >= safe + 1  # the estimate alone would hold it: too close to call
    assert f"but only {safe} once its tolerance" in " ".join(over.notes)
    beyond = plan(M7, inv, V033, replace(CHAT, max_model_len=over.kv_capacity_tokens + 1))
    assert f"KV cache holds {beyond.kv_capacity_tokens} tokens, fewer than one max_model_len" in " ".join(beyond.notes)


def test_utilisation_boundary():
    inv = parse_spec("1xA10")
    p = plan(M7, inv, V033, replace(CHAT, gpu_memory_utilization=0.80))
    assert p.verdict == "does not fit"
    assert p.proposal.changes == {"gpu_memory_utilization": p.proposal.plan.resolved.gpu_memory_utilization}
    u = p.proposal.plan.resolved.gpu_memory_utilization
    assert plan(M7, inv, V033, replace(CHAT, gpu_memory_utilization=u)).verdict == "fits"
    assert plan(M7, inv, V033, replace(CHAT, gpu_memory_utilization=round(u - 0.01, 2))).verdict == "does not fit"


def test_7b_bf16_never_fits_one_t4_and_the_ladder_reaches_awq():
    p = plan(M7, parse_spec("1xT4"), V033, CHAT)
    assert p.verdict == "does not fit" and p.memory.kv_cache < 0
    assert p.proposal.model_id == "qwen2.5-vl-7b-instruct-awq"
    assert p.proposal.plan.verdict == "fits"
    assert p.dtype == "float16"  # 0.33 picks fp16 on a T4 by itself; rendered explicitly


def test_ladder_prefers_tp_over_awq_when_gpus_are_there():
    p = plan(M7, parse_spec("2xT4"), V033, replace(CHAT, tp=1))
    assert p.verdict == "does not fit"
    assert p.proposal.changes == {"tp": 2} and p.proposal.plan.verdict == "fits"


def test_ladder_lowers_max_model_len_before_tp():
    p = plan(M7, parse_spec("1xA10"), V033, replace(CHAT, max_model_len=128000))
    assert p.proposal.reason.startswith("lower max_model_len to")
    n = p.proposal.changes["max_model_len"]
    assert n % 1024 == 0 and plan(M7, parse_spec("1xA10"), V033, replace(CHAT, max_model_len=n)).verdict == "fits"
    largest = largest_fitting_len(M7, parse_spec("1xA10"), V033, replace(CHAT, max_model_len=128000))
    assert n <= largest < n + 1024


# ---- validity ----------------------------------------------------------------------------------------------
def test_quantization_flag_on_a_bf16_checkpoint_is_invalid():
    p = plan(M7, parse_spec("4xT4"), V082, replace(T4_CHAT, quantization="awq", dtype="float16"))
    assert p.verdict == "invalid"
    assert [e.key for e in p.errors] == ["quantization"]
    assert "not an AWQ checkpoint" in p.errors[0].message and "qwen2.5-vl-7b-instruct-awq" in p.errors[0].fix
    assert p.proposal.changes["quantization"] is None and p.proposal.plan.verdict == "fits"


def test_awq_kernel_follows_the_gpu():
    assert plan(M72, parse_spec("8xT4"), V082, replace(T4_CHAT, max_model_len=4096)).quantization == "awq"
    assert plan(M72, parse_spec("4xA100-40"), V082, CHAT).quantization == "awq_marlin"
    p = plan(M72, parse_spec("4xA100-40"), V082, replace(CHAT, quantization="awq"))
    assert [w.key for w in p.warnings if w.key == "quantization"] == ["quantization"]


def test_bfloat16_on_t4_is_invalid_and_auto_fails_only_on_0_8_2():
    assert [e.key for e in plan(M7, parse_spec("4xT4"), V033, replace(CHAT, dtype="bfloat16")).errors] == ["dtype"]
    old = plan(M7, parse_spec("4xT4"), V082, T4_CHAT)
    assert [e.key for e in old.errors] == ["dtype"] and "refuses to start" in old.errors[0].message
    assert plan(M7, parse_spec("4xT4"), V033, CHAT).errors == []


def test_fp8_kv_cache_per_gpu_and_version():
    t4 = plan(M72, parse_spec("8xT4"), V082, replace(T4_CHAT, kv_cache_dtype="fp8"))
    assert t4.errors == [] and "runs it on V0 + XFormers without a compute-capability check" in str(t4.warnings)
    t4_033 = plan(M72, parse_spec("8xT4"), V033, replace(T4_CHAT, kv_cache_dtype="fp8"))
    assert [e.key for e in t4_033.errors] == ["kv_cache_dtype"]  # 0.33's Triton backend rejects it below SM89
    a10 = plan(M7, parse_spec("1xA10"), V033, replace(CHAT, kv_cache_dtype="fp8"))
    assert a10.errors == [] and [w.key for w in a10.warnings] == ["kv_cache_dtype"]
    h100 = parse_spec("1xH100")
    auto, fp8 = plan(M7, h100, V033, CHAT), plan(M7, h100, V033, replace(CHAT, kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token == auto.kv_bytes_per_token // 2
    assert fp8.kv_capacity_tokens >= 2 * auto.kv_capacity_tokens - BLOCK_SIZE
    bad = plan(M7, h100, V082, replace(CHAT, kv_cache_dtype="fp8_inc"))
    assert "not accepted by vLLM 0.8.2" in bad.errors[0].message


def test_v0_engine_refuses_short_batched_tokens():
    p = plan(M72, parse_spec("8xT4"), V082, replace(CHAT, max_model_len=8192, max_num_batched_tokens=4096))
    assert p.engine == "V0"
    assert [e.key for e in p.errors] == ["max_num_batched_tokens"]


def test_tp_larger_than_the_host_and_invalid_tp():
    p = plan(M7, parse_spec("2xA10"), V033, replace(CHAT, tp=4))
    assert "needs 4 GPUs, the host has 2" in p.errors[0].message
    p = plan(M7, parse_spec("8xA10"), V033, replace(CHAT, tp=8))
    assert p.verdict == "invalid" and p.errors[0].fix == "tp in [1, 2, 4]"
    assert p.proposal.changes == {"tp": 4}


def test_old_driver_is_invalid_without_a_profile_fix():
    inv = parse_nvidia_smi("0, NVIDIA A10, 23028, 8.6, 535.183.01\n")
    p = plan(M7, inv, V033, CHAT)
    assert [e.key for e in p.errors] == ["driver"] and "older than 580.65" in p.errors[0].message
    assert p.proposal is None
    assert plan(M7, inv, V082, CHAT).errors[0].key == "driver"  # 0.8.2 needs >= 550.54
    assert plan(M7, parse_nvidia_smi("0, NVIDIA A10, 23028, 8.6, 550.54.15\n"), V082, CHAT).errors == []


def test_max_model_len_auto():
    p = plan(M7, parse_spec("1xA10"), V033, replace(CHAT, max_model_len=-1))
    assert p.verdict == "fits" and p.max_model_len == largest_fitting_len(M7, parse_spec("1xA10"), V033,
                                                                            replace(CHAT, max_model_len=None))
    assert "auto does not exist in vLLM 0.8.2" in plan(M7, parse_spec("1xA10"), V082, replace(CHAT, max_model_len=-1)).errors[0].message


def test_unverified_awq_intermediate_warns_about_tp():
    p = plan(M72, parse_spec("4xA100-40"), V033, CHAT)
    assert any(w.key == "awq-tp" and "29568 only aligns to group_size at tp [1]" in w.message for w in p.warnings)
    confirmed = model_with_config(M72, {"intermediate_size": 29696, "quantization_config": {"quant_method": "awq"}}, "c")
    assert not [w for w in plan(confirmed, parse_spec("4xA100-40"), V033, CHAT).warnings if w.key in ("awq-tp", "config")]


def test_cuda_graph_margin_warning_on_0_8_2():
    p = plan(M7, parse_spec("1xA10"), V082, replace(CHAT, gpu_memory_utilization=0.98))
    assert any("captures CUDA graphs" in w.message for w in p.warnings)
    assert not any("captures CUDA graphs" in w.message
                   for w in plan(M7, parse_spec("1xA10"), V082, replace(CHAT, enforce_eager=True,
                                                                          gpu_memory_utilization=0.98)).warnings)


# ---- values no vLLM accepts (defence in depth: the CLI refuses them first) -------------------------------
@pytest.mark.parametrize("change, key, message, fixed", [
    ({"tp": -2}, "tp", "tensor_parallel_size -2 is invalid: it must be a whole number from 1 to 64", {"tp": 1}),
    ({"tp": 0}, "tp", "tensor_parallel_size 0 is invalid", {"tp": 1}),
    ({"tp": 2.0}, "tp", "tensor_parallel_size 2.0 is invalid", {"tp": 1}),
    ({"max_num_seqs": 0}, "max_num_seqs", "max_num_seqs 0 is invalid", {"max_num_seqs": 256}),
    ({"max_num_batched_tokens": -1}, "max_num_batched_tokens", "max_num_batched_tokens -1 is invalid",
     {"max_num_batched_tokens": 2048}),
    ({"limit_images": -1}, "limit_images", "the image limit (limit_mm_per_prompt image) -1 is invalid",
     {"limit_images": 999}),
    ({"limit_videos": -3}, "limit_videos", "the video limit (limit_mm_per_prompt video) -3 is invalid",
     {"limit_videos": 999}),
    ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization", "gpu_memory_utilization 0.0 is outside (0, 1]",
     {"gpu_memory_utilization": 0.92}),
    ({"gpu_memory_utilization": float("nan")}, "gpu_memory_utilization", "gpu_memory_utilization nan is outside",
     {"gpu_memory_utilization": 0.92}),
    ({"max_num_batched_tokens": 8}, "max_num_batched_tokens", "max_num_batched_tokens 8 < max_num_seqs 16 is "
     "refused by vLLM", {"max_num_batched_tokens": 16}),
    ({"quantization": "gptq"}, "quantization", "--quantization gptq on Qwen/Qwen2.5-VL-7B-Instruct, a bfloat16 "
     "checkpoint without gptq weights: vLLM fails to load it", {"quantization": None}),
])
def test_values_vllm_refuses_are_invalid_and_corrected(change, key, message, fixed):
    p = plan(M7, parse_spec("1xA10"), V033, replace(CHAT, **change))
    assert p.verdict == "invalid" and [e.key for e in p.errors] == [key]
    assert p.errors[0].message.startswith(message)
    assert p.memory.weights == plan(M7, parse_spec("1xA10"), V033, CHAT).memory.weights  # counted as unset
    changes = p.proposal.changes
    assert {k: changes[k] for k in fixed} == fixed and p.proposal.plan.verdict == "fits"
    # the correction first; where the corrected value (256 seqs) no longer fits, the ladder's next step
    assert set(changes) - set(fixed) <= {"gpu_memory_utilization"}


@pytest.mark.parametrize("max_model_len", [0, -5])
def test_max_model_len_zero_or_below_auto_is_invalid(max_model_len):
    p = plan(M7, parse_spec("1xA10"), V033, replace(CHAT, max_model_len=max_model_len))
    assert [e.key for e in p.errors] == ["max_model_len"]
    assert p.errors[0].message == (f"max_model_len {max_model_len} is invalid: it must be a whole number from 1 to "
                                   "10000000, or -1 (auto)")
    assert p.max_model_len == 128000 and not any("max_model_len unset" in n for n in p.notes)
    assert p.proposal.reason.startswith("lower max_model_len to") and p.proposal.plan.verdict == "fits"


def test_max_pixels_zero_is_invalid_and_never_one_token_images():
    p = plan(M7, parse_spec("2xA10"), V033, replace(CHAT, max_pixels=0))
    assert [e.key for e in p.errors] == ["max_pixels"] and p.image_tokens == 16384  # the default, not 1
    assert p.proposal.changes["max_pixels"] == 12845056 and p.proposal.plan.verdict == "fits"


def test_negative_tp_never_fits_with_negative_weights():
    p = plan(M7, parse_spec("8xA10"), V033, replace(CHAT, tp=-2))
    assert p.verdict == "invalid" and [e.key for e in p.errors] == ["tp"]  # no second error about the stand-in
    assert p.memory.weights > 0 and p.memory.kv_cache < p.memory.budget
    assert p.proposal.changes == {"tp": 4}


def test_unknown_quantization_on_an_awq_checkpoint_is_invalid():
    p = plan(M72, parse_spec("4xA100-40"), V033, replace(CHAT, quantization="gptq"))
    assert [e.key for e in p.errors] == ["quantization"] and "does not match the checkpoint's awq" in p.errors[0].message
    assert p.proposal.changes == {"quantization": None}


@pytest.mark.parametrize("version", [V082, V033])
def test_batched_tokens_below_max_num_seqs_is_refused_by_both_versions(version):
    p = plan(M7, parse_spec("1xA10"), version, replace(CHAT, max_num_seqs=512, max_num_batched_tokens=256))
    assert [e.key for e in p.errors] == ["max_num_batched_tokens"]
    assert p.errors[0].fix == "max_num_batched_tokens >= 512"
    assert p.proposal.changes == {"max_num_batched_tokens": 512}


def test_v0_batched_tokens_fix_covers_both_floors():
    p = plan(M72, parse_spec("8xT4"), V082, replace(CHAT, max_model_len=4096, max_num_seqs=200,
                                                     max_num_batched_tokens=100))
    assert p.engine == "V0" and [e.key for e in p.errors] == ["max_num_batched_tokens", "max_num_batched_tokens"]
    assert p.proposal.changes == {"max_num_batched_tokens": 4096} and p.proposal.plan.verdict == "fits"


def test_the_image_limit_warns_only_as_the_user_set_it():
    """0.33's default of 999 images is vLLM's, not a wish: no warning for it; a limit the user set that cannot
    fit warns, and so does one default-size image that cannot fit the length the user asked for."""
    def image_warnings(wish):
        return [str(w) for w in plan(M7, parse_spec("1xH100"), V033, wish).warnings if w.key == "limit_images"]

    assert image_warnings(Wish()) == []
    assert image_warnings(Wish(max_model_len=32768)) == []
    assert image_warnings(Wish(max_model_len=32768, limit_images=5)) == [
        "5 images of up to 16384 tokens each (81920) cannot fit one 32768-token prompt — fix: lower max_pixels, the "
        "image limit, or raise max_model_len"]
    assert image_warnings(Wish(max_model_len=8192)) == [
        "one image of up to 16384 tokens cannot fit one 8192-token prompt — fix: lower max_pixels, the image limit, "
        "or raise max_model_len"]
