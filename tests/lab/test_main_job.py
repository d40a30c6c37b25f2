"""The main job on fresh lab hosts: `pyinfra inventories/lab.py deploys/vlm.py -y`, both profiles present.

One run brings every host to a server that answers a chat completion (text and image) from this machine; the
second run changes nothing and restarts nothing; a flag changed for one group restarts only that group; bad
input fails the host before anything changes; the API key never shows in argv, units, journals or --diff.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import recreate_lab, run_pyinfra
from labutil import SERVED, api_key, chat, image_content, ssh, started_at
from pyinfra_results import parse_results

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(lab, lab_cfg):
    """Fresh hosts (down + up), then the first run of the main job."""
    data = recreate_lab(lab_cfg)
    first = run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")
    return data, first.stderr + first.stdout


def test_both_profiles_are_in_the_lab(deployed):
    lab, _ = deployed
    assert sorted({h["group"] for h in lab["hosts"]}) == ["qwen72b_awq", "qwen7b"]


def test_first_run_ends_with_every_host_answering_a_chat_completion(deployed):
    lab, out = deployed
    rows = parse_results(out)
    assert all(r.errors == 0 for r in rows), [r for r in rows if r.errors]
    for h in lab["hosts"]:
        text = chat(lab, h, "Reply with one word: ready?")
        assert text.status_code == 200, (h["name"], text.text)
        assert text.json()["model"] == SERVED[h["group"]]
        image = chat(lab, h, image_content())
        assert image.status_code == 200 and "64x48" in image.json()["choices"][0]["message"]["content"]
    assert out.count("healthy: ") == 3  # time-to-healthy and latencies reported per host


def test_second_run_changes_nothing_and_restarts_nothing(deployed):
    lab, _ = deployed
    before = started_at(lab)
    second = run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")
    rows = parse_results(second.stderr + second.stdout)
    changed = [r for r in rows if r.changed or r.errors]
    assert changed == [], changed
    assert all(r.unchanged == r.hosts for r in rows)
    assert started_at(lab) == before


def test_installed_unit_passes_systemd_analyze_verify_on_the_host(deployed):
    lab, _ = deployed
    for h in lab["hosts"]:
        unit = "vllm-" + h["group"].replace("_", "-") + ".service"
        proc = subprocess.run(["ssh", "-F", lab["ssh_config"], h["name"],
                               f"sudo systemd-analyze verify /etc/systemd/system/{unit}"],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_container_runs_what_the_unit_says(deployed):
    lab, _ = deployed
    h = lab["hosts"][0]
    args = ssh(lab, h["name"], "sudo docker inspect --format '{{json .Args}}' vllm-qwen7b")
    assert '"--limit-mm-per-prompt","{\\"image\\":5,\\"video\\":0}"' in args  # quoting survived systemd and docker
    env = ssh(lab, h["name"], "sudo docker inspect --format '{{json .Config.Env}}' vllm-qwen7b")
    assert "HF_HUB_OFFLINE=1" in env and "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in env
    mounts = ssh(lab, h["name"], "sudo docker inspect --format '{{json .Mounts}}' vllm-qwen7b")
    assert '"RW":false' in mounts  # weights mounted read-only
    assert ssh(lab, h["name"], "sudo docker inspect --format '{{.HostConfig.Privileged}} {{.HostConfig.IpcMode}}' "
                               "vllm-qwen7b").strip() == "false host"


def test_api_key_never_in_argv_units_or_journal(deployed):
    lab, _ = deployed
    key = api_key(lab)
    for h in lab["hosts"]:
        # the key travels on stdin into a root-only file, so the search itself never puts it in argv
        ssh(lab, h["name"], "sudo install -m 600 /dev/stdin /root/.vlmfleet-test-key", input=key + "\n")
        found = ssh(lab, h["name"], "sudo grep -rlF -f /root/.vlmfleet-test-key /etc/systemd/system "
                                    "/proc/[0-9]*/cmdline /var/log 2>/dev/null; true")
        assert found.strip() == "", f"{h['name']}: key found in {found}"
        count = ssh(lab, h["name"], "sudo sh -c 'journalctl --no-pager | grep -cF -f /root/.vlmfleet-test-key'; true")
        assert count.strip() == "0"
        assert ssh(lab, h["name"], "sudo sh -c \"stat -c '%a %U' /etc/vlmfleet/secrets /etc/vlmfleet/secrets/*.env\"").split() == [
            "700", "root", "600", "root"]
        ssh(lab, h["name"], "sudo rm -f /root/.vlmfleet-test-key")


def test_dry_diff_of_a_key_rotation_shows_no_secret(deployed, tmp_path):
    lab, _ = deployed
    new = tmp_path / "rotated-key"
    new.write_text("sk-rotated-0123456789abcdef\n")
    dry = run_pyinfra("--dry", "--diff", "inventories/lab.py", "deploys/service.py", "--data",
                      f"api_key_file={new}")
    out = dry.stdout + dry.stderr
    assert "sk-rotated" not in out and api_key(lab) not in out
    assert "secret changed (contents not shown)" in out
    assert "Rollout | Roll out the release" in out  # the rotation would restart the servers, in batches


def test_flag_change_in_one_group_restarts_only_that_group(deployed, tmp_path):
    lab, _ = deployed
    before = started_at(lab)
    override = tmp_path / "group_data"
    override.mkdir()
    (override / "qwen7b.py").write_text("vllm_max_model_len = 16384\n")
    run_pyinfra("-y", "--group-data", str(override), "inventories/lab.py", "deploys/vlm.py")
    after = started_at(lab)
    groups = {h["name"]: h["group"] for h in lab["hosts"]}
    for name, group in groups.items():
        assert (after[name] != before[name]) == (group == "qwen7b"), (name, before[name], after[name])
    import requests

    h1 = next(h for h in lab["hosts"] if h["group"] == "qwen7b")
    models = requests.get(f"http://{h1['address']}:8000/v1/models", timeout=10,
                          headers={"Authorization": f"Bearer {api_key(lab)}"}).json()
    assert models["data"][0]["max_model_len"] == 16384
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")  # back to the group's committed value


def host_state(lab: dict, host: str) -> str:
    """Checksums of every file vlmfleet writes outside the weights, the units' states and the container's start."""
    return ssh(lab, host, "sudo sh -c 'sha256sum /etc/systemd/system/vllm-*.service /etc/docker/daemon.json "
                          "/etc/vlmfleet/secrets/* /var/lib/vlmfleet/*.json 2>&1; "
                          "systemctl is-active docker.service vllm-*.service 2>&1; "
                          "docker ps -q --no-trunc | xargs -r docker inspect --format "
                          "\"{{.Name}} {{.Id}} {{.State.StartedAt}}\"'", check=False)


@pytest.mark.parametrize("data, message", [
    (["vllm_tensor_parallel_size=3"], "is invalid: data key 'vllm_tensor_parallel_size' (--data): "
                                      "tensor_parallel_size 3 is invalid for qwen2.5-vl-72b-instruct-awq"),
    (["vllm_tensor_parallel_size=-2"], "data key 'vllm_tensor_parallel_size' = -2 (--data): must be between 1 and 64 "
                                       "— fix: drop the --data vllm_tensor_parallel_size=... override (the "
                                       "profile's value applies)"),
    (["vllm_max_modle_len=5"], "data key 'vllm_max_modle_len' = 5 (--data): is not a vlmfleet setting (did you mean "
                               "vllm_max_model_len?) — fix: remove vllm_max_modle_len; if you meant "
                               "vllm_max_model_len, set that instead"),
    (["api_port=http"], "data key 'api_port' = 'http' (--data): must be int, not str — fix: drop the --data "
                        "api_port=... override (default 8000)"),
    (["api_port=22"], "data key 'api_port' = 22 (--data): is this host's SSH port (ssh_port 22)"),
    (["vlm_stages="], "data key 'vlm_stages' = [] (--data): must name at least one stage"),
    (["image_registry_mirror=https://docker.m.daocloud.io"], "must be a registry host name (no scheme): the unit "
                                                             "runs <mirror>/<image> — fix: drop the --data "
                                                             "image_registry_mirror=... override"),
    (['docker_daemon_options={"debug": "yes"}'], "'debug' must be a bool, not str 'yes' (dockerd would not start)"),
    (["api_bind=10.77.0.99", "health_deadline_s=30"], "data key 'api_bind' = '10.77.0.99' (--data): is not an "
                                                      "address of this host"),
    (["model_dir=/var/lib/vlmfleet"], "data key 'model_dir' = '/var/lib/vlmfleet' (--data): must be a folder of "
                                      "its own"),
    (['docker_daemon_options={"runtimes": "nvidia"}'], "'runtimes' must map names to objects"),
    (["api_key_file=", "api_bind=0.0.0.0"], "serves beyond this host without a key"),
])
def test_bad_input_fails_the_host_before_any_change(deployed, data, message):
    lab, _ = deployed
    h3 = next(h for h in lab["hosts"] if h["group"] == "qwen72b_awq")
    before, state = started_at(lab), host_state(lab, h3["name"])
    extra = [a for d in data for a in ("--data", d)]
    proc = run_pyinfra("-y", "--limit", h3["name"], *extra, "inventories/lab.py", "deploys/vlm.py", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{h3['name']}: " in out and message in out, out[-3000:]
    assert "Traceback" not in out
    rows = parse_results(out) if "--> Results:" in out else []
    assert all(r.changed == 0 for r in rows), [r for r in rows if r.changed]
    assert started_at(lab) == before
    assert host_state(lab, h3["name"]) == state  # files, units and the container exactly as they were


def test_a_new_deadline_rewrites_the_plan_record_and_restarts_nothing(deployed):
    """What the planner decides (and the deadline) lives beside the unit: changing it restarts no server."""
    lab, _ = deployed
    before = started_at(lab)
    proc = run_pyinfra("-y", "--data", "health_deadline_s=1234", "inventories/lab.py", "deploys/vlm.py")
    rows = {r.operation: r for r in parse_results(proc.stdout + proc.stderr)}
    changed = sorted(op for op, r in rows.items() if r.changed)
    # the record, and the candidate release's plans and release.json (the deadline vlmfleet-release waits)
    assert all(op.startswith(("Service | Record the plan in /var/lib/vlmfleet/", "Service | Stage the plan",
                              "Service | Stage release.json")) for op in changed), changed
    assert "Service | Stage the vLLM unit" not in changed
    assert changed and started_at(lab) == before
    h = lab["hosts"][0]
    assert '"health_deadline_s": 1234' in ssh(lab, h["name"], "sudo cat /var/lib/vlmfleet/vllm-qwen7b.plan.json")
    run_pyinfra("-y", "inventories/lab.py", "deploys/vlm.py")  # back to the committed data
    assert started_at(lab) == before


def test_one_stage_alone_and_by_data_switch(deployed):
    lab, _ = deployed
    for args in (["deploys/health.py"], ["--data", "vlm_stages=preflight,health", "deploys/vlm.py"]):
        proc = run_pyinfra("-y", "inventories/lab.py", *args)
        rows = parse_results(proc.stdout + proc.stderr)
        assert rows and all(r.changed == 0 and r.errors == 0 for r in rows)
        names = " ".join(r.operation for r in rows)
        assert "Health |" in names and "Weights |" not in names and "Base |" not in names


def test_daemon_json_keys_set_by_someone_else_survive(deployed):
    """Runs last in this module: it restarts one host's Docker engine."""
    import json

    lab, _ = deployed
    h = [h for h in lab["hosts"] if h["group"] == "qwen7b"][-1]
    current = json.loads(ssh(lab, h["name"], "sudo cat /etc/docker/daemon.json"))
    theirs = {**current, "log-opts": {"max-size": "10m"}, "insecure-registries": ["registry.example:5000"]}
    ssh(lab, h["name"], "sudo tee /etc/docker/daemon.json >/dev/null", input=json.dumps(theirs))
    first = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/vlm.py")
    rows = {r.operation: r for r in parse_results(first.stdout + first.stderr)}
    assert rows["Base | Merge vlmfleet's keys into /etc/docker/daemon.json"].changed == 1
    # the host serves: dockerd restarts in its rollout batch, and the release is checked healthy after it
    assert rows["Restart Docker after a daemon.json change"].changed == 1
    assert rows["Rollout | Roll out the release (restart, health check, ladder, rollback)"].changed == 1
    out = first.stdout + first.stderr  # both lines are "--> Starting operation: ..." lines of one stream
    assert out.index("Starting operation: Restart Docker after") > out.index("Starting operation: Begin rollout batch 1")
    # the restart took the vLLM container with it: the health stage checked the server again
    assert rows["Health | Check the server: /health, /v1/models, chat (text, image), /metrics (within its deadline)"].changed == 1
    merged = json.loads(ssh(lab, h["name"], "sudo cat /etc/docker/daemon.json"))
    assert merged["log-opts"] == {"max-size": "10m"}
    assert merged["insecure-registries"] == [lab["registry"], "registry.example:5000"]
    again = run_pyinfra("-y", "--limit", h["name"], "inventories/lab.py", "deploys/base.py")
    assert all(r.changed == 0 for r in parse_results(again.stdout + again.stderr))
    assert chat(lab, h, "ready?").status_code == 200
