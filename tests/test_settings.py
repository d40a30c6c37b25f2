"""Data keys: one documented default each, validation that names host, key and fix."""

import ast
import runpy
from pathlib import Path

import pytest

from vlmfleet.settings import BY_KEY, SETTINGS, defaults, image_ref, resolve, validate, wish_overrides

REPO = Path(__file__).resolve().parent.parent


def test_group_data_all_lists_every_key_with_the_same_default():
    all_py = runpy.run_path(str(REPO / "group_data/all.py"))
    for s in SETTINGS:
        assert s.key in all_py, f"group_data/all.py lacks {s.key}"
        assert all_py[s.key] == s.default, s.key


def test_group_data_all_documents_each_key_with_a_comment():
    lines = (REPO / "group_data/all.py").read_text().splitlines()
    for i, line in enumerate(lines):
        if any(line.startswith(f"{s.key} = ") for s in SETTINGS):
            assert lines[i - 1].startswith("# "), f"no comment above {line!r}"


def test_readme_table_is_generated_from_the_settings():
    import re

    from vlmfleet.docs import data_keys_table

    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- data-keys:begin -->\n(.*?)<!-- data-keys:end -->", text, re.S)
    assert m and m.group(1) == data_keys_table(), "README's data key table is stale: regenerate it from vlmfleet.docs"
    for s in SETTINGS:
        assert f"| `{s.key}` |" in m.group(1)


def test_group_files_set_only_known_keys():
    for f in (REPO / "group_data").glob("*.py"):
        tree = ast.parse(f.read_text())
        names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name) and not t.id.startswith("_")]
        unknown = [n for n in names if n not in BY_KEY and n != "hello_port"]
        assert unknown == [], f"{f.name}: {unknown}"


def test_valid_data_has_no_problems():
    assert validate({"vlm_profile": "qwen7b", "api_port": 8001, "gpu_devices": [0, 1], "_sudo": True,
                     "ssh_user": "deploy", "vllm_gpu_memory_utilization": 0.85}) == []


@pytest.mark.parametrize("data, rendered", [
    ({"vllm_max_modle_len": 1}, "h1: data key 'vllm_max_modle_len' is not a vlmfleet setting — fix: did you mean "
                                "'vllm_max_model_len'?"),
    ({"colour": "red"}, "h1: data key 'colour' is not a vlmfleet setting — fix: remove it (README lists every key)"),
    ({"api_port": "http"}, "h1: data key 'api_port' must be int, got str 'http' — fix: set it like the default: "
                           "api_port = 8000"),
    ({"api_port": 70000}, "h1: data key 'api_port' must be a TCP port (1-65535) — fix: set it like the default: "
                          "api_port = 8000"),
    ({"weights_source": "s3"}, "h1: data key 'weights_source' is 's3', not one of huggingface, modelscope, git-lfs — "
                               "fix: set it like the default: weights_source = 'huggingface'"),
    ({"model_dir": "models"}, "h1: data key 'model_dir' must be an absolute path — fix: set it like the default: "
                              "model_dir = '/srv/models'"),
    ({"gpu_devices": "0,1"}, "h1: data key 'gpu_devices' must be \"all\" or a list of GPU indices like [0, 1] — fix: "
                             "set it like the default: gpu_devices = 'all'"),
    ({"vllm_gpu_memory_utilization": 1.5}, "h1: data key 'vllm_gpu_memory_utilization' must be a fraction between "
                                           "0.05 and 1.0"),
    ({"vllm_image_digest": "abc"}, "h1: data key 'vllm_image_digest' must be sha256:<64 hex>"),
    ({"hf_endpoint": "hf-mirror.com"}, "h1: data key 'hf_endpoint' must be an http(s) URL"),
    ({"vlm_stages": ["deploy"]}, "h1: data key 'vlm_stages' unknown stages ['deploy']"),
    ({"nvidia_runtime": "yes"}, "h1: data key 'nvidia_runtime' must be bool, got str 'yes'"),
])
def test_bad_data_names_host_key_and_fix(data, rendered):
    problems = validate(data)
    assert len(problems) == 1
    assert problems[0].render("h1").startswith(rendered)


def test_resolve_overlays_known_keys_only():
    s = resolve({"api_port": 9000, "ssh_user": "x"})
    assert s["api_port"] == 9000 and "ssh_user" not in s and s["model_dir"] == "/srv/models"
    assert s == {**defaults(), "api_port": 9000}


def test_wish_overrides_map_data_keys_to_planner_fields():
    assert wish_overrides(resolve({"vllm_max_model_len": 16384, "vllm_tensor_parallel_size": 2})) == {
        "max_model_len": 16384, "tp": 2}


@pytest.mark.parametrize("data, ref", [
    ({}, "vllm/vllm-openai:v0.33.0"),
    ({"image_registry_mirror": "docker.m.daocloud.io"}, "docker.m.daocloud.io/vllm/vllm-openai:v0.33.0"),
    ({"vllm_image_digest": "sha256:" + "a" * 64}, "vllm/vllm-openai:v0.33.0@sha256:" + "a" * 64),
    ({"vllm_image": "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328",
      "image_registry_mirror": "docker.m.daocloud.io"},
     "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328"),  # not Docker Hub
    ({"vllm_image": "10.77.0.1:5000/lab/x:1", "image_registry_mirror": "m.example"}, "10.77.0.1:5000/lab/x:1"),
])
def test_image_reference(data, ref):
    assert image_ref(resolve(data)) == ref
