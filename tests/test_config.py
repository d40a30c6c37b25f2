"""A host's configuration: one default per key, every bad value stopped with host, key, value, why and a fix
that passes when applied — by value, before anything could change on a host."""

import ast
import re
from pathlib import Path

import json
import subprocess
import sys
from functools import lru_cache

import pytest

from vlmfleet.config import FOREIGN, BY_KEY, SETTINGS, STAGES, build, config_for, defaults

REPO = Path(__file__).resolve().parent.parent
GOOD = {"vlm_profile": "qwen7b", "api_key_file": "/k"}
D = "sha256:" + "a" * 64


def problems(data, **kwargs):
    kwargs.setdefault("check_files", False)
    cfg, found = build("h1", {**GOOD, **data}, **kwargs)
    assert (cfg is None) == bool(found)
    return found


CLI_VALUES = ("0", "abc", "high", "yes", "0,0", "http", "https://m.example", "", "base,base", "preflight,health", "0,1",
              "8001")


@lru_cache(maxsize=None)
def _parsed() -> dict:
    """pyinfra's own ``--data`` parser, run in a subprocess (importing pyinfra_cli here would monkey-patch ssl for
    every later test)."""
    code = ("import json, sys; from pyinfra_cli.util import parse_cli_arg; "
            "print(json.dumps({v: parse_cli_arg(v) for v in json.loads(sys.argv[1])}))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CLI_VALUES)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cli(value: str):
    """What pyinfra makes of ``--data key=<value>``."""
    return _parsed()[value]


# (data, the key the problem names, a piece of the why)
BAD = [
    # counts and sizes vLLM needs positive
    ({"vllm_tensor_parallel_size": -2}, "vllm_tensor_parallel_size", "between 1 and 64"),
    ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size", "between 1 and 64"),
    ({"vllm_tensor_parallel_size": "2"}, "vllm_tensor_parallel_size", "must be int, not str"),
    ({"vllm_tensor_parallel_size": 2.5}, "vllm_tensor_parallel_size", "must be int, not float"),
    ({"vllm_tensor_parallel_size": True}, "vllm_tensor_parallel_size", "must be int, not bool"),
    ({"vllm_max_model_len": 0}, "vllm_max_model_len", "between 1 and 10000000"),
    ({"vllm_max_model_len": -5}, "vllm_max_model_len", "between 1 and 10000000"),
    ({"vllm_max_model_len": cli("abc")}, "vllm_max_model_len", "must be int, not str"),
    ({"vllm_max_model_len": 200000}, "vllm_max_model_len", "exceeds qwen2.5-vl-7b-instruct's max_position_embeddings"),
    ({"vllm_max_model_len": -1, "vllm_version": "0.8.2", "vllm_image": "vllm/vllm-openai:v0.8.2"},
     "vllm_max_model_len", "needs vLLM 0.14 or later"),
    ({"vllm_max_num_seqs": -4}, "vllm_max_num_seqs", "between 1 and 65536"),
    ({"vllm_max_num_seqs": 0}, "vllm_max_num_seqs", "between 1 and 65536"),
    ({"vllm_max_num_batched_tokens": -100}, "vllm_max_num_batched_tokens", "between 1 and 1048576"),
    ({"vllm_max_num_batched_tokens": 8}, "vllm_max_num_batched_tokens", "< max_num_seqs 16: vLLM refuses"),
    ({"vllm_max_num_seqs": 4096, "vllm_max_num_batched_tokens": 2048}, "vllm_max_num_batched_tokens",
     "max_num_batched_tokens 2048 < max_num_seqs 4096"),
    ({"vllm_limit_images": -1}, "vllm_limit_images", "between 0 and 999"),
    ({"vllm_limit_videos": -3}, "vllm_limit_videos", "between 0 and 999"),
    ({"vllm_limit_images": 5000}, "vllm_limit_images", "between 0 and 999"),
    ({"vllm_max_pixels": -1}, "vllm_max_pixels", "between 3136"),
    ({"vllm_max_pixels": 100}, "vllm_max_pixels", "between 3136"),
    ({"vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization", "between 0.05 and 1.0"),
    ({"vllm_gpu_memory_utilization": 0}, "vllm_gpu_memory_utilization", "between 0.05 and 1.0"),
    ({"vllm_gpu_memory_utilization": cli("high")}, "vllm_gpu_memory_utilization", "must be a number"),
    ({"health_deadline_s": -5}, "health_deadline_s", "between 30 and 86400"),
    ({"health_deadline_s": 0}, "health_deadline_s", "between 30 and 86400"),
    ({"image_disk_gb": -1}, "image_disk_gb", "between 0.1"),
    ({"image_disk_gb": "lots"}, "image_disk_gb", "must be a number"),
    ({"weights_disk_gb": -3}, "weights_disk_gb", "between 0.1"),
    # choices and cross-checks against the checkpoint and version
    ({"vllm_kv_cache_dtype": "fp4"}, "vllm_kv_cache_dtype", "is not a KV cache dtype of vLLM 0.33.0"),
    ({"vllm_dtype": "fp32"}, "vllm_dtype", "is not one of auto, float16, bfloat16"),
    ({"vllm_quantization": "gptq"}, "vllm_quantization", "is not one of awq, awq_marlin"),
    ({"vllm_quantization": "awq"}, "vllm_quantization", "is not a quantized checkpoint (bfloat16)"),
    ({"vllm_enforce_eager": cli("yes")}, "vllm_enforce_eager", "must be bool, not str"),
    ({"vllm_version": "0.9.0"}, "vllm_version", "is not one of 0.8.2, 0.33.0"),
    ({"vlm_profile": "qwen9b"}, "vlm_profile", "is not one of qwen3b"),
    ({"vlm_profile": None}, "vlm_profile", "is unset: the host serves no model"),
    ({"weights_source": "s3"}, "weights_source", "is not one of huggingface, modelscope, git-lfs"),
    ({"weights_source": "HuggingFace"}, "weights_source", "is not one of huggingface"),
    ({"weights_verify": "none"}, "weights_verify", "is not one of full, size"),
    ({"docker_package": "podman"}, "docker_package", "is not one of docker-ce, docker.io"),
    ({"gpu_interconnect": "infiniband"}, "gpu_interconnect", "is not one of nvlink, pcie, pcie_no_p2p"),
    ({"nvidia_runtime": cli("yes")}, "nvidia_runtime", "must be bool, not str"),
    # GPUs
    ({"gpu_devices": [0, 0]}, "gpu_devices", "names a GPU twice"),
    ({"gpu_devices": cli("0,0")}, "gpu_devices", "names a GPU twice"),
    ({"gpu_devices": [-1]}, "gpu_devices", "GPU indices are >= 0"),
    ({"gpu_devices": []}, "gpu_devices", 'must be "all" or a non-empty list'),
    ({"gpu_devices": "first"}, "gpu_devices", 'must be "all" or a non-empty list'),
    ({"gpu_devices": [0, 1], "vllm_tensor_parallel_size": 4}, "vllm_tensor_parallel_size",
     "4 GPUs, but gpu_devices gives the container 2"),
    # the service
    ({"api_port": 22}, "api_port", "is this host's SSH port (ssh_port 22)"),
    ({"api_port": 0}, "api_port", "must be a TCP port (1-65535)"),
    ({"api_port": 70000}, "api_port", "must be a TCP port (1-65535)"),
    ({"api_port": cli("http")}, "api_port", "must be int, not str"),
    ({"api_bind": "not-an-ip"}, "api_bind", "must be an IP address"),
    ({"api_bind": "localhost"}, "api_bind", "must be an IP address"),
    ({"api_bind": ""}, "api_bind", "must be an IP address"),
    ({"api_key_file": None}, "api_key_file", "api_bind 0.0.0.0 serves beyond this host without a key"),
    ({"api_key_file": None, "api_bind": "::"}, "api_key_file", "api_bind :: serves beyond this host without a key"),
    ({"api_allow_unauthenticated": "yes"}, "api_allow_unauthenticated", "must be bool, not str"),
    ({"served_model_name": ""}, "served_model_name", "must be a non-empty name"),
    ({"served_model_name": "my model"}, "served_model_name", "must be a non-empty name"),
    # the image
    ({"vllm_image": ""}, "vllm_image", "must name an image"),
    ({"vllm_image": "Vllm/VLLM-openai:v0.33.0"}, "vllm_image", "is not a Docker image reference"),
    ({"vllm_image": "vllm openai"}, "vllm_image", "is not a Docker image reference"),
    ({"vllm_image": "https://docker.io/vllm/vllm-openai:v0.33.0"}, "vllm_image", "is not a Docker image reference"),
    ({"vllm_image": "vllm/vllm-openai:v0.8.2"}, "vllm_image", "runs vLLM 0.8.2 but vllm_version is 0.33.0"),
    ({"vllm_image": "vllm/vllm-openai:v0.9.1"}, "vllm_image", "runs vLLM 0.9.1, which vlmfleet has no flag table for"),
    ({"vllm_image": f"vllm/vllm-openai:v0.33.0@{D}", "vllm_image_digest": "sha256:" + "b" * 64}, "vllm_image",
     "carries a digest and vllm_image_digest pins another"),
    ({"vllm_image_digest": "abc"}, "vllm_image_digest", "must be sha256:<64 lower-case hex digits>"),
    ({"vllm_image_digest": "sha256:" + "A" * 64}, "vllm_image_digest", "must be sha256:<64 lower-case hex digits>"),
    ({"image_registry_mirror": "https://docker.m.daocloud.io"}, "image_registry_mirror", "(no scheme)"),
    ({"image_registry_mirror": "docker mirror"}, "image_registry_mirror", "must be a registry host name"),
    ({"image_registry_mirror": ""}, "image_registry_mirror", "must be a registry host name"),
    # Docker's daemon.json
    ({"docker_registry_mirrors": ["mirror.example"]}, "docker_registry_mirrors", "must be an http(s) URL"),
    ({"docker_registry_mirrors": cli("https://m.example")}, "docker_registry_mirrors", "must be list, not str"),
    ({"docker_registry_mirrors": [5]}, "docker_registry_mirrors", "item 0 must be a URL string"),
    ({"docker_insecure_registries": ["http://10.0.0.1:5000"]}, "docker_insecure_registries", "(no scheme)"),
    ({"docker_daemon_options": {"runtimes": "nvidia"}}, "docker_daemon_options", "would replace the NVIDIA runtime"),
    ({"docker_daemon_options": {"runtimes": {"nvidia": {"path": "/x"}}}}, "docker_daemon_options",
     "'runtimes.nvidia' is installed by nvidia-ctk"),
    ({"docker_daemon_options": {"registry-mirrors": ["https://m"]}}, "docker_daemon_options",
     "manages through the data key docker_registry_mirrors"),
    ({"docker_daemon_options": {"insecure-registries": ["r:5000"]}}, "docker_daemon_options",
     "manages through the data key docker_insecure_registries"),
    ({"docker_daemon_options": {"data-root": "/data/docker"}}, "docker_data_root",
     "differs from docker_daemon_options' data-root"),
    ({"docker_daemon_options": "live-restore"}, "docker_daemon_options", "must be dict, not str"),
    ({"docker_daemon_options": {"x": {1, 2}}}, "docker_daemon_options", "must be JSON-serialisable"),
    ({"docker_daemon_options": {"default-runtime": "nvidia"}, "nvidia_runtime": False}, "docker_daemon_options",
     "default-runtime nvidia while nvidia_runtime is off"),
    # URLs
    ({"hf_endpoint": "hf-mirror.com"}, "hf_endpoint", "must be an http(s) URL"),
    ({"hf_endpoint": "https://hf mirror.com"}, "hf_endpoint", "must be a URL without spaces"),
    ({"modelscope_endpoint": "ftp://modelscope.cn"}, "modelscope_endpoint", "must be an http(s) URL"),
    ({"git_lfs_url": ""}, "git_lfs_url", "must be an http(s) URL"),
    ({"pip_index_url": "https://pypi.org/simple?x=1"}, "pip_index_url", "must not carry a query"),
    ({"docker_apt_url": "download.docker.com/linux/debian"}, "docker_apt_url", "must be an http(s) URL"),
    ({"nvidia_toolkit_apt_url": "https://"}, "nvidia_toolkit_apt_url", "must be an http(s) URL"),
    # paths on hosts
    ({"model_dir": "models"}, "model_dir", "must be an absolute path"),
    ({"model_dir": "/"}, "model_dir", "not a system folder"),
    ({"model_dir": "/srv/my models"}, "model_dir", "may hold only letters"),
    ({"model_dir": "/opt/vlmfleet/models"}, "model_dir", "overlaps tools_dir (/opt/vlmfleet)"),
    ({"tools_dir": "/srv/models/tools"}, "tools_dir", "overlaps model_dir (/srv/models)"),
    ({"tools_dir": "/srv/../etc"}, "tools_dir", "must not contain '..'"),
    ({"docker_data_root": "/var"}, "docker_data_root", "not a system folder"),
    ({"docker_data_root": "var/lib/docker"}, "docker_data_root", "must be an absolute path"),
    # fetch
    ({"weights_revision": ""}, "weights_revision", "must be a branch, tag or commit"),
    ({"weights_revision": "../../etc"}, "weights_revision", "must be a branch, tag or commit"),
    ({"huggingface_hub_version": "latest"}, "huggingface_hub_version", "must be a release number"),
    ({"modelscope_version": ">=1.40"}, "modelscope_version", "must be a release number"),
    ({"hf_token_file": 5}, "hf_token_file", "must be str, not int"),
    # the run
    ({"vlm_stages": []}, "vlm_stages", "must name at least one stage"),
    ({"vlm_stages": cli("")}, "vlm_stages", "must name at least one stage"),
    ({"vlm_stages": ["deploy"]}, "vlm_stages", "names unknown stages ['deploy']"),
    ({"vlm_stages": cli("base,base")}, "vlm_stages", "names a stage twice"),
    ({"vlm_stages": "preflight,helth"}, "vlm_stages", "names unknown stages ['helth']"),
    # found by a tester trying bad input as a new user would
    ({"docker_daemon_options": {"debug": "yes"}}, "docker_daemon_options", "'debug' must be a bool"),
    ({"docker_daemon_options": {"bip": "not-a-cidr"}}, "docker_daemon_options", "not an address/prefix"),
    ({"docker_daemon_options": {"log-driver": "nonexistent-driver"}}, "docker_daemon_options",
     "'log-driver' is 'nonexistent-driver', not one of json-file"),
    ({"docker_daemon_options": {"bogus-key": 1}}, "docker_daemon_options", "is not a dockerd option"),
    ({"docker_daemon_options": {"log-opts": {"max-file": 3}}}, "docker_daemon_options",
     "'log-opts' must be an object of strings"),
    ({"docker_daemon_options": {"live-restor": True}}, "docker_daemon_options", "did you mean 'live-restore'?"),
    ({"model_dir": "/srv/models\n"}, "model_dir", "must not contain a newline"),
    ({"vllm_image": "vllm/vllm-openai:v0.33.0\n"}, "vllm_image", "must not contain a newline"),
    ({"vllm_image_digest": D + "\n"}, "vllm_image_digest", "must not contain a newline"),
    ({"tools_dir": "/opt/vlmfleet\n"}, "tools_dir", "must not contain a newline"),
    ({"served_model_name": "a\tb"}, "served_model_name", "must not contain a newline or other control character"),
    ({"docker_registry_mirrors": ["https://m.example\n"]}, "docker_registry_mirrors", "must not contain a newline"),
    ({"api_bind": "224.0.0.1"}, "api_bind", "not multicast, broadcast or reserved"),
    ({"api_bind": "255.255.255.255"}, "api_bind", "not multicast, broadcast or reserved"),
    ({"docker_registry_mirrors": ["ftp://x"]}, "docker_registry_mirrors", "must be an http(s) URL"),
    ({"docker_registry_mirrors": ["https://a b"]}, "docker_registry_mirrors", "must be a URL without spaces"),
    ({"docker_registry_mirrors": ["https://ok.example", "https://mirror.example?x"]}, "docker_registry_mirrors",
     "must not carry a query"),
    ({"docker_registry_mirrors": ["https://ok.example", "mirror.example?x"]}, "docker_registry_mirrors",
     "must be an http(s) URL"),
    ({"docker_insecure_registries": "bad host"}, "docker_insecure_registries", "must be list, not str"),
    ({"docker_insecure_registries": ["bad host"]}, "docker_insecure_registries", "must be a registry host:port"),
    ({"vllm_max_num_seqs": 99999999}, "vllm_max_num_seqs", "between 1 and 65536"),
    ({"vllm_max_num_seqs": 10**30}, "vllm_max_num_seqs", "between 1 and 65536"),
    ({"nvidia_runtime": 0}, "nvidia_runtime", "must be bool, not int"),
    ({"pip_index_url": "https://pypi.org/simple/ extra"}, "pip_index_url", "must be a URL without spaces"),
    ({"hf_endpoint": "http://user:HFPASS999@hub.example"}, "hf_endpoint", "must not carry credentials"),
    ({"tools_dir": "/etc/vlmfleet"}, "tools_dir", "not a system folder or one of vlmfleet's own"),
    ({"model_dir": "/var/lib/vlmfleet"}, "model_dir", "not a system folder or one of vlmfleet's own"),
    ({"tools_dir": "/var/lib/vlmfleet/tools"}, "tools_dir", "not a system folder or one of vlmfleet's own"),
    ({"model_dir": "/etc/systemd/system"}, "model_dir", "not a system folder"),
    ({"served_model_name": "naïve‐name"}, "served_model_name", "must be a non-empty name"),
    # keys that do not exist
    ({"vllm_max_modle_len": 1}, "vllm_max_modle_len", "is not a vlmfleet setting (did you mean vllm_max_model_len?)"),
    ({"colour": "red"}, "colour", "is not a vlmfleet setting"),
    ({"vllm_tp": 2}, "vllm_tp", "is not a vlmfleet setting"),
    ({"hello_port": 9099}, "hello_port", "is not a vlmfleet setting"),
]


@pytest.mark.parametrize("data, key, why", BAD, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD)])
def test_a_bad_value_is_one_line_naming_host_key_value_why_and_a_fix_that_passes(data, key, why):
    found = problems(data)
    assert [p.key for p in found] == [key], [p.render("h1") for p in found]
    p = found[0]
    line = p.render("h1")
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"h1: data key {key!r} ")
    assert why in p.why, line
    head, _, fix = line.partition(" — fix: ")
    assert fix and " — fix: " not in fix
    # every key the fix names is a real one, and applying the fix gives a valid configuration
    named = set(re.findall(r"\b([a-z][a-z0-9_]+) = ", fix)) | set(p.fix.set)
    assert named <= set(BY_KEY), named - set(BY_KEY)
    fixed = p.fix.apply({**GOOD, **data})
    assert problems(fixed) == [], (line, [q.render("h1") for q in problems(fixed)])


