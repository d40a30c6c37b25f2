#!/usr/bin/python3
"""nvidia-smi STAND-IN for vlmfleet lab hosts (there is no GPU in the lab).

Installed by `vlmfleet lab up` as /usr/bin/nvidia-smi on each lab host (except hosts laid out ``bare``), and by
the ``nvidia-driver-cuda`` package of the lab's NVIDIA CUDA repository stand-in (nvidia_repo.py). It prints the
GPU inventory configured in /etc/vlmfleet-lab/gpus.json in the formats of the real nvidia-smi that vlmfleet reads:

    nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id --format=csv,noheader,nounits
    nvidia-smi topo -m
    nvidia-smi -L
    nvidia-smi -q         (the GPU attributes vlmfleet reads: product, PCI, memory, the NVLink fabric's state)
    nvidia-smi            (a summary table)

Module mode: when the driver package installed it (``/usr/lib/vlmfleet-lab-standin/nvidia/userspace-version``
exists), it answers as the real one does against the kernel module, which the lab "loads" at boot
(``/run/vlmfleet-lab-standin/nvidia-loaded``, written by the package's unit, gone at the next reboot):

    no module loaded          "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. ..."
                              exit 9 (NVML_ERROR_DRIVER_NOT_LOADED)
    module != this library    "Failed to initialize NVML: Driver/library version mismatch" and
                              "NVML library version: 590.44", exit 18 (NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    otherwise                 driver_version is the loaded module's version

Without that file it reports gpus.json's "driver" (the hosts `lab up` gives a driver). The fabric state of an
NVSwitch host (gpus.json "nvswitches") is "Completed" once the fabric manager stand-in wrote
/run/vlmfleet-lab-standin/fabric-state. Anything else exits 2 saying it is a stand-in. Never install this on a
real server.

Test hook: VLMFLEET_LAB_STANDIN_ROOT, a folder that stands for / (unset on lab hosts).
"""

import json
import os
import sys
import time

ROOT = os.environ.get("VLMFLEET_LAB_STANDIN_ROOT", "")
CONFIG = ROOT + "/etc/vlmfleet-lab/gpus.json"
USERSPACE = ROOT + "/usr/lib/vlmfleet-lab-standin/nvidia/userspace-version"
LOADED = ROOT + "/run/vlmfleet-lab-standin/nvidia-loaded"
FABRIC = ROOT + "/run/vlmfleet-lab-standin/fabric-state"
#: the CUDA version each driver branch reports
CUDA_OF_BRANCH = {"580": "13.0", "590": "13.1"}

NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
             "latest NVIDIA driver is installed and running.")


def load():
    with open(CONFIG) as fh:
        return json.load(fh)


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


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
        "pci.bus_id": bus_id(i),
        "uuid": uuid(i),
        "utilization.gpu": "0" if not units else "0 %",
    }
    if name not in values:
        raise KeyError(name)
    return values[name]


def bus_id(i):
    return f"00000000:{0x17 + i:02X}:00.0"


def uuid(i):
    return f"GPU-5ta0d1n0-0000-4000-8000-{i:012d}"


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


def _kv(indent, key, value):
    """One line of -q's layout: the key padded so that every colon sits in column 43."""
    return f"{' ' * indent}{key:<{42 - indent}}: {value}"


def fabric(cfg):
    """(state, status) of the NVLink fabric as -q prints it: N/A without NVSwitches; on an NVSwitch host
    "In Progress" until the fabric manager has configured the switches."""
    if not cfg.get("nvswitches"):
        return "N/A", "N/A"
    if read(FABRIC) == "Completed":
        return "Completed", "Success"
    return "In Progress", "N/A"


def full_query(cfg):
    """``nvidia-smi -q``, the attributes vlmfleet reads."""
    devices = {d["slot"]: d for d in cfg.get("pci", [])}
    state, status = fabric(cfg)
    out = ["", "==============NVSMI LOG==============", "",
           _kv(0, "Timestamp", time.strftime("%a %b %d %H:%M:%S %Y")),
           _kv(0, "Driver Version", cfg["driver"]), _kv(0, "CUDA Version", cfg["cuda"]), "",
           _kv(0, "Attached GPUs", len(cfg["gpus"]))]
    for i, gpu in enumerate(cfg["gpus"]):
        bus = 0x17 + i
        device = devices.get(f"0000:{bus:02x}:00.0", {}).get("device", "0000")
        out += [f"GPU {bus_id(i)}",
                _kv(4, "Product Name", gpu["name"]),
                _kv(4, "GPU UUID", uuid(i)),
                "    PCI",
                _kv(8, "Bus", f"0x{bus:02X}"), _kv(8, "Device", "0x00"), _kv(8, "Domain", "0x0000"),
                _kv(8, "Device Id", f"0x{device.upper()}10DE"), _kv(8, "Bus Id", bus_id(i)),
                "    FB Memory Usage",
                _kv(8, "Total", f"{gpu['memory_mib']} MiB"), _kv(8, "Used", "0 MiB"),
                _kv(8, "Free", f"{gpu['memory_mib']} MiB"),
                "    Fabric",
                _kv(8, "State", state), _kv(8, "Status", status),
                ""]
    print("\n".join(out))
    return 0


def driver_check(cfg):
    """Module mode (the driver package is installed): None when the loaded module answers, else the exit code
    after printing the real tool's message; cfg's driver and CUDA versions become the loaded module's."""
    userspace = read(USERSPACE)
    if userspace is None:
        return None
    loaded = read(LOADED)
    if not loaded:
        print(NO_DRIVER)
        return 9
    if loaded != userspace:
        print("Failed to initialize NVML: Driver/library version mismatch")
        print("NVML library version: " + ".".join(userspace.split(".")[:2]))
        return 18
    cfg["driver"] = loaded
    cfg["cuda"] = CUDA_OF_BRANCH.get(loaded.split(".")[0], cfg.get("cuda", ""))
    return None


def main(argv):
    try:
        cfg = load()
    except (OSError, ValueError) as exc:
        if read(USERSPACE) is not None and not read(LOADED):
            print(NO_DRIVER)
        else:
            print(f"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver (stand-in: {exc})",
                  file=sys.stderr)
        return 9
    failed = driver_check(cfg)
    if failed is not None:
        return failed
    if any(a.startswith("--query-gpu=") for a in argv):
        return query(cfg, argv)
    if argv[:2] == ["topo", "-m"]:
        return topo(cfg)
    if argv == ["-L"]:
        for i, gpu in enumerate(cfg["gpus"]):
            print(f"GPU {i}: {gpu['name']} (UUID: {uuid(i)})")
        return 0
    if argv in (["-q"], ["--query"]):
        return full_query(cfg)
    if not argv:
        return table(cfg)
    print(f"nvidia-smi stand-in (vlmfleet lab): unsupported arguments {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
