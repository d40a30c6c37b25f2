"""Preflight by value: each problem names the host, the key or fact, and the fix; a fit host gets its plan."""

from dataclasses import replace

from vlmfleet.config import build, config_for, image_version_mismatch
from vlmfleet.preflight import HostFacts, check

A10X2 = "0, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:17:00.0\n1, NVIDIA A10, 23028, 8.6, 580.95.05, 00000000:18:00.0"
GOOD = HostFacts(os_id="debian", os_version="12", gpu_csv=A10X2, free_model_dir=500 * 10**9, free_docker=500 * 10**9)
DATA = {"vlm_profile": "qwen7b", "api_key_file": "/k"}


def run(data=DATA, facts=GOOD):
    return check(config_for("gpu1", data, check_files=False), facts)


def test_a_fit_host_gets_its_plan():
    v = run()
    assert v.ok and v.problems == []
    assert v.plan.tp == 2 and v.plan.model.id == "qwen2.5-vl-7b-instruct"
    assert v.summary.startswith("2xA10 (23028 MiB each, cc 8.6, pcie), qwen2.5-vl-7b-instruct tp 2 on vLLM 0.33.0: fits")


def test_no_gpu():
    v = run(facts=replace(GOOD, gpu_csv=None))
    assert v.problems == ["gpu1: no NVIDIA driver (nvidia-smi is not installed) — fix: set nvidia_driver_branch = "
                          "'580' (the driver stage installs it and reboots), or install the NVIDIA driver on the host "
                          "yourself"]
    # the branch named is the one the host's image needs
    v = run({**DATA, "vllm_version": "0.8.2", "vllm_image": "vllm/vllm-openai:v0.8.2"}, replace(GOOD, gpu_csv=None))
    assert "nvidia_driver_branch = '550'" in v.problems[0]


def test_nvidia_smi_failing_says_the_driver_is_not_loaded():
    msg = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
           "NVIDIA driver is installed and running.")
    v = run(facts=replace(GOOD, gpu_csv=None, gpu_error=msg + "\n"))
    assert v.problems == [f"gpu1: nvidia-smi failed, the NVIDIA driver is not loaded or not working ({msg}) — fix: "
                          "install or load the driver (reboot after installing it) until `nvidia-smi` lists the GPUs, "
                          "or set nvidia_driver_branch = '580' (the driver stage installs it and reboots)"]


def test_driver_older_than_the_image_needs():
    v = run(facts=replace(GOOD, gpu_csv=A10X2.replace("580.95.05", "550.54.15")))
    assert len(v.problems) == 1
    assert v.problems[0].startswith("gpu1: profile qwen7b on 2xA10")
    assert "driver 550.54.15 is older than 580.65" in v.problems[0]
    assert v.problems[0].endswith("— fix: upgrade the NVIDIA driver to >= 580.65 (nvidia_driver_branch = '580' "
                                  "lets the driver stage do it), or vllm_version = '0.8.2' with its image")
    assert run({**DATA, "vllm_version": "0.8.2", "vllm_image": "vllm/vllm-openai:v0.8.2"},
               replace(GOOD, gpu_csv=A10X2.replace("580.95.05", "550.54.15"))).ok


def test_not_enough_disk_for_weights_and_image():
    v = run(facts=replace(GOOD, free_model_dir=10 * 10**9, free_docker=5 * 10**9))
    assert v.problems == [
        "gpu1: /srv/models has 10.0 GB free, the weights of qwen2.5-vl-7b-instruct need 17.4 GB — fix: free disk "
        "there, or set model_dir to a folder on a larger disk",
        "gpu1: /var/lib/docker has 5.0 GB free, the image needs 30 GB — fix: free disk there, or set "
        "docker_data_root to a folder on a larger disk"]
    assert run(facts=replace(GOOD, free_model_dir=1, free_docker=1, weights_ready=True, image_present=True)).ok


def test_planner_rejection_says_why_and_the_smallest_fix():
    v = run({**DATA, "vllm_tensor_parallel_size": 3})
    assert len(v.problems) == 2  # one line per problem: too few GPUs, heads that do not split
    head = ("gpu1: profile qwen7b on 2xA10 (23028 MiB each, cc 8.6, pcie) with vLLM 0.33.0 is invalid: data key "
            "'vllm_tensor_parallel_size': tensor_parallel_size 3 ")
    assert v.problems[0].startswith(head + "needs 3 GPUs, the host has 2")
    assert v.problems[1].startswith(head + "is invalid for qwen2.5-vl-7b-instruct")
    for line in v.problems:
        assert line.endswith("— fix: vllm_tensor_parallel_size = 2 (correct the invalid settings)")
        assert line.count("— fix:") == 1
    one_t4 = "0, Tesla T4, 15360, 7.5, 580.95.05\n"
    v = run(facts=replace(GOOD, gpu_csv=one_t4))
    assert "does not fit" in v.problems[0] and "— fix: vlm_profile = 'qwen7b_awq' (serve the AWQ checkpoint" in v.problems[0]
    # the fix names real keys: applying it fits
    assert run({**DATA, "vlm_profile": "qwen7b_awq"}, replace(GOOD, gpu_csv=one_t4)).ok
    assert run({**DATA, "vllm_tensor_parallel_size": 2}).ok