def test_there_are_at_least_sixty_bad_input_cases():
    assert len(BAD) >= 60


def test_the_shipped_defaults_are_a_valid_configuration_and_the_only_defaults():
    cfg = config_for("h1", {"vlm_profile": "qwen7b", "api_key_file": "/k"}, check_files=False)
    for s in SETTINGS:
        assert s.key in defaults()
        if s.key not in ("vlm_profile", "api_key_file"):
            got = getattr(cfg, s.key)
            assert (list(got) if isinstance(got, tuple) else dict(got) if s.kind == "dict" else got) == s.default
    assert cfg.vlm_stages == STAGES


def test_the_configuration_is_immutable():
    cfg = config_for("h1", GOOD, check_files=False)
    with pytest.raises(Exception):
        cfg.api_port = 9000  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.values["api_port"] = 9000  # type: ignore[index]
    assert isinstance(cfg.vlm_stages, tuple) and isinstance(cfg.docker_registry_mirrors, tuple)
    with pytest.raises(AttributeError, match="HostConfig has no setting 'api_prot'"):
        cfg.api_prot  # noqa: B018


def test_data_from_the_command_line_is_accepted_in_its_string_forms():
    cfg = config_for("h1", {**GOOD, "vlm_stages": cli("preflight,health"), "gpu_devices": cli("0,1"),
                            "api_port": cli("8001")}, check_files=False)
    assert cfg.vlm_stages == ("preflight", "health") and cfg.gpu_devices == (0, 1) and cfg.api_port == 8001


