"""The memory model per vLLM behaviour, by value: each behaviour's value on both sides of the release that changed
it (read from that release's wheel: catalog/vllm.yaml memory:), and the corrections issue 8 lists."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from vlmfleet import memory_model as mm
from vlmfleet.arch import weight_bytes
from vlmfleet.catalog import GIB, CatalogError, _load, behaviour, estimates, gpu_kind, model, planning_version, vllm_version
from vlmfleet.gpus import parse_spec
from vlmfleet.planner import Wish, evaluate, plan

M3, M7 = model("qwen2.5-vl-3b-instruct"), model("qwen2.5-vl-7b-instruct")
M72A = model("qwen2.5-vl-72b-instruct-awq")
H200 = Path(__file__).parent / "fixtures" / "gpu" / "h200-device"


# ---- the behaviours, at their boundaries ------------------------------------------------------------------
@pytest.mark.parametrize("name, before, after, old, new", [
    ("engine", "0.7.3", "0.8.0", "V0", "V1"),
    ("limit_per_modality", "0.8.3", "0.8.4", {"V0": 1, "V1": 1}, {"V0": 1, "V1": 999}),
    ("non_torch_charged_v1", "0.9.0", "0.9.1", ("context", "cublas", "nccl"), ("cublas", "nccl")),
    ("non_torch_charged_v1", "0.10.2", "0.11.0", ("cublas", "nccl"), ("cublas",)),
    ("non_torch_charged_v1", "0.32.0", "0.33.0", ("cublas",), ()),
    ("startup_free_check", "0.9.0", "0.9.1", False, True),
    ("v0_fallback", "0.8.1", "0.8.2", ("cc_below_8", "kv_not_auto"), ("cc_below_8", "fp8_kv_without_fa3")),
    ("v0_fallback", "0.10.1.1", "0.10.2", ("cc_below_8", "fp8_kv_without_fa3"), ("fp8_kv_without_fa3",)),
    ("v0_fallback", "0.10.2", "0.11.0", ("fp8_kv_without_fa3",), ()),
    ("mm_items", "0.9.2", "0.10.0", "ceil", "floor"),
    ("mm_items", "0.10.0", "0.10.1", "floor", "floor_per_prompt"),
    ("dummy_counts", "0.8.2", "0.8.3", "limits", "one"),
    ("mm_tie_break", "0.14.0", "0.17.0", "image", "video"),
    ("video_frames_after_images", "0.10.1.1", "0.10.2", True, False),
    ("mm_dummy_seq_len", "0.10.2", "0.11.0", "max_num_batched_tokens", "max_model_len"),
    ("max_frames_per_video", "0.10.2", "0.11.0", 16, 14),
    ("video_count", "0.8.3", "0.8.4", "limit", "one"),
    ("cudagraph_charged", "0.19.0", "0.20.0", False, True),
    ("default_gpu_memory_utilization", "0.19.1", "0.20.0", 0.90, 0.92),
    ("limit_mm_syntax", "0.8.5", "0.9.0", "kv", "json"),
    ("auto_dtype_fallback", "0.9.0", "0.9.2", False, True),
    ("max_model_len_auto", "0.12.0", "0.14.0", False, True),
])
def test_a_behaviour_changes_at_the_release_it_was_read_from(name, before, after, old, new):
    assert getattr(behaviour(before), name) == old
    assert getattr(behaviour(after), name) == new


def test_every_change_names_the_vllm_file_it_was_read_from():
    for name, changes in _load("vllm.yaml")["memory"].items():
        for c in changes[1:]:  # the first entry is the starting value of the span
            assert "vllm/" in c.get("read", ""), f"{name} since {c['since']}: no vLLM file named"
        assert all(set(c) <= {"since", "value", "read", "bisect"} and {"since", "value"} <= set(c)
                   for c in changes), name  # a comma in an unquoted read splits it into a stray key


def test_the_span_is_planned_and_beyond_it_is_refused():
    for v in ("0.7.2", "0.8.5.post1", "0.9.0.1", "0.23.0", "v0.33.0"):
        assert planning_version(v).memory.version == v.lstrip("v")
    with pytest.raises(CatalogError, match="outside the span the planner knows"):
        planning_version("0.6.6")
    with pytest.raises(CatalogError, match="not a release number"):
        planning_version("latest")


def test_a_version_without_a_flag_table_says_so_and_borrows_the_nearest_tables():
    v = planning_version("0.23.0")
    assert not v.has_flag_table and v.tables == "0.8.2" and v.images == ()
    p = plan(M7, parse_spec("1xH100"), v, Wish(max_model_len=32768, limit_videos=0))
    assert any("0.23.0 has no flag table" in n for n in p.notes)
    assert vllm_version("0.33.0").has_flag_table and vllm_version("0.33.0").tables == "0.33.0"


# ---- engine and defaults ----------------------------------------------------------------------------------
def test_engine_per_version_and_gpu():
    t4, a10, h100 = gpu_kind("T4"), gpu_kind("A10"), gpu_kind("H100")
    assert mm.engine_for(behaviour("0.7.3"), h100, "auto") == "V0"
    assert mm.engine_for(behaviour("0.8.2"), t4, "auto") == "V0"
    assert mm.engine_for(behaviour("0.10.2"), t4, "auto") == "V1"  # Turing runs V1 from 0.10.2
    assert mm.engine_for(behaviour("0.9.2"), a10, "fp8") == "V0" and mm.engine_for(behaviour("0.9.2"), h100, "fp8") == "V1"
    assert mm.engine_for(behaviour("0.11.0"), a10, "fp8") == "V1"
    assert mm.engine_for(behaviour("0.8.0"), h100, "fp8") == "V0"  # 0.8.0/0.8.1: any kv dtype but auto
    assert mm.engine_for(behaviour("0.8.2"), h100, "fp8") == "V1"


def test_scheduler_defaults_per_version_and_gpu():
    a10, h100, a100, h200 = (gpu_kind(k) for k in ("A10", "H100", "A100-80", "H200"))
    assert mm.scheduler_defaults(behaviour("0.8.2"), "V1", a10, 23028, 32768) == (1024, 2048)
    assert mm.scheduler_defaults(behaviour("0.8.2"), "V1", h100, 81559, 32768) == (1024, 8192)
    assert mm.scheduler_defaults(behaviour("0.8.4"), "V1", a10, 23028, 32768) == (256, 2048)
    assert mm.scheduler_defaults(behaviour("0.8.4"), "V1", a100, 81920, 32768) == (256, 2048)
    assert mm.scheduler_defaults(behaviour("0.8.5.post1"), "V1", a100, 81920, 32768) == (1024, 8192)  # >= 70 GiB
    assert mm.scheduler_defaults(behaviour("0.9.2"), "V1", a10, 23028, 32768) == (256, 2048)
    assert mm.scheduler_defaults(behaviour("0.9.2"), "V1", a100, 81920, 32768) == (256, 2048)  # A100 stays small
    assert mm.scheduler_defaults(behaviour("0.33.0"), "V1", h200, 143771, 32768) == (1024, 8192)  # 140 GiB
    assert mm.scheduler_defaults(behaviour("0.26.0"), "V1", h200, 184320, 32768) == (1024, 8192)  # 180 GiB
    assert mm.scheduler_defaults(behaviour("0.33.0"), "V1", h200, 184320, 32768) == (1024, 16384)
    assert mm.scheduler_defaults(behaviour("0.8.2"), "V0", a10, 23028, 4096) == (256, 5120)  # max(len, 5120)
    assert mm.scheduler_defaults(behaviour("0.8.2"), "V0", a10, 23028, 32768) == (256, 32768)


# ---- the dummy multimodal batch (the corrections of issue 8) ----------------------------------------------
@pytest.mark.parametrize("version", ["0.11.0", "0.14.0", "0.33.0"])
def test_from_0_11_one_video_is_profiled_at_full_length_whatever_the_video_limit(version):
    b = behaviour(version)
    for limit in (1, 5, 999):
        prof = mm.mm_profile(b, "V1", max_len=128000, batched=8192, seqs=256, n_img=5, n_vid=limit, img_tok=16384)
        assert (prof.modality, prof.item_tokens, prof.items) == ("video", 114688, 1)  # 14 frames of 16,384 / 2
    off = mm.mm_profile(b, "V1", max_len=128000, batched=8192, seqs=256, n_img=5, n_vid=0, img_tok=16384)
    assert (off.modality, off.item_tokens) == ("image", 16384)  # only a video limit of 0 removes it


def test_before_0_11_the_largest_video_is_sized_at_full_length_but_built_at_max_num_batched_tokens():
    b = behaviour("0.9.2")  # one of each modality counted (0.8.4): 128000 less one image = 6 frame pairs
    prof = mm.mm_profile(b, "V1", max_len=128000, batched=2048, seqs=256, n_img=999, n_vid=999, img_tok=16384)
    assert (prof.modality, prof.budget, prof.items, prof.item_tokens) == ("video", 98304, 1, 16384)
    # 0.8.3 counted the limits: 999 videos share the frames, so one frame pair each, tied with an image
    old = mm.mm_profile(behaviour("0.8.3"), "V1", max_len=128000, batched=2048, seqs=2, n_img=1, n_vid=1,
                        img_tok=16384)
    assert old.modality == "video" and old.budget == 98304


def test_a_tie_between_image_and_video_goes_to_the_image_before_0_17_and_to_the_video_after():
    kw = dict(max_len=16384, batched=16384, seqs=1, n_img=1, n_vid=1, img_tok=16384)
    assert mm.mm_profile(behaviour("0.9.2"), "V1", **kw).modality == "image"
    assert mm.mm_profile(behaviour("0.17.0"), "V1", **kw).modality == "video"


def test_0_14_at_128k_plans_the_big_dummy_video():
    p = evaluate(M7, parse_spec("1xA100-80"), planning_version("0.14.0"), Wish(max_model_len=128000))
    assert p.mm_profile.item_tokens == 114688 and p.memory.encoder_peak > 14 * GIB


def test_0_8_2_v1_builds_the_dummy_at_max_num_batched_tokens_and_rounds_the_count_up():
    b = behaviour("0.8.2")
    prof = mm.mm_profile(b, "V1", max_len=128000, batched=2048, seqs=1024, n_img=1, n_vid=1, img_tok=16384)
    # the largest item is a 98,304-token video (frames for 128k less the image, 12 of 16) ...
    assert prof.modality == "video" and prof.budget == 98304
    # ... but the dummy is built at 2048 tokens: one frame pair, 16,384 tokens
    assert (prof.items, prof.item_tokens) == (1, 16384)
    images = mm.mm_profile(b, "V1", max_len=32768, batched=20000, seqs=16, n_img=5, n_vid=0, img_tok=16384)
    assert images.items == 2  # ceil(20000 / 16384); 0.10 and later floor it:
    later = mm.mm_profile(behaviour("0.11.0"), "V1", max_len=32768, batched=20000, seqs=16, n_img=5, n_vid=0,
                          img_tok=16384)
    assert later.items == 1


def test_v0_drops_multimodal_dummies_that_do_not_fit_one_profiling_sequence():
    b = behaviour("0.8.2")
    dropped = mm.mm_profile(b, "V0", max_len=4096, batched=5120, seqs=2, n_img=1, n_vid=0, img_tok=16384)
    assert dropped.tokens == 0 and dropped.seqs == 1 and "V0 drops" in dropped.why
    kept = mm.mm_profile(b, "V0", max_len=32768, batched=32768, seqs=16, n_img=2, n_vid=0, img_tok=1280)
    assert (kept.items, kept.item_tokens) == (12, 2560)  # min(16, 32768 // 2560) sequences, 2 images each


# ---- what is charged --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version, engine, tp, charged", [
    ("0.8.2", "V1", 1, ("context", "cublas")), ("0.8.2", "V1", 2, ("context", "cublas", "nccl")),
    ("0.8.2", "V0", 2, ("cublas", "nccl")), ("0.9.2", "V1", 2, ("cublas", "nccl")),
    ("0.11.0", "V1", 2, ("cublas",)), ("0.33.0", "V1", 2, ()),
])
def test_non_torch_memory_charged_per_version(version, engine, tp, charged):
    nt = mm.non_torch(behaviour(version), engine, tp, "nvlink")
    assert nt.charged_parts == charged
    assert nt.charged == sum(getattr(nt, part) for part in charged)


def test_nccl_at_tp_2_on_nvlink_is_the_measured_0_83_gib():
    assert mm.non_torch(behaviour("0.9.2"), "V1", 2, "nvlink").nccl == int(0.83 * GIB)
    assert mm.non_torch(behaviour("0.9.2"), "V1", 1, "nvlink").nccl == 0


def test_0_33_does_not_charge_non_torch_memory_but_refuses_to_start_without_room_for_it():
    inv = parse_spec("1xH100")
    ok = evaluate(M7, inv, vllm_version("0.33.0"), Wish(max_model_len=32768, limit_videos=0))
    assert ok.memory.non_torch == 0 and ok.memory.non_torch_total > 0 and ok.startup_ok
    greedy = plan(M7, inv, vllm_version("0.33.0"), Wish(max_model_len=32768, limit_videos=0,
                                                        gpu_memory_utilization=1.0))
    assert not greedy.startup_ok and greedy.verdict == "does not fit"
    assert any("refuses to start: free memory at start" in n for n in greedy.notes)
    assert greedy.proposal.changes == {"gpu_memory_utilization": 0.99}
    assert greedy.proposal.reason.startswith("lower gpu_memory_utilization to 0.99")
    # V0 has no such check (vllm/worker/worker.py), whatever the version
    v0 = evaluate(model("qwen2.5-vl-7b-instruct-awq"), parse_spec("1xT4"), planning_version("0.9.2"),
                  Wish(max_model_len=4096, limit_videos=0, gpu_memory_utilization=1.0))
    assert v0.engine == "V0" and v0.startup_ok
    # 0.8.2 has no such check: it charges the context instead
    old = evaluate(M7, inv, vllm_version("0.8.2"), Wish(max_model_len=32768, limit_videos=0, gpu_memory_utilization=1.0))
    assert old.startup_ok and old.memory.non_torch == old.memory.non_torch_total


def test_cuda_graphs_are_charged_from_0_20():
    inv, w = parse_spec("1xH100"), Wish(max_model_len=32768, limit_videos=0)
    before = evaluate(M7, inv, planning_version("0.19.0"), w)
    after = evaluate(M7, inv, planning_version("0.20.0"), replace(w, gpu_memory_utilization=0.90))
    assert before.memory.cudagraph == after.memory.cudagraph > 0
    assert before.memory.kv_cache - after.memory.kv_cache == after.memory.cudagraph


# ---- estimates --------------------------------------------------------------------------------------------
def test_loaded_weights_are_the_parameters_plus_0_19_gib():
    p = evaluate(M7, parse_spec("1xH100"), vllm_version("0.33.0"), Wish(max_model_len=8192))
    assert p.memory.weights == weight_bytes(M7, 1) + int(0.19 * GIB)
    assert round(p.memory.weights / GIB, 2) == 15.64  # the logs: "Model loading took 15.63-15.67 GiB"


def test_the_encoder_estimate_is_the_tensor_count_times_its_calibrated_factor():
    v = M7.vision
    patches = 16384 * 4
    raw = patches * (2 * (4 * v.hidden + 3 * v.hidden + 3 * v.intermediate) + 3 * 2 * 14 * 14 * 6)
    assert mm.encoder_bytes(M7, 1, 16384, 2) == int(raw * 0.72)
    assert estimates()["encoder_factor"] == 0.72


def test_the_h200_measurement_is_what_the_estimates_say():
    """tools/capture_cuda_overheads.py on a lent H200: the CUDA context, then cuBLAS, outside PyTorch's allocator."""
    cap = json.loads((H200 / "cuda-overheads.json").read_text())
    steps = {s["at"]: s for s in cap["single"]["steps"]}
    context = steps["context"]["non_torch_bytes"] / GIB
    cublas = (steps["cublas, tensors freed"]["non_torch_bytes"] - steps["context"]["non_torch_bytes"]) / GIB
    assert cap["single"]["device"] == "NVIDIA H200" and cap["nvidia_smi_total_mib"] == ["143771"]
    # CUDA's total is nvidia-smi's less the catalog's reserved_mib (615, from tools/capture_gpu_facts.sh)
    assert (143771 * 2**20 - cap["single"]["total_bytes"]) / 2**20 == pytest.approx(615, abs=3)
    e = estimates()
    assert round(context, 3) == 0.514 and context <= e["context_gib"] < context + 0.05
    assert round(cublas, 3) == 0.154 and abs(e["cublas_gib"] - cublas) < 0.01