def test_image_tag_must_match_the_version():
    assert image_version_mismatch("vllm/vllm-openai:v0.8.2", "0.33.0") == "0.8.2"
    assert image_version_mismatch("egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328",
                                  "0.8.2") is None
    assert image_version_mismatch("10.77.0.1:5000/vlmfleet-lab/vllm-standin:0.33.0", "0.33.0") is None
    _, problems = build("gpu1", {**DATA, "vllm_image": "vllm/vllm-openai:v0.8.2"}, check_files=False)
    assert "runs vLLM 0.8.2 but vllm_version is 0.33.0 — fix: vllm_version = '0.8.2'" in problems[0].render("gpu1")


def test_unreadable_daemon_json_and_unsupported_os():
    v = run(facts=replace(GOOD, os_id="centos", os_version="7",
                          daemon_json={"exists": True, "valid": False, "error": "Expecting value at line 1"}))
    assert v.problems[:2] == [
        "gpu1: /etc/docker/daemon.json is not valid JSON (Expecting value at line 1) — fix: repair it; vlmfleet merges "
        "its keys into that file and never overwrites one it cannot read",
        "gpu1: OS centos 7 is not supported — fix: use Debian 12/13 or Ubuntu 22.04/24.04"]


def test_gpu_devices_select_a_subset():
    v = run({**DATA, "gpu_devices": [1]})
    assert v.ok and v.plan.tp == 1 and v.inventory.gpus[0].index == 1
    assert run({**DATA, "gpu_devices": [3]}).problems == [
        "gpu1: data key 'gpu_devices' = [3]: names GPUs [3] the host does not have (it has [0, 1]) — fix: gpu_devices = "
        "[0, 1] (or 'all')"]


def test_config_json_decides_tp_for_the_72b_awq():
    data = {**DATA, "vlm_profile": "qwen72b_awq"}
    a100 = "".join(f"{i}, NVIDIA A100-SXM4-40GB, 40960, 8.0, 580.95.05\n" for i in range(4))
    facts = replace(GOOD, gpu_csv=a100)
    assert run(data, facts).ok
    unpadded = {"intermediate_size": 29568, "quantization_config": {"quant_method": "awq", "group_size": 128}}
    v = run(data, replace(facts, config_json=unpadded, config_path="gpu1:/srv/models/x/config.json"))
    assert "AWQ: intermediate_size 29568 / tp 4 = 7392 is not a multiple of group_size 128" in v.problems[0]


def test_deadline_per_model_size():
    assert config_for("h", DATA, check_files=False).deadline_s == 900
    awq = {**DATA, "vlm_profile": "qwen72b_awq"}
    assert config_for("h", awq, check_files=False).deadline_s == 1800
    assert config_for("h", {**awq, "health_deadline_s": 60}, check_files=False).deadline_s == 60


def test_a_daemon_json_data_root_elsewhere_than_docker_data_root():
    dj = {"exists": True, "valid": True, "data": {"data-root": "/data/docker"}}
    v = run(facts=replace(GOOD, daemon_json=dj))
    assert v.problems == ["gpu1: data key 'docker_data_root' = '/var/lib/docker': /etc/docker/daemon.json keeps images "
                          "in /data/docker, so the disk check would measure the wrong place — fix: docker_data_root = "
                          "'/data/docker'"]
    assert run({**DATA, "docker_data_root": "/data/docker"}, replace(GOOD, daemon_json=dj)).ok
    # moving Docker's storage: the options say where, daemon.json still has the old place (the base stage moves it)
    moved = {**DATA, "docker_data_root": "/data/d2", "docker_daemon_options": {"data-root": "/data/d2"}}
    assert run(moved, replace(GOOD, daemon_json=dj)).ok
    # a docker_data_root nobody tells dockerd about
    v = run({**DATA, "docker_data_root": "/data/d2"})
    assert v.problems == ["gpu1: data key 'docker_data_root' = '/data/d2': dockerd keeps images in /var/lib/docker "
                          "(daemon.json sets no data-root), so the disk check would measure the wrong place — fix: "
                          "docker_daemon_options = {'data-root': '/data/d2'} (moves Docker's storage there), or "
                          "docker_data_root = '/var/lib/docker'"]


def test_api_bind_must_be_an_address_of_the_host():
    facts = replace(GOOD, addresses=["127.0.0.1", "10.77.0.12", "::1"])
    v = run({**DATA, "api_bind": "10.77.0.99"}, facts)
    assert v.problems == ["gpu1: data key 'api_bind' = '10.77.0.99': is not an address of this host (it has 10.77.0.12): "
                          "vLLM could not bind — fix: api_bind = '0.0.0.0' (every address) or api_bind = '10.77.0.12'"]
    assert run({**DATA, "api_bind": "10.77.0.12"}, facts).ok
    assert run({**DATA, "api_bind": "0.0.0.0"}, facts).ok


def test_a_profile_that_cannot_fit_names_one_that_does():
    l40s = replace(GOOD, gpu_csv="0, NVIDIA L40S, 46068, 8.9, 580.95.05")
    v = run({**DATA, "vlm_profile": "qwen72b_awq"}, l40s)
    assert v.problems[0].endswith("— fix: vlm_profile = 'qwen32b_awq' (the largest profile that fits this host), or a "
                                  "host with more GPU memory")
    assert run({**DATA, "vlm_profile": "qwen32b_awq"}, l40s).ok


def test_an_override_that_breaks_the_fit_is_fixed_by_removing_it():
    v = run({**DATA, "vllm_max_num_seqs": 65536})
    assert v.problems[0].endswith("— fix: remove vllm_max_num_seqs (profile qwen7b as shipped fits this host)")