def test_the_ssh_port_is_the_hosts_own():
    assert [p.key for p in problems({"api_port": 2222}, ssh_port=2222)] == ["api_port"]
    assert problems({"api_port": 22}, ssh_port=2222) == []
    assert problems({"api_port": 22}, ssh_port=None) == []  # @local: no SSH
    assert problems({"api_port": 8000}, ssh_port=8000)[0].fix.set == {"api_port": 8001}


def test_a_host_in_two_profile_groups_is_refused():
    found = problems({}, profile_groups={"qwen7b": "qwen7b", "qwen72b_awq": "qwen72b_awq"})
    assert [p.render("h1") for p in found] == [
        "h1: data key 'vlm_profile' = 'qwen7b': the host is in 2 profile groups: qwen72b_awq (qwen72b_awq), qwen7b "
        "(qwen7b); one would win silently — fix: keep the host in one of qwen72b_awq, qwen7b in the inventory"]
    assert problems({}, profile_groups={"qwen7b": "qwen7b", "also7b": "qwen7b"}) == []


def test_problems_say_where_the_value_came_from():
    _, found = build("h1", {**GOOD, "api_port": 22}, sources={"api_port": "--data"}, check_files=False)
    assert found[0].render("h1") == ("h1: data key 'api_port' = 22 (--data): is this host's SSH port (ssh_port 22): "
                                     "vLLM would fail to bind, or lock you out — fix: api_port = 8000")


