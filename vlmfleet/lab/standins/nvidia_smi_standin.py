#!/usr/bin/python3
"""nvidia-smi STAND-IN for vlmfleet lab hosts (there is no GPU in the lab).

Installed by `vlmfleet lab up` as /usr/bin/nvidia-smi on each lab host. It prints the GPU inventory configured in
/etc/vlmfleet-lab/gpus.json in the formats of the real nvidia-smi that vlmfleet reads:

    nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id --format=csv,noheader,nounits
    nvidia-smi topo -m
    nvidia-smi -L
    nvidia-smi            (a summary table)

Anything else exits 2 saying it is a stand-in. Never install this on a real server.
"""

import json
import sys

CONFIG = "/etc/vlmfleet-lab/gpus.json"


def load():
    with open(CONFIG) as fh:
        return json.load(fh)


def field(cfg, i, gpu, name, units):
    mib = gpu["memory_mib"]
    values = {
        "index": str(i),
        "name": gpu["name"],
        "memory.total": f"{mib}" if not units else f"{mib} MiB",
        "memory.used": "0" if not units else "0 MiB",
        "memory.free": f"{mib}" if not units else f"{mib} MiB",
        "compute_cap": gpu["cc"],
        "driver_version": cfg["driver"],
        "pci.bus_id": f"00000000:{0x17 + i:02X}:00.0",
        "uuid": f"GPU-5ta0d1n0-0000-4000-8000-{i:012d}",
        "utilization.gpu": "0" if not units else "0 %",
    }
    if name not in values:
        raise KeyError(name)
    return values[name]


HEADERS = {"memory.total": "memory.total [MiB]", "memory.used": "memory.used [MiB]",
           "memory.free": "memory.free [MiB]", "utilization.gpu": "utilization.gpu [%]"}


def query(cfg, args):
    fields, fmt = None, "csv"
    for a in args:
        if a.startswith("--query-gpu="):
            fields = a.split("=", 1)[1].split(",")
        elif a.startswith("--format="):
            fmt = a.split("=", 1)[1]
    opts = set(fmt.split(","))
    units = "nounits" not in opts
    out = []
    if "noheader" not in opts:
        out.append(", ".join(HEADERS.get(f, f) if units else f for f in fields))
    for i, gpu in enumerate(cfg["gpus"]):
        try:
            out.append(", ".join(field(cfg, i, gpu, f, units) for f in fields))
        except KeyError as exc:
            print(f'Field "{exc.args[0]}" is not a valid field to query (nvidia-smi stand-in).', file=sys.stderr)
            return 2
    print("\n".join(out))
    return 0


def topo(cfg):
    n = len(cfg["gpus"])
    link = "NV12" if cfg.get("topology") == "nvlink" else "PHB"
    names = [f"GPU{i}" for i in range(n)]
    print("\t" + "\t".join(names) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID")
    for i in range(n):
        cells = [" X " if j == i else link for j in range(n)]
        print(f"GPU{i}\t" + "\t".join(cells) + "\t0-15\t0\t\tN/A")
    print("\nLegend:\n\n  X    = Self\n  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)"
          "\n  NV#  = Connection traversing a bonded set of # NVLinks")
    return 0


def table(cfg):
    print(f"| NVIDIA-SMI stand-in (vlmfleet lab)   Driver Version: {cfg['driver']}   CUDA Version: {cfg['cuda']} |")
    for i, gpu in enumerate(cfg["gpus"]):
        print(f"|   {i}  {gpu['name']:<28} | 0MiB / {gpu['memory_mib']}MiB |")
    return 0


def main(argv):
    try:
        cfg = load()
    except (OSError, ValueError) as exc:
        print(f"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver (stand-in: {exc})",
              file=sys.stderr)
        return 9
    if any(a.startswith("--query-gpu=") for a in argv):
        return query(cfg, argv)
    if argv[:2] == ["topo", "-m"]:
        return topo(cfg)
    if argv == ["-L"]:
        for i, gpu in enumerate(cfg["gpus"]):
            print(f"GPU {i}: {gpu['name']} (UUID: GPU-5ta0d1n0-0000-4000-8000-{i:012d})")
        return 0
    if not argv:
        return table(cfg)
    print(f"nvidia-smi stand-in (vlmfleet lab): unsupported arguments {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
