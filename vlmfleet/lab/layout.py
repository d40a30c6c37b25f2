"""Which simulated GPUs and which profile group each lab host gets.

Default, for 3 hosts: h1 2xA10 and h2 1xL40S serve the qwen7b profile, h3 4xA100-40 serves qwen72b_awq; further
hosts are 2xA10 qwen7b hosts. VLMFLEET_LAB_GPUS overrides per host, e.g. ``h1=8xT4:qwen72b_awq,h2=1xH100``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..catalog import CatalogError, gpu_kind
from .errors import LabError

DEFAULT = {1: ("2xA10", "qwen7b"), 2: ("1xL40S", "qwen7b"), 3: ("4xA100-40", "qwen72b_awq")}
FALLBACK = ("2xA10", "qwen7b")
#: the driver the stand-in reports: new enough for both catalog images (0.33.0 needs >= 580.65)
DRIVER, CUDA = "580.95.05", "13.0"


@dataclass(frozen=True)
class HostLayout:
    gpus: str  # spec, e.g. "2xA10"
    group: str  # inventory group = profile, e.g. "qwen7b"


def layout(index: int, environ: dict[str, str] | None = None) -> HostLayout:
    env = os.environ if environ is None else environ
    overrides = {}
    for item in filter(None, (env.get("VLMFLEET_LAB_GPUS") or "").split(",")):
        name, _, rest = item.partition("=")
        spec, _, group = rest.partition(":")
        if not name.startswith("h") or not spec:
            raise LabError(f"VLMFLEET_LAB_GPUS item {item!r} is not hN=COUNTxKIND[:group]")
        overrides[name.strip()] = (spec.strip(), group.strip() or None)
    spec, group = DEFAULT.get(index, FALLBACK)
    if f"h{index}" in overrides:
        o_spec, o_group = overrides[f"h{index}"]
        spec, group = o_spec, o_group or group
    return HostLayout(spec, group)


def gpus_json(spec: str) -> str:
    """The stand-in nvidia-smi's configuration for a spec like 4xA100-40."""
    count_s, _, kind_s = spec.partition("x")
    try:
        kind = gpu_kind(kind_s)
        count = int(count_s)
    except (CatalogError, ValueError) as exc:
        raise LabError(f"lab GPU spec {spec!r} is not COUNTxKIND with a catalog GPU ({exc})") from exc
    names = {"T4": "Tesla T4", "A10": "NVIDIA A10", "A10G": "NVIDIA A10G", "L4": "NVIDIA L4", "L40S": "NVIDIA L40S",
             "A100-40": "NVIDIA A100-SXM4-40GB", "A100-80": "NVIDIA A100-SXM4-80GB", "H100": "NVIDIA H100 80GB HBM3",
             "H200": "NVIDIA H200"}
    gpus = [{"name": names[kind.id], "memory_mib": kind.memory_mib, "cc": kind.cc} for _ in range(count)]
    return json.dumps({"driver": DRIVER, "cuda": CUDA, "topology": kind.interconnect, "gpus": gpus}, indent=1) + "\n"