def test_loopback_or_an_explicit_opt_in_serves_without_a_key():
    assert problems({"api_key_file": None, "api_bind": "127.0.0.1"}) == []
    assert problems({"api_key_file": None, "api_bind": "::1"}) == []
    assert problems({"api_key_file": None, "api_allow_unauthenticated": True}) == []
    assert BY_KEY["api_allow_unauthenticated"].dangerous and "DANGEROUS" in BY_KEY["api_allow_unauthenticated"].doc


def test_secret_files_must_exist_on_the_control_machine(tmp_path):
    missing = tmp_path / "api-key"
    base = {"vlm_profile": "qwen7b", "api_bind": "127.0.0.1"}
    _, found = build("gpu1", {**base, "api_key_file": str(missing)})
    assert [p.render("gpu1") for p in found] == [
        f"gpu1: data key 'api_key_file' = '{missing}': does not exist on this (control) machine — fix: write the "
        f"secret into {missing} (one line, mode 0600), or remove api_key_file"]
    assert build("gpu1", found[0].fix.apply({**base, "api_key_file": str(missing)}))[1] == []
    missing.write_text("")
    assert build("gpu1", {**base, "api_key_file": str(missing)})[1][0].why == "is empty: the secret goes on its first line"
    assert build("gpu1", {**base, "hf_token_file": str(tmp_path)})[1][0].why == "is a folder, not a file"
    missing.write_text("sk-1\n")
    assert build("gpu1", {**base, "api_key_file": str(missing), "hf_token_file": str(missing)})[1] == []


