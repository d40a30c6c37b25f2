"""Moving a host to another profile and back: the profile it leaves is stopped, disabled and removed (container
gone, GPUs and port free) before the new one starts; each time the host is healthy with exactly one vllm unit."""

from __future__ import annotations

import pytest
import requests
from conftest import run_pyinfra
from labutil import SERVED, api_key, ssh
from pyinfra_results import parse_results

pytestmark = pytest.mark.lab


def vllm_state(lab: dict, host: str) -> dict[str, list[str]]:
    """Unit files, active units and containers named vllm-* on the host, plus the secrets and plan files."""
    def lines(command: str) -> list[str]:
        return sorted(x for x in ssh(lab, host, command, check=False).split() if x)

    return {
        "unit_files": lines("cd /etc/systemd/system && ls vllm-*.service 2>/dev/null; true"),
        "active": lines("systemctl list-units 'vllm-*' --state=active --plain --no-legend | awk '{print $1}'"),
        "containers": lines("sudo docker ps -a --format '{{.Names}}' | grep '^vllm-'; true"),
        "files": lines("sudo sh -c 'cd /etc/vlmfleet/secrets && ls vllm-* 2>/dev/null; cd /var/lib/vlmfleet && "
                       "ls vllm-*.plan.json 2>/dev/null'; true"),
    }


def served(lab: dict, host: dict) -> list[str]:
    r = requests.get(f"http://{host['address']}:8000/v1/models", timeout=10,
                     headers={"Authorization": f"Bearer {api_key(lab)}"})
    return [m["id"] for m in r.json()["data"]]


def test_a_host_moves_to_the_other_profile_and_back(lab):
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")  # converged start (no-op after the main job tests)
    h3 = next(h for h in lab["hosts"] if h["group"] == "qwen72b_awq")
    for profile, data in (("qwen7b", ["--data", "vlm_profile=qwen7b"]), ("qwen72b_awq", [])):
        proc = run_pyinfra("-y", "--limit", h3["name"], *data, "inventories/lab.py", "deploys/vlm.py")
        out = proc.stdout + proc.stderr
        other = "vllm-qwen72b-awq" if profile == "qwen7b" else "vllm-qwen7b"
        assert f"Stop and disable {other}.service (this host now serves {profile})" in out
        name = "vllm-" + profile.replace("_", "-")
        assert vllm_state(lab, h3["name"]) == {
            "unit_files": [f"{name}.service"], "active": [f"{name}.service"], "containers": [name],
            "files": [f"{name}.auth", f"{name}.env", f"{name}.plan.json"]}
        assert served(lab, h3) == [SERVED[profile]]
        assert f"{name} healthy: " in out
        again = run_pyinfra("-y", "--limit", h3["name"], *data, "inventories/lab.py", "deploys/vlm.py")
        assert [r for r in parse_results(again.stdout + again.stderr) if r.changed] == []
