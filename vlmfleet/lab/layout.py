"""Which simulated GPUs and which profile group each lab host gets.

Default, for 3 hosts: h1 2xA10 and h2 1xL40S serve the qwen7b profile, h3 4xA100-40 serves qwen72b_awq; further
hosts are 2xA10 qwen7b hosts. VLMFLEET_LAB_GPUS overrides per host, e.g. ``h1=8xT4:qwen72b_awq,h2=1xH100``; a
third field holds flags joined by ``+``: ``bare`` is a host with the GPU hardware (gpus.json, the lspci stand-in)
but no NVIDIA driver, the state of a freshly installed server (``h4=8xH100:qwen7b:bare``; ``h4=8xH100::bare`` keeps
the default group).
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
FLAGS = ("bare",)

#: PCI device id (vendor 10de) of each catalog GPU, the SXM part where there is one (checked against pci.ids,
#: the PCI ID Repository's list, 2026-05). Kept to {catalog id: device id} so that the catalog can own it later.
PCI_DEVICE_IDS = {
    "T4": "1eb8",  # TU104GL [Tesla T4]
    "A10": "2236",  # GA102GL [A10]
    "A10G": "2237",  # GA102GL [A10G]
    "L4": "27b8",  # AD104GL [L4]
    "RTX4090": "2684",  # AD102 [GeForce RTX 4090]
    "L40S": "26b9",  # AD102GL [L40S]
    "A100-40": "20b0",  # GA100 [A100 SXM4 40GB]
    "A100-80": "20b2",  # GA100 [A100 SXM4 80GB]
    "A800-80": "20f3",  # GA100 [A800-SXM4-80GB]
    "H100": "2330",  # GH100 [H100 SXM5 80GB]
    "H200": "2335",  # GH100 [H200 SXM 141GB]
}
#: pci.ids' names of those devices, as lspci prints them
PCI_DEVICE_NAMES = {
    "1eb8": "TU104GL [Tesla T4]", "2236": "GA102GL [A10]", "2237": "GA102GL [A10G]", "27b8": "AD104GL [L4]",
    "2684": "AD102 [GeForce RTX 4090]", "26b9": "AD102GL [L40S]", "20b0": "GA100 [A100 SXM4 40GB]",
    "20b2": "GA100 [A100 SXM4 80GB]", "20f3": "GA100 [A800-SXM4-80GB]", "2330": "GH100 [H100 SXM5 80GB]",
    "2335": "GH100 [H200 SXM 141GB]", "1af1": "GA100 [A100 NVSwitch]", "22a3": "GH100 [H100 NVSwitch]",
}
#: the NVSwitches of an 8-GPU HGX baseboard, by GPU: (count, device id). A100 (and A800): six 2nd-generation
#: switches; H100 and H200: four 3rd-generation ones (NVIDIA's Fabric Manager user guide). Other GPUs: none.
NVSWITCHES = {"A100-40": (6, "1af1"), "A100-80": (6, "1af1"), "A800-80": (6, "1af1"),
              "H100": (4, "22a3"), "H200": (4, "22a3")}
#: PCI classes: a data-centre GPU is a "3D controller", a GeForce card a "VGA compatible controller", an
#: NVSwitch a "Bridge"
CLASS_3D, CLASS_VGA, CLASS_BRIDGE = "0302", "0300", "0680"


@dataclass(frozen=True)
class HostLayout:
    gpus: str  # spec, e.g. "2xA10"
    group: str  # inventory group = profile, e.g. "qwen7b"
    bare: bool = False  # the hardware without a driver: no nvidia-smi until the driver stage installs one


def layout(index: int, environ: dict[str, str] | None = None) -> HostLayout:
    env = os.environ if environ is None else environ
    overrides = {}
    for item in filter(None, (env.get("VLMFLEET_LAB_GPUS") or "").split(",")):
        name, _, rest = item.partition("=")
        spec, _, rest = rest.partition(":")
        group, _, flags = rest.partition(":")
        if not name.startswith("h") or not spec.strip() or ":" in flags:
            raise LabError(f"VLMFLEET_LAB_GPUS item {item!r} is not hN=COUNTxKIND[:group[:flags]]")
        wanted = [f.strip() for f in flags.split("+") if f.strip()]
        unknown = [f for f in wanted if f not in FLAGS]
        if unknown:
            raise LabError(f"VLMFLEET_LAB_GPUS item {item!r} has unknown flag {unknown[0]!r}; known: "
                           f"{', '.join(FLAGS)} (joined by '+')")
        overrides[name.strip()] = (spec.strip(), group.strip() or None, "bare" in wanted)
    spec, group = DEFAULT.get(index, FALLBACK)
    bare = False
    if f"h{index}" in overrides:
        o_spec, o_group, bare = overrides[f"h{index}"]
        spec, group = o_spec, o_group or group
    return HostLayout(spec, group, bare)


def _parse(spec: str):
    count_s, _, kind_s = spec.partition("x")
    try:
        kind = gpu_kind(kind_s)
        count = int(count_s)
    except (CatalogError, ValueError) as exc:
        raise LabError(f"lab GPU spec {spec!r} is not COUNTxKIND with a catalog GPU ({exc})") from exc
    return count, kind


def pci_devices(spec: str) -> list[dict]:
    """The NVIDIA PCI functions of a spec, as the lspci stand-in lists them: GPU i at bus 0x17+i (the bus id the
    nvidia-smi stand-in reports), an 8-GPU A100/A800/H100/H200 box's NVSwitches at buses 0x05.. ."""
    count, kind = _parse(spec)
    device = PCI_DEVICE_IDS[kind.id]
    cls = CLASS_VGA if kind.id == "RTX4090" else CLASS_3D
    out = [{"slot": f"0000:{0x17 + i:02x}:00.0", "class": cls, "device": device, "rev": "a1"} for i in range(count)]
    switches, switch_id = NVSWITCHES.get(kind.id, (0, None)) if count == 8 else (0, None)
    out += [{"slot": f"0000:{0x05 + j:02x}:00.0", "class": CLASS_BRIDGE, "device": switch_id, "rev": "a1"}
            for j in range(switches)]
    return sorted(out, key=lambda d: d["slot"])


def gpus_json(spec: str) -> str:
    """The stand-ins' configuration for a spec like 4xA100-40: the GPUs (nvidia-smi), their PCI functions (lspci)
    and the number of NVSwitches (the fabric manager and nvidia-smi -q)."""
    count, kind = _parse(spec)
    names = {"T4": "Tesla T4", "A10": "NVIDIA A10", "A10G": "NVIDIA A10G", "L4": "NVIDIA L4", "L40S": "NVIDIA L40S",
             "A100-40": "NVIDIA A100-SXM4-40GB", "A100-80": "NVIDIA A100-SXM4-80GB", "H100": "NVIDIA H100 80GB HBM3",
             "H200": "NVIDIA H200", "A800-80": "NVIDIA A800-SXM4-80GB", "RTX4090": "NVIDIA GeForce RTX 4090"}
    gpus = [{"name": names[kind.id], "memory_mib": kind.memory_mib, "cc": kind.cc} for _ in range(count)]
    pci = pci_devices(spec)
    nvswitches = sum(d["class"] == CLASS_BRIDGE for d in pci)
    return json.dumps({"driver": DRIVER, "cuda": CUDA, "topology": kind.interconnect, "gpus": gpus,
                       "nvswitches": nvswitches, "pci": pci}, indent=1) + "\n"
