"""The systemd unit running vLLM in Docker: exact docker arguments, quoting, and systemd-analyze verify."""

import shutil
import subprocess
from pathlib import Path

import pytest

from vlmfleet.catalog import vllm_version
from vlmfleet.gpus import parse_spec
from vlmfleet.profiles import plan_profile
from vlmfleet.service import docker_run_args, exec_line, render_unit, service_for, systemd_quote
from vlmfleet.settings import resolve

V033 = vllm_version("0.33.0")


@pytest.fixture
def t4_plan():
    return plan_profile("qwen7b", parse_spec("2xT4"), V033, {"dtype": "float16"})


def test_docker_run_arguments_exactly(t4_plan):
    s = resolve({"vlm_profile": "qwen7b", "gpu_devices": [0, 1], "api_key_file": "/k"})
    svc = service_for(s, t4_plan)
    assert (svc.name, svc.unit, svc.served_name, svc.host_weights) == (
        "vllm-qwen7b", "vllm-qwen7b.service", "qwen2.5-vl-7b-instruct", "/srv/models/Qwen2.5-VL-7B-Instruct")
    assert docker_run_args(svc, t4_plan, s) == [
        "/usr/bin/docker", "run", "--rm", "--name", "vllm-qwen7b", "--network", "host", "--ipc", "host",
        "--gpus", '"device=0,1"',
        "--env-file", "/etc/vlmfleet/secrets/vllm-qwen7b.env",
        "--env", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", "--env", "HF_HUB_OFFLINE=1",
        "--env", "NCCL_P2P_DISABLE=1",
        "--label", "vlmfleet.profile=qwen7b",
        "--volume", "/srv/models/Qwen2.5-VL-7B-Instruct:/models/Qwen2.5-VL-7B-Instruct:ro",
        "--entrypoint", "vllm", "vllm/vllm-openai:v0.33.0", "serve", "/models/Qwen2.5-VL-7B-Instruct",
        "--served-model-name", "qwen2.5-vl-7b-instruct", "--host", "0.0.0.0", "--port", "8000",
        "--tensor-parallel-size", "2", "--dtype", "float16", "--max-model-len", "32768", "--max-num-seqs", "16",
        "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.92",
        "--limit-mm-per-prompt", '{"image":5,"video":0}', "--mm-processor-kwargs", '{"max_pixels":1003520}',
    ]


def test_no_gpus_flag_without_the_nvidia_runtime_and_never_privileged(t4_plan):
    s = resolve({"vlm_profile": "qwen7b", "nvidia_runtime": False})
    args = docker_run_args(service_for(s, t4_plan), t4_plan, s)
    assert "--gpus" not in args and "--privileged" not in args
    assert resolve({"vlm_profile": "qwen7b"})["gpu_devices"] == "all"
    s_all = resolve({"vlm_profile": "qwen7b"})
    assert docker_run_args(service_for(s_all, t4_plan), t4_plan, s_all)[9:11] == ["--gpus", "all"]


@pytest.mark.parametrize("arg, quoted", [
    ("--port", "--port"), ("8000", "8000"), ("/a:/b:ro", "/a:/b:ro"),
    ('{"image":5,"video":0}', '"{\\"image\\":5,\\"video\\":0}"'),
    ('"device=0,1"', '"\\"device=0,1\\""'), ("50%", '"50%%"'), ("$HOME", '"$$HOME"'), ("a b", '"a b"'),
])
def test_systemd_quoting(arg, quoted):
    assert systemd_quote(arg) == quoted


def test_exec_line_breaks_before_options():
    assert exec_line(["/usr/bin/docker", "run", "--rm", "--name", "x", "img", "serve"]) == \
        "/usr/bin/docker run \\\n    --rm \\\n    --name x img serve"


def _verify_root(tmp_path: Path) -> Path:
    """A root with the machine's systemd units, a docker.service and an executable /usr/bin/docker."""
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    docker = root / "usr/bin/docker"
    docker.write_text("#!/bin/sh\n")
    docker.chmod(0o755)
    (root / "etc/systemd/system/docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    return root


def test_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path, t4_plan):
    s = resolve({"vlm_profile": "qwen7b", "gpu_devices": [0, 1]})
    svc = service_for(s, t4_plan)
    unit = render_unit(svc, t4_plan, s, 900)
    root = _verify_root(tmp_path)
    (root / "etc/systemd/system" / svc.unit).write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", svc.unit], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    # the check itself can fail: a bad value is reported
    (root / "etc/systemd/system" / svc.unit).write_text(unit.replace("Restart=on-failure", "Restart=sometimes"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", svc.unit], capture_output=True, text=True)
    assert "Failed to parse service restart specifier" in proc.stderr


def test_unit_carries_no_secret_and_says_where_the_key_lives(t4_plan):
    s = resolve({"vlm_profile": "qwen7b", "api_key_file": "/secret/key"})
    unit = render_unit(service_for(s, t4_plan), t4_plan, s, 900)
    assert "--api-key" not in unit and "VLLM_API_KEY" not in unit
    assert "The API key comes from /etc/vlmfleet/secrets/vllm-qwen7b.env (root, 0600)." in unit
    assert "StartLimitBurst=5" in unit and "Restart=on-failure" in unit
