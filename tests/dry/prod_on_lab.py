"""Test inventory: inventories/prod.py's hosts, groups and data, but connected to the lab hosts.

The lab hosts' stand-in nvidia-smi supplies the GPU facts, so `pyinfra tests/dry/prod_on_lab.py deploys/vlm.py
--dry --diff` prints the full production plan (Docker's repository, the NVIDIA toolkit, --gpus, the pinned digest)
without production machines. Group `lab` does not apply here: production defaults stand.
"""

import runpy
from pathlib import Path

from vlmfleet.lab.inventory import groups as _lab_groups

_prod = runpy.run_path(str(Path(__file__).resolve().parents[2] / "inventories/prod.py"))
_lab = _lab_groups()


def _connect(group: str) -> list:
    lab_hosts = _lab.get(group, [])
    return [(name, {**data, **conn}) for (name, data), (_, conn) in zip(_prod[group], lab_hosts)]


qwen7b = _connect("qwen7b")
qwen72b_awq = _connect("qwen72b_awq")
