"""The lab (every host of inventories/lab.py): stand-ins and mirrors instead of the public internet and GPUs.

pyinfra loads every group_data file for every inventory; these values apply only to hosts in group `lab`, so
production never sees them. Addresses come from the data `vlmfleet lab up` writes; without a running lab this
file sets only the fixed values (and inventories/lab.py itself says the lab is not up).
"""

from vlmfleet.lab.inventory import LabNotUp as _LabNotUp
from vlmfleet.lab.inventory import load as _load_lab

__all__ = [
    "docker_package", "nvidia_runtime", "image_disk_gb", "weights_disk_gb",
    "docker_insecure_registries", "vllm_image", "hf_endpoint", "modelscope_endpoint", "git_lfs_url",
    "pip_index_url", "api_key_file", "apt_timeout_s", "grafana_install", "scrape_interval_s",
    "nvidia_cuda_repo_url", "nvidia_cuda_repo_key_url", "nvidia_cuda_repo_key_fingerprint",
]

# Only Debian's mirror is reachable from the lab: the distro's Docker engine.
docker_package = "docker.io"
# No GPU in the lab: no NVIDIA toolkit, no --gpus (both pinned by the --dry production plan test).
nvidia_runtime = False
# apt goes through the lab's apt-cacher-ng: a try that takes 3 minutes has hung (seen in the lab: apt's http
# method idle with no connection); kill it and try again.
apt_timeout_s = 180
# Grafana's apt repository is not reachable from the lab: its provisioning files are written, Grafana is not
# installed (the dashboard's queries are checked by promtool and against the lab's Prometheus instead).
grafana_install = False
# Scrape often: the lab's tests wait for a stopped server's alert.
scrape_interval_s = 5
# The lab's images and weights are small.
image_disk_gb = 1
weights_disk_gb = 1.0

try:
    _lab = _load_lab()
except _LabNotUp:
    _lab = None

if _lab:
    # The lab registry speaks plain HTTP on the bridge address.
    docker_insecure_registries = [_lab["registry"]]
    # The serving stand-in (vlmfleet/lab/standins/vllm_standin.py), built and pushed by `vlmfleet lab up`.
    vllm_image = f"{_lab['registry']}/vlmfleet-lab/vllm-standin:0.33.0"
    # The hub stand-in (vlmfleet/lab/standins/hub_standin.py) answers for Hugging Face, ModelScope and git-lfs.
    hf_endpoint = _lab["hub_url"]
    modelscope_endpoint = _lab["hub_url"]
    git_lfs_url = _lab["hub_url"]
    # Real PyPI wheels of the weights tools, mirrored by `vlmfleet lab up`.
    pip_index_url = _lab["pypi_url"]
    # A random API key `lab up` writes (0600): the secret path is exercised like production's.
    api_key_file = _lab["api_key_file"]
    # NVIDIA's CUDA repository stand-in (vlmfleet/lab/standins/nvidia_repo.py), signed by the lab's own key.
    if _lab.get("nvidia_repo", {}).get("fingerprint"):
        nvidia_cuda_repo_url = _lab["nvidia_repo"]["url"]
        nvidia_cuda_repo_key_url = _lab["nvidia_repo"]["key_url"]
        nvidia_cuda_repo_key_fingerprint = _lab["nvidia_repo"]["fingerprint"]
