"""The catalog by value: FACTS.md numbers, GPU name matching, config.json overriding the catalog."""

import pytest

from vlmfleet.catalog import (CatalogError, driver_at_least, gpu_kind, model, model_with_config, models, profiles,
                              vllm_version)
from vlmfleet.planner import valid_tps

QWEN25_VL_7B_CONFIG = {  # the fields of Qwen/Qwen2.5-VL-7B-Instruct's config.json the planner reads
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "hidden_size": 3584, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 152064,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
}


def test_catalog_has_every_size_and_its_awq_variant():
    ids = set(models())
    for size in ("3b", "7b", "32b", "72b"):
        assert f"qwen2.5-vl-{size}-instruct" in ids and f"qwen2.5-vl-{size}-instruct-awq" in ids


@pytest.mark.parametrize("mid, numbers", [
    ("qwen2.5-vl-7b-instruct", (28, 3584, 28, 4, 128, 18944)),
    ("qwen2.5-vl-72b-instruct-awq", (80, 8192, 64, 8, 128, 29696)),
    ("qwen2.5-vl-3b-instruct", (36, 2048, 16, 2, 128, 11008)),
])
def test_architecture_numbers_match_facts(mid, numbers):
    t = model(mid).text
    assert (t.layers, t.hidden, t.heads, t.kv_heads, t.head_dim, t.intermediate) == numbers
    assert t.max_position_embeddings == 128000


def test_awq_checkpoint_facts_and_unverified_fields():
    m = model("Qwen/Qwen2.5-VL-72B-Instruct-AWQ")  # found by repo id too
    assert m.quantization == "awq" and m.awq.bits == 4 and m.awq.group_size == 128
    assert m.awq.modules_to_not_convert == ("visual",)
    assert set(m.verify) == {"text.intermediate", "vision.intermediate"}
    assert m.hf == m.modelscope == "Qwen/Qwen2.5-VL-72B-Instruct-AWQ"


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(CatalogError, match="unknown model 'qwen3'; known: qwen2.5-vl-3b-instruct"):
        model("qwen3")


@pytest.mark.parametrize("name, kind", [
    ("Tesla T4", "T4"), ("NVIDIA A10", "A10"), ("NVIDIA A10G", "A10G"), ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"), ("NVIDIA A100-SXM4-40GB", "A100-40"), ("NVIDIA A100-PCIE-40GB", "A100-40"),
    ("NVIDIA A100 80GB PCIe", "A100-80"), ("NVIDIA A100-SXM4-80GB", "A100-80"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100"), ("NVIDIA H200", "H200"), ("a100-40", "A100-40"),
])
def test_nvidia_smi_names_map_to_catalog_kinds(name, kind):
    assert gpu_kind(name).id == kind


def test_gpu_facts_by_value():
    t4, h100 = gpu_kind("T4"), gpu_kind("H100")
    assert (t4.memory_mib, t4.cc, t4.bf16, t4.fp8_kv["0.33.0"], t4.awq_kernel, t4.interconnect) == (
        15360, "7.5", False, "no", "awq", "pcie_no_p2p")
    assert (h100.memory_mib, h100.reserved_mib, h100.cc, h100.bf16, h100.fp8_kv["0.8.2"], h100.interconnect) == (
        81559, 480, "9.0", True, "ok", "nvlink")
    assert gpu_kind("A10").fp8_kv["0.33.0"] == "risky"


def test_unknown_gpu_is_an_error_with_the_list():
    with pytest.raises(CatalogError, match="unknown GPU 'Radeon'; known: T4, A10"):
        gpu_kind("Radeon")


def test_vllm_versions_by_value():
    old, new = vllm_version("0.8.2"), vllm_version("v0.33.0")
    assert (old.cuda, old.min_driver, old.limit_mm_syntax, old.default_gpu_memory_utilization) == ("12.4", "550.54", "kv", 0.90)
    assert (new.cuda, new.min_driver, new.limit_mm_syntax, new.default_gpu_memory_utilization) == ("13.0", "580.65", "json", 0.92)
    assert not old.counts_cudagraph_memory and new.counts_cudagraph_memory
    assert "--task" in new.removed_flags and "--swap-space" in new.removed_flags
    with pytest.raises(CatalogError, match="vLLM '0.9.9' is not in the catalog"):
        vllm_version("0.9.9")


@pytest.mark.parametrize("driver, minimum, ok", [
    ("550.54.15", "550.54", True), ("550.54", "550.54", True), ("535.183.01", "550.54", False),
    ("580.159.04", "580.65", True), ("570.26", "580.65", False),
])
def test_driver_comparison(driver, minimum, ok):
    assert driver_at_least(driver, minimum) is ok


def test_config_json_wins_over_the_catalog():
    awq = model("qwen2.5-vl-72b-instruct-awq")
    cfg = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "intermediate_size": 29568,
           "vision_config": {"intermediate_size": 3456},
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                   "version": "gemm", "modules_to_not_convert": ["visual"]}}
    m = model_with_config(awq, cfg, "/models/x/config.json")
    assert m.text.intermediate == 29568 and m.verify == () and m.source == "/models/x/config.json"
    assert valid_tps(m, 8) == [1]  # vllm#13640: tp 2/4 fail on the unpadded checkpoint
    assert valid_tps(awq, 8) == [1, 2, 4, 8]


def test_config_json_with_nested_text_config_and_no_quantization():
    cfg = dict(QWEN25_VL_7B_CONFIG)
    nested = {"architectures": cfg.pop("architectures"), "vision_config": cfg.pop("vision_config"), "text_config": cfg}
    m = model_with_config(model("qwen2.5-vl-7b-instruct"), nested, "cfg")
    assert m.text == model("qwen2.5-vl-7b-instruct").text and m.quantization is None


def test_config_json_of_another_architecture_is_refused():
    with pytest.raises(CatalogError, match="is not Qwen2.5-VL"):
        model_with_config(model("qwen2.5-vl-7b-instruct"), {"architectures": ["LlamaForCausalLM"]}, "cfg")


def test_profiles_reference_catalog_models():
    for p in profiles().values():
        assert model(p.model_id).id == p.model_id
