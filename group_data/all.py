"""Fleet-wide choices: data every host gets unless its group or host data says otherwise.

This file is yours. vlmfleet's defaults live in the package (vlmfleet/config.py; every key, its default and
its checks: docs/data-keys.md); set a key here only to change it for the whole fleet. pyinfra merges
--data > host data (inventory) > group data (group_data/<group>.py) > this file. Preflight checks every value
and fails the host, naming the key and a fix, before anything changes.

Examples (uncomment and edit):
"""

# Reach the hubs and registries through mirrors:
# hf_endpoint = "https://hf-mirror.com"
# weights_source = "modelscope"                       # or "git-lfs"
# image_registry_mirror = "docker.m.daocloud.io"      # a registry host, no scheme
# docker_registry_mirrors = ["https://mirror.example.internal"]
# pip_index_url = "https://mirrors.aliyun.com/pypi/simple"

# Pin the image you tested (see `docker buildx imagetools inspect vllm/vllm-openai:v0.33.0`):
# vllm_image = "vllm/vllm-openai:v0.33.0"
# vllm_image_digest = "sha256:<64 hex digits>"

# Serve with a key (required unless api_bind is loopback); the file is on this control machine:
# api_key_file = "secrets/api-key"
# api_port = 8000

# Where things live on the hosts:
# model_dir = "/srv/models"
# docker_data_root = "/var/lib/docker"

# A host that stops answering must not hold the run: paramiko waits an hour by default to open the channel of a
# command, before any command time limit applies (vlmfleet's command_timeout_s and friends). This is pyinfra's own
# key; keep channel_timeout in it if you add other paramiko options.
ssh_paramiko_connect_kwargs = {"channel_timeout": 60}