def test_remote_paths_are_derived_from_the_configuration():
    p = config_for("h1", {**GOOD, "vlm_profile": "qwen72b_awq", "tools_dir": "/opt/fleet", "model_dir": "/data/m"},
                   check_files=False).paths
    assert (p.fetch_bin, p.health_bin, p.venv) == ("/opt/fleet/bin/vlmfleet-fetch", "/opt/fleet/bin/vlmfleet-health",
                                                    "/opt/fleet/venv")
    assert (p.unit_path, p.env_file, p.plan_file) == (
        "/etc/systemd/system/vllm-qwen72b-awq.service", "/etc/vlmfleet/secrets/vllm-qwen72b-awq.env",
        "/var/lib/vlmfleet/vllm-qwen72b-awq.plan.json")
    assert (p.weights, p.container_weights) == ("/data/m/Qwen2.5-VL-72B-Instruct-AWQ", "/models/Qwen2.5-VL-72B-Instruct-AWQ")


def test_group_files_set_only_known_keys():
    for f in (REPO / "group_data").glob("*.py"):
        tree = ast.parse(f.read_text())
        names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                 if isinstance(t, ast.Name) and not t.id.startswith("_")]
        # vlmfleet's keys, or keys pyinfra owns (ssh_*: group_data/all.py bounds paramiko's channel wait)
        assert [n for n in names if n not in BY_KEY and n != "__all__" and not FOREIGN.match(n)] == [], f.name


