"""The driver stage on a bare lab host: an 8xH100 NVSwitch-class box (simulated GPUs and PCI bus) with no driver,
against the lab's stand-in of NVIDIA's CUDA repository (signed, NVIDIA's package names; its kernel module
"loads" only at boot).

One run of the main job with ``nvidia_driver_branch = 580`` installs the driver, holds it, enables the persistence
daemon and the fabric manager, reboots the host exactly once (inside its rollout batch) and ends healthy; a second
run changes nothing and does not reboot; a branch change (590) reboots exactly once more.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO, VLMFLEET, run_pyinfra
from labutil import chat, ssh
from pyinfra_results import parse_results

from vlmfleet.lab import hosts as hostmod
from vlmfleet.lab.config import LabConfig

pytestmark = pytest.mark.lab

BARE = "h4"


def lab_up(count: int) -> dict:
    import json

    env = dict(os.environ, VLMFLEET_LAB_GPUS=f"{BARE}=8xH100:qwen72b_awq:bare")
    proc = subprocess.run([*VLMFLEET, "lab", "up", "--hosts", str(count)], capture_output=True, text=True, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(LabConfig.from_env().inventory_file.read_text())


@pytest.fixture(scope="module")
def bare(lab):
    """The lab with a fourth, bare host; it goes away again afterwards (`lab up --hosts 3`)."""
    data = lab_up(4)
    host = next(h for h in data["hosts"] if h["name"] == BARE)
    assert host["bare"] and host["gpus"] == "8xH100"
    yield data, host
    lab_up(3)


def deploy(*data: str, file: str = "deploys/vlm.py") -> tuple[subprocess.CompletedProcess, str]:
    proc = run_pyinfra("-y", "inventories/lab.py", file, "--limit", BARE,
                       *(a for d in data for a in ("--data", d)), check=False)
    return proc, proc.stdout + proc.stderr


def boots() -> int:
    cfg = LabConfig.from_env()
    return hostmod.boots(cfg, hostmod.host_named(cfg, BARE))


def test_a_bare_host_has_no_driver_and_preflight_names_the_key(bare):
    data, host = bare
    assert "no such file" in ssh(data, BARE, "command -v nvidia-smi || echo no such file")
    proc, out = deploy("vlm_stages=preflight")
    assert proc.returncode != 0
    assert f"{BARE}: no NVIDIA driver (nvidia-smi is not installed) — fix: set nvidia_driver_branch = '580'" in out


def test_first_run_installs_reboots_once_and_ends_healthy(bare):
    data, host = bare
    assert boots() == 1
    proc, out = deploy("nvidia_driver_branch=580")
    assert proc.returncode == 0, out[-3000:]
    assert f"[{BARE}] driver: will install driver branch 580 (cuda-drivers-580 from NVIDIA's CUDA repository), " \
           "fabric manager for 4 NVSwitches, then reboot (no NVIDIA kernel module is loaded)" in out, out[-3000:]
    assert boots() == 2  # exactly one reboot
    assert f"[{BARE}] vllm-qwen72b-awq healthy: " in out, out[-3000:]
    assert ssh(data, BARE, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").split() == ["580.95.05"] * 8
    held = ssh(data, BARE, "apt-mark showhold").split()
    assert {"cuda-drivers-580", "nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-fabricmanager", "libnvidia-nscq"} <= set(held)
    for unit in ("nvidia-persistenced", "nvidia-fabricmanager"):
        assert ssh(data, BARE, f"systemctl is-active {unit}").strip() == "active", unit
        assert ssh(data, BARE, f"systemctl is-enabled {unit}").strip() == "enabled", unit
    assert "Completed" in ssh(data, BARE, "nvidia-smi -q | grep -A2 Fabric")
    assert chat(data, host, "Reply with one word: ready?").status_code == 200


def test_second_run_changes_nothing_and_does_not_reboot(bare):
    _, out = deploy("nvidia_driver_branch=580")
    rows = parse_results(out)
    assert [r for r in rows if r.changed or r.errors] == []
    assert "Reboot into" not in out and boots() == 2


def test_a_branch_change_reboots_once_more(bare):
    """deploys/driver.py alone, on the host that serves now: the packages install in its batch, and the batch
    ends only when the server is healthy again after the reboot."""
    data, _ = bare
    proc, out = deploy("nvidia_driver_branch=590", file="deploys/driver.py")
    assert proc.returncode == 0, out[-3000:]
    assert "then reboot (the loaded module is 580.95.05, not branch 590)" in out, out[-3000:]
    ops = [r.operation for r in parse_results(out)]  # in the order they ran
    order = ["Begin rollout batch 1", "Install NVIDIA driver 590 (cuda-drivers from NVIDIA's CUDA repository)",
             "Reboot into NVIDIA driver branch 590 (the loaded module is 580.95.05, not branch 590)",
             "Check vllm-qwen72b-awq serves again after the reboot (within its deadline)",
             "Note the host is back with its driver"]
    assert [ops.index(op) for op in order] == sorted(ops.index(op) for op in order), ops
    assert boots() == 3
    assert ssh(data, BARE, "nvidia-smi --query-gpu=driver_version --format=csv,noheader").split() == ["590.44.01"] * 8
    assert ssh(data, BARE, "systemctl is-active nvidia-fabricmanager").strip() == "active"
    _, again = deploy("nvidia_driver_branch=590")
    assert [r for r in parse_results(again) if r.changed or r.errors] == [] and boots() == 3
