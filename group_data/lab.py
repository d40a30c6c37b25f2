"""The lab (every host of inventories/lab.py): stand-ins and mirrors instead of the public internet and GPUs.

Production never sees these values: they apply only to hosts of the lab inventory. Addresses come from the data
`vlmfleet lab up` writes.
"""

from vlmfleet.lab.inventory import load as _load_lab

__all__ = [
    "docker_package", "nvidia_runtime", "docker_insecure_registries", "image_disk_gb", "weights_disk_gb",
    "vllm_image", "hf_endpoint", "modelscope_endpoint", "git_lfs_url", "pip_index_url",
    "api_key_file",
]

_lab = _load_lab()

# Only Debian's mirror is reachable from the lab: the distro's Docker engine.
docker_package = "docker.io"
# No GPU in the lab: no NVIDIA toolkit, no --gpus (both pinned by --dry tests against inventories/prod.py).
nvidia_runtime = False
# The lab registry speaks plain HTTP on the bridge address.
docker_insecure_registries = [_lab["registry"]]
# The lab's images and weights are small.
image_disk_gb = 1
weights_disk_gb = 1.0
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