def test_the_data_key_reference_is_generated_from_the_schema():
    from vlmfleet.docs import data_keys_page

    assert (REPO / "docs/data-keys.md").read_text() == data_keys_page(), \
        "docs/data-keys.md is stale: regenerate it with `.venv/bin/python -m vlmfleet.docs`"


@pytest.mark.parametrize("data, ref", [
    ({}, "vllm/vllm-openai:v0.33.0"),
    ({"image_registry_mirror": "docker.m.daocloud.io"}, "docker.m.daocloud.io/vllm/vllm-openai:v0.33.0"),
    ({"vllm_image_digest": D}, f"vllm/vllm-openai:v0.33.0@{D}"),
    ({"vllm_image": "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328",
      "vllm_version": "0.8.2", "image_registry_mirror": "docker.m.daocloud.io"},
     "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328"),  # not Docker Hub
    ({"vllm_image": "10.77.0.1:5000/lab/x:1", "image_registry_mirror": "m.example"}, "10.77.0.1:5000/lab/x:1"),
])
def test_image_reference(data, ref):
    assert config_for("h1", {**GOOD, **data}, check_files=False).image_ref == ref


def test_wish_overrides_map_data_keys_to_planner_fields():
    cfg = config_for("h1", {**GOOD, "vllm_max_model_len": 16384, "vllm_tensor_parallel_size": 2}, check_files=False)
    assert cfg.wish_overrides == {"max_model_len": 16384, "tp": 2}


