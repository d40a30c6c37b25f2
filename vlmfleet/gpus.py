"""GPU inventories: from a spec like ``4xT4``, or from what ``nvidia-smi`` prints on a host.

Pure Python; the preflight stage runs the commands below on each host and hands their output here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .catalog import CatalogError, GpuKind, gpu_kind

#: The query preflight runs; the parser below reads exactly these columns, in this order.
NVIDIA_SMI_QUERY = (
    "nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id "
    "--format=csv,noheader,nounits"
)
NVIDIA_SMI_TOPO = "nvidia-smi topo -m"

INTERCONNECTS = ("nvlink", "pcie", "pcie_no_p2p")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str  # nvidia-smi's name, or the catalog id for a spec
    memory_mib: int
    cc: str
    kind: GpuKind
    driver: str | None = None
    bus_id: str | None = None


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    interconnect: str  # nvlink | pcie | pcie_no_p2p
    source: str  # "spec 4xT4" or "nvidia-smi"

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def kind(self) -> GpuKind:
        return self.gpus[0].kind

    @property
    def memory_mib(self) -> int:
        """The smallest GPU's memory: tensor parallel ranks are sized by the smallest."""
        return min(g.memory_mib for g in self.gpus)

    @property
    def driver(self) -> str | None:
        return self.gpus[0].driver

    def describe(self) -> str:
        return f"{self.count}x{self.kind.id} ({self.memory_mib} MiB each, cc {self.kind.cc}, {self.interconnect})"


class InventoryError(ValueError):
    """A GPU spec or nvidia-smi output that cannot be used; the message says what to do."""


SPEC = re.compile(r"^\s*(?:(?P<count>\d+)\s*[x×*]\s*)?(?P<kind>[A-Za-z0-9][A-Za-z0-9 _.-]*?)\s*$")


def parse_spec(spec: str, interconnect: str | None = None) -> Inventory:
    """``4xT4``, ``8xA100-40``, ``2 x A10``, ``H100`` (one GPU) → an Inventory with catalog memory sizes.

    + interconnect: override the GPU kind's usual interconnect (nvlink | pcie | pcie_no_p2p)
    """
    m = SPEC.match(spec or "")
    if not m:
        raise InventoryError(f"GPU spec {spec!r} is not COUNTxKIND (e.g. 4xT4, 8xA100-40)")
    count = int(m["count"] or 1)
    if not 1 <= count <= 16:
        raise InventoryError(f"GPU spec {spec!r}: count must be 1-16")
    try:
        kind = gpu_kind(m["kind"])
    except CatalogError as exc:
        raise InventoryError(f"GPU spec {spec!r}: {exc}") from exc
    gpus = tuple(Gpu(i, kind.id, kind.memory_mib, kind.cc, kind) for i in range(count))
    return Inventory(gpus, _interconnect(interconnect, kind, count), f"spec {spec.strip()}")


def _interconnect(value: str | None, kind: GpuKind, count: int) -> str:
    if value is None:
        return kind.interconnect
    if value not in INTERCONNECTS:
        raise InventoryError(f"interconnect {value!r} is not one of {', '.join(INTERCONNECTS)}")
    return value


