"""The systemd unit running vLLM in Docker: exact docker arguments, quoting, and systemd-analyze verify."""

import subprocess
from pathlib import Path

import pytest

from vlmfleet.catalog import vllm_version
from vlmfleet.gpus import parse_spec
from vlmfleet.profiles import plan_profile
from vlmfleet.service import docker_run_args, exec_line, plan_record, render_unit, systemd_quote

from cfgs import cfg
from unitverify import verify_root

V033 = vllm_version("0.33.0")


@pytest.fixture
def t4_plan():
    return plan_profile("qwen7b", parse_spec("2xT4"), V033, {"dtype": "float16"})


def test_docker_run_arguments_exactly(t4_plan):
    c = cfg(gpu_devices=[0, 1])
    assert (c.service, c.paths.unit_name, c.served_name, c.paths.weights) == (
        "vllm-qwen7b", "vllm-qwen7b.service", "qwen2.5-vl-7b-instruct", "/srv/models/Qwen2.5-VL-7B-Instruct")
    assert docker_run_args(c, t4_plan) == [
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
    args = docker_run_args(cfg(nvidia_runtime=False), t4_plan)
    assert "--gpus" not in args and "--privileged" not in args
    assert cfg().gpu_devices == "all"
    assert docker_run_args(cfg(), t4_plan)[9:11] == ["--gpus", "all"]


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
    """A root with the machine's systemd units, a docker.service, and the unit's programs as executables:
    /usr/bin/docker and the weights guard's python (the weights stage's virtualenv)."""
    return verify_root(tmp_path, ("usr/bin/docker", "opt/vlmfleet/venv/bin/python"))


def test_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path, t4_plan):
    c = cfg(gpu_devices=[0, 1])
    unit_name = c.paths.unit_name
    unit = render_unit(c, t4_plan)
    root = _verify_root(tmp_path)
    (root / "etc/systemd/system" / unit_name).write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit_name], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    # the check itself can fail: a bad value is reported
    (root / "etc/systemd/system" / unit_name).write_text(unit.replace("Restart=on-failure", "Restart=sometimes"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit_name], capture_output=True, text=True)
    assert "Failed to parse service restart specifier" in proc.stderr


def test_unit_carries_no_secret_and_says_where_the_key_lives(t4_plan):
    unit = render_unit(cfg(api_key_file="/secret/key"), t4_plan)
    assert "--api-key" not in unit and "VLLM_API_KEY" not in unit and "/secret/key" not in unit
    assert "--env-file /etc/vlmfleet/secrets/vllm-qwen7b.env" in unit
    assert "StartLimitBurst=5" in unit and "Restart=on-failure" in unit
    assert unit.startswith("# Managed by vlmfleet (stage service, profile qwen7b)")


def test_planner_numbers_and_the_deadline_live_in_the_plan_record_not_the_unit(t4_plan):
    """A planner constant or the health deadline changing rewrites the record and restarts nothing."""
    from dataclasses import replace

    other = replace(t4_plan, kv_capacity_tokens=t4_plan.kv_capacity_tokens + 12345)
    assert render_unit(cfg(), t4_plan) == render_unit(cfg(), other)
    assert render_unit(cfg(), t4_plan) == render_unit(cfg(health_deadline_s=60), t4_plan)
    assert str(t4_plan.kv_capacity_tokens) not in render_unit(cfg(), t4_plan)
    assert plan_record(cfg(), t4_plan) != plan_record(cfg(), other)
    assert '"health_deadline_s": 60' in plan_record(cfg(health_deadline_s=60), t4_plan)
    assert '"kv_capacity_tokens": %d' % t4_plan.kv_capacity_tokens in plan_record(cfg(), t4_plan)