def test_a_fix_for_an_optional_key_removes_it_rather_than_inventing_a_value():
    """A bad digest is not replaced by a made-up one; a 72B host is not told to serve the 7B's name."""
    for data, fix in (({"vllm_image_digest": "sha256:ABC"}, "remove vllm_image_digest (the tag is pulled)"),
                      ({"served_model_name": "my model", "vlm_profile": "qwen72b_awq"},
                       "remove served_model_name (clients send the profile's model id)"),
                      ({"vllm_max_num_seqs": 99999999}, "remove vllm_max_num_seqs (the profile's value applies)"),
                      ({"image_registry_mirror": ""}, "remove image_registry_mirror (images come from their own registry)")):
        assert problems(data)[0].fix.render() == fix
    assert problems({"nvidia_runtime": cli("0")})[0].fix.render() == "nvidia_runtime = False"


def test_a_bad_data_override_is_fixed_by_dropping_it_when_the_host_data_beneath_is_sound():
    _, found = build("h1", {**GOOD, "docker_package": "podman"}, sources={"docker_package": "--data"},
                     beneath={**GOOD, "docker_package": "docker.io"}, check_files=False)
    assert found[0].render("h1") == (
        "h1: data key 'docker_package' = 'podman' (--data): is not one of docker-ce, docker.io — fix: drop the --data "
        "docker_package=... override (the host's data gives docker_package = 'docker.io')")


def test_the_value_shows_with_its_newline_so_the_operator_sees_it():
    line = problems({"model_dir": "/srv/models\n"})[0].render("h1")
    assert "'/srv/models\\n'" in line and "\n" not in line
