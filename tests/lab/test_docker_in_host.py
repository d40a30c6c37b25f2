"""A lab host runs its own Docker engine and runs an image built on this machine and pushed to the lab registry."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.lab

HOST = "h3"


def _ssh(lab, command, check=True):
    proc = subprocess.run(["ssh", "-F", lab["ssh_config"], HOST, command], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{HOST}: `{command}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def test_docker_runs_a_locally_built_image_inside_a_lab_host(lab, lab_cfg):
    from vlmfleet.lab import images

    digest = images.push(lab["registry"], "vlmfleet-lab/hello", "test", images.hello_image(lab_cfg))
    assert digest.startswith("sha256:") and len(digest) == 71

    _ssh(lab, "sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
              "--no-install-recommends docker.io apparmor >/dev/null")
    daemon = json.dumps({"insecure-registries": [lab["registry"]]})
    _ssh(lab, f"echo '{daemon}' | sudo tee /etc/docker/daemon.json >/dev/null && sudo systemctl restart docker")
    assert _ssh(lab, "sudo docker info --format '{{.Driver}}'").strip() == "overlay2"

    out = _ssh(lab, f"sudo docker run --rm {lab['registry']}/vlmfleet-lab/hello:test one two")
    assert out.startswith("hello from a vlmfleet lab image on 12."), out
    assert out.strip().endswith("args: one two"), out
    # pulled by digest too: the engine verified the manifest we pushed
    repo_digests = _ssh(lab, f"sudo docker image inspect --format '{{{{json .RepoDigests}}}}' "
                             f"{lab['registry']}/vlmfleet-lab/hello:test")
    assert f"{lab['registry']}/vlmfleet-lab/hello@{digest}" in json.loads(repo_digests)


def test_lab_host_cannot_reach_outside_addresses(lab):
    out = _ssh(lab, "ip -4 route; curl -sS -m 3 -o /dev/null http://192.0.2.2/ 2>&1; echo rc=$?", check=False)
    assert "default" not in out, out
    assert "rc=7" in out, out  # connection refused / network unreachable, not a timeout