# ---- what the plan warns about ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.8.2", "0.33.0"])
def test_a_default_plan_warns_about_nothing_the_user_did_not_ask(version):
    p = plan(M7, parse_spec("1xH100"), vllm_version(version), Wish())
    assert p.warnings == []
    set_len = plan(M7, parse_spec("1xH100"), vllm_version(version), Wish(max_model_len=8192))
    assert [w.key for w in set_len.warnings] == ["limit_images"]  # one default-size image > 8192 tokens: real
    assert "one image of up to 16384 tokens" in set_len.warnings[0].message


def test_awq_marlin_runs_bfloat16_on_0_8_2():
    p = evaluate(M72A, parse_spec("4xA100-80"), vllm_version("0.8.2"), Wish(max_model_len=16384, dtype="bfloat16"))
    assert [e.key for e in p.errors] == [] and p.quantization == "awq_marlin" and p.dtype == "bfloat16"


def test_auto_length_profiles_at_the_models_length_first():
    inv, v = parse_spec("1xA100-40"), vllm_version("0.33.0")
    auto = plan(M7, inv, v, Wish(max_model_len=-1))
    # the dummy video of 128k is what the profile encodes, whatever length fits afterwards
    assert auto.mm_profile.item_tokens == 114688 and auto.max_model_len < 128000
    assert auto.max_model_len % 256 == 0 and auto.verdict == "fits"
    assert auto.max_model_len <= auto.safe_capacity_tokens


def test_the_planner_page_carries_the_behaviour_table_and_the_example_as_generated():
    from vlmfleet.docs import REPO, planner_page
    assert (REPO / "docs/planner.md").read_text() == planner_page(), \
        "docs/planner.md is stale: regenerate it with `.venv/bin/python -m vlmfleet.docs`"
