"""The production plan, pinned: `--dry --diff` of inventories/prod.py's fleet (on lab hosts for the facts)."""

from __future__ import annotations

import re

import pytest
from conftest import run_pyinfra

pytestmark = pytest.mark.lab

DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def dry(lab, tmp_path_factory):
    key = tmp_path_factory.mktemp("secrets") / "api-key"
    key.write_text("sk-prod-example-0000\n")
    # disk thresholds lowered: the lab's disk is this machine's, not a GPU server's
    proc = run_pyinfra("-v", "--dry", "--diff", "tests/dry/prod_on_lab.py", "deploys/vlm.py", "--data", "image_disk_gb=1",
                       "--data", "weights_disk_gb=1", "--data", f"api_key_file={key}")
    return proc.stdout + proc.stderr


def test_production_plan_installs_docker_ce_and_the_nvidia_toolkit(dry):
    for op in ("Fetch Docker's apt key", "Add Docker's apt repository", "Install Docker (docker-ce)",
               "Fetch NVIDIA's container toolkit apt key", "Add NVIDIA's container toolkit repository",
               "Install the NVIDIA container toolkit",
               "Register the nvidia runtime with Docker (nvidia-ctk runtime configure)",
               "Merge vlmfleet's keys into /etc/docker/daemon.json"):
        assert op in dry, op
    assert "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable" in dry
    assert '"nvidia-container-runtime"' in dry  # the runtime merged into daemon.json


def test_production_plan_pulls_the_pinned_digest_and_runs_with_gpus(dry):
    assert f"Pull vllm/vllm-openai:v0.33.0@{DIGEST}" in dry
    assert f"--entrypoint vllm vllm/vllm-openai:v0.33.0@{DIGEST} serve /models/Qwen2.5-VL-7B-Instruct" in dry
    # the unit's diff against the lab's: --gpus appears, the image becomes the pinned production one
    assert re.search(r"^\s*\+\s+--gpus all \\$", dry, re.M) and "--privileged" not in dry
    # preflight planned each production host on its GPUs (noop lines, shown with -v)
    assert "2xA10 (23028 MiB each, cc 8.6, pcie), qwen2.5-vl-7b-instruct tp 2 on vLLM 0.33.0: fits" in dry
    assert "4xA100-40 (40960 MiB each, cc 8.0, nvlink), qwen2.5-vl-72b-instruct-awq tp 4 on vLLM 0.33.0: fits" in dry


def test_production_plan_keeps_secrets_out(dry):
    assert "sk-prod-example" not in dry
    assert "contents not shown" in dry


def test_production_hosts_keep_their_names(dry):
    for name in ("gpu-a10-01.example.internal", "gpu-a10-02.example.internal", "gpu-a100-01.example.internal"):
        assert f"[{name}]" in dry