def parse_nvidia_smi(csv_text: str, topo_text: str | None = None, interconnect: str | None = None) -> Inventory:
    """Parse the output of NVIDIA_SMI_QUERY (and optionally NVIDIA_SMI_TOPO) into an Inventory.

    + csv_text: e.g. ``0, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.159.04, 00000000:0F:00.0``
    + topo_text: ``nvidia-smi topo -m``; NV# links between GPUs mean nvlink
    + interconnect: an explicit override (host data), wins over topo and catalog
    """
    gpus = []
    for n, line in enumerate(l for l in csv_text.splitlines() if l.strip()):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 5:
            raise InventoryError(
                f"nvidia-smi line {n + 1} has {len(cols)} columns, expected index, name, memory.total, compute_cap, "
                f"driver_version[, pci.bus_id]: {line.strip()!r}"
            )
        try:
            index, memory = int(cols[0]), int(float(cols[2]))
        except ValueError as exc:
            hint = (" (saved with units: query with --format=csv,noheader,nounits)" if "MiB" in line or "index" in line
                    else "")
            raise InventoryError(f"nvidia-smi line {n + 1}: index/memory not numeric: {line.strip()!r}{hint}") from exc
        try:
            kind = gpu_kind(cols[1])
        except CatalogError as exc:
            raise InventoryError(f"nvidia-smi reports {cols[1]!r}, which is not in the GPU catalog (vlmfleet/catalog/gpus.yaml); add it there") from exc
        cc = cols[3] if re.fullmatch(r"\d+\.\d+", cols[3]) else kind.cc
        gpus.append(Gpu(index, cols[1], memory, cc, kind, driver=cols[4], bus_id=cols[5] if len(cols) > 5 else None))
    if not gpus:
        raise InventoryError("nvidia-smi listed no GPUs")
    indices = [g.index for g in gpus]
    if len(set(indices)) != len(indices):
        raise InventoryError(f"nvidia-smi lists GPU index {sorted(i for i in set(indices) if indices.count(i) > 1)} "
                             "more than once")
    kinds = {g.kind.id for g in gpus}
    if len(kinds) > 1:
        raise InventoryError(f"mixed GPU kinds on one host ({', '.join(sorted(kinds))}); give the service a gpu_devices list of one kind")
    kind = gpus[0].kind
    link = interconnect
    if link is None and topo_text and len(gpus) > 1:
        link = "nvlink" if topo_has_nvlink(topo_text) else None
    return Inventory(tuple(gpus), _interconnect(link, kind, len(gpus)), "nvidia-smi")


def parse_pci_gpus(devices, interconnect: str | None = None) -> Inventory:
    """An Inventory from the PCI bus (``vlmfleet.driver.parse_pci``) of a host whose driver is not there yet: each
    GPU's kind by its PCI device id (the catalog's ``pci_ids``), with the catalog's memory — nvidia-smi's numbers
    replace them once the driver answers.

    + devices: e.g. ``(PciDevice("0000:17:00.0", "0302", "2330"), ...)``
    + interconnect: the host's gpu_interconnect data; else NVSwitches on the bus mean nvlink, else the kind's usual
    """
    from .catalog import gpu_kinds

    by_id = {pid: k for k in gpu_kinds().values() for pid in k.pci_ids}
    gpus = []
    for i, d in enumerate(sorted((d for d in devices if d.is_gpu), key=lambda d: d.slot)):
        kind = by_id.get(d.device)
        if kind is None:
            raise InventoryError(f"PCI device 10de:{d.device} at {d.slot} is a GPU the catalog has no pci_ids entry "
                                 "for (vlmfleet/catalog/gpus.yaml); add it there, or install the driver so that "
                                 "nvidia-smi names it")
        gpus.append(Gpu(i, kind.id, kind.memory_mib, kind.cc, kind, bus_id=d.slot))
    if not gpus:
        raise InventoryError("the PCI bus shows no NVIDIA GPU")
    kinds = {g.kind.id for g in gpus}
    if len(kinds) > 1:
        raise InventoryError(f"mixed GPU kinds on one host ({', '.join(sorted(kinds))})")
    link = interconnect or ("nvlink" if any(d.is_nvswitch for d in devices) and len(gpus) > 1 else None)
    return Inventory(tuple(gpus), _interconnect(link, gpus[0].kind, len(gpus)), "PCI bus")


def topo_has_nvlink(topo_text: str) -> bool:
    """True when the GPU rows of ``nvidia-smi topo -m`` show NV# links between GPUs."""
    rows = [l for l in topo_text.splitlines() if re.match(r"^\s*GPU\d+\s", l)]
    return any(re.search(r"\bNV\d+\b", r) for r in rows)
