"""Fleet-wide defaults: every vlmfleet data key, with its one documented default.

Group files (group_data/qwen7b.py, group_data/qwen72b_awq.py, group_data/lab.py) and host data in the
inventory override these; pyinfra merges host > group > all. vlmfleet.settings holds the same defaults and
types (a test keeps the two and the README table equal); unknown keys fail preflight, naming host and key.
"""

# The hello proof service (deploys/hello.py, the Foundation smoke test): its port.
hello_port = 9099


# ---- What to serve (profiles: vlmfleet/catalog/profiles.yaml). Planner overrides: None keeps the profile's value.

# serving profile from vlmfleet/catalog/profiles.yaml; set per group (group_data/qwen7b.py: qwen7b,
# group_data/qwen72b_awq.py: qwen72b_awq)
vlm_profile = None
# name clients send as "model"; default: the profile's model id
served_model_name = None
# override the profile's max_model_len (tokens)
vllm_max_model_len = None
# override the profile's max_num_seqs
vllm_max_num_seqs = None
# override the profile's max_num_batched_tokens
vllm_max_num_batched_tokens = None
# override images per prompt
vllm_limit_images = None
# override videos per prompt
vllm_limit_videos = None
# override the largest image kept (pixels)
vllm_max_pixels = None
# override the GPU memory fraction
vllm_gpu_memory_utilization = None
# override the KV cache dtype (auto, fp8, ...)
vllm_kv_cache_dtype = None
# override tp (default: every GPU in gpu_devices)
vllm_tensor_parallel_size = None
# override dtype (auto | float16 | bfloat16)
vllm_dtype = None
# pass --quantization (default: let vLLM detect it)
vllm_quantization = None
# override --enforce-eager
vllm_enforce_eager = None

# ---- The image

# vLLM version the image runs (vlmfleet/catalog/vllm.yaml): decides flag syntax, defaults, the minimum driver
# (0.8.2 | 0.33.0)
vllm_version = '0.33.0'
# image to pull and run; the seed's is egs-registry.cn-
# hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328
vllm_image = 'vllm/vllm-openai:v0.33.0'
# pin: pull and run image@sha256:...
vllm_image_digest = None
# pull Docker Hub images through this registry host (e.g. docker.m.daocloud.io); the unit runs the mirrored
# reference
image_registry_mirror = None
# free disk the image needs under docker_data_root (vLLM images: 20-28 GB)
image_disk_gb = 30

# ---- The service

# port vLLM listens on (host network)
api_port = 8000
# address vLLM binds
api_bind = '0.0.0.0'
# file ON THE CONTROL MACHINE holding the API key; uploaded to /etc/vlmfleet/<service>.env (0600) as VLLM_API_KEY,
# never in argv or the unit; unset: open API
api_key_file = None
# GPUs given to the container: "all" or indices like [0, 1]
gpu_devices = 'all'
# override the GPU link class for NCCL settings (nvlink | pcie | pcie_no_p2p)
gpu_interconnect = None
# seconds to wait for a healthy server after a (re)start; default per model size: 900 up to 32B, 1800 for 72B
health_deadline_s = None

# ---- Weights

# where weights live on the host (mounted read-only into the container at /models)
model_dir = '/srv/models'
# where weights come from (huggingface | modelscope | git-lfs)
weights_source = 'huggingface'
# branch, tag or commit to fetch
weights_revision = 'main'
# Hugging Face endpoint or mirror (HF_ENDPOINT, e.g. https://hf-mirror.com)
hf_endpoint = 'https://huggingface.co'
# ModelScope endpoint
modelscope_endpoint = 'https://www.modelscope.cn'
# base URL for git-lfs clones: <url>/<repo>.git
git_lfs_url = 'https://www.modelscope.cn'
# file ON THE CONTROL MACHINE holding a hub token; uploaded to /etc/vlmfleet/secrets/hub-token (0600), read by the
# fetch tool, never in argv
hf_token_file = None
# free disk the weights need under model_dir; default: the catalog's size on disk + 5%
weights_disk_gb = None
# full: re-hash every file on each run (a corrupted file is re-fetched); size: compare sizes only (full | size)
weights_verify = 'full'
# pinned virtualenv and helper scripts the deploy owns
tools_dir = '/opt/vlmfleet'
# Python package index for the weights tools (e.g. https://mirrors.aliyun.com/pypi/simple)
pip_index_url = 'https://pypi.org/simple'
# pinned huggingface_hub; 1.17.0 is the last release that resumes an interrupted download (from 1.18 each process
# writes its own temporary file)
huggingface_hub_version = '1.17.0'
# pinned modelscope
modelscope_version = '1.40.2'

# ---- Base: Docker and the NVIDIA container toolkit

# docker-ce from Docker's apt repository, or the distro's docker.io (docker-ce | docker.io)
docker_package = 'docker-ce'
# Docker's apt repository (or a mirror of it)
docker_apt_url = 'https://download.docker.com/linux/debian'
# where images are stored (checked for free disk)
docker_data_root = '/var/lib/docker'
# daemon.json registry-mirrors (merged, never clobbered)
docker_registry_mirrors = []
# daemon.json insecure-registries (merged)
docker_insecure_registries = []
# further daemon.json keys to merge in
docker_daemon_options = {}
# install the NVIDIA container toolkit and give containers GPUs (--gpus); off only where no GPU exists (the lab)
nvidia_runtime = True
# NVIDIA container toolkit apt repository
nvidia_toolkit_apt_url = 'https://nvidia.github.io/libnvidia-container/stable/deb'

# ---- The run

# stages deploys/vlm.py runs, in order (e.g. --data vlm_stages='["health"]')
vlm_stages = ['preflight', 'base', 'weights', 'image', 'service', 'health']
