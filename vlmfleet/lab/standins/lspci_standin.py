#!/usr/bin/python3
"""lspci STAND-IN for vlmfleet lab hosts: the PCI view of GPUs the lab does not have.

Installed by `vlmfleet lab up` as /usr/local/sbin/lspci on each GPU host (ahead of /usr/bin in root's PATH, where
pciutils would put the real one). It lists the NVIDIA functions of /etc/vlmfleet-lab/gpus.json ("pci": the
simulated GPUs and, on 8-GPU A100/H100/H200 hosts, their NVSwitches) in the output formats of pciutils 3.9
(Debian 12's lspci), e.g.

    lspci -Dnmm -d 10de:   0000:17:00.0 "0302" "10de" "2330" -ra1 -p00 "10de" "2330"
    lspci -mm              17:00.0 "3D controller" "NVIDIA Corporation" "GH100 [H100 SXM5 80GB]" -ra1 -p00 ...
    lspci -nn              17:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)
    lspci -n               17:00.0 0302: 10de:2330 (rev a1)

Options: -D (domain), -n / -nn (numbers), -m / -mm (machine readable, the same in 3.9), -d [vendor]:[device][:class] (a filter).
What the stand-in does not know: the host's other PCI devices (only NVIDIA's are listed) and the boards'
subsystem ids (it prints the device's own ids there, as lspci shows a generic subsystem). Anything else exits 2 saying it is a stand-in. Never install this
on a real server.

Test hook: VLMFLEET_LAB_STANDIN_ROOT, a folder that stands for / (unset on lab hosts).
"""

import json
import os
import sys

ROOT = os.environ.get("VLMFLEET_LAB_STANDIN_ROOT", "")
CONFIG = ROOT + "/etc/vlmfleet-lab/gpus.json"
VENDOR, VENDOR_NAME = "10de", "NVIDIA Corporation"
CLASS_NAMES = {"0300": "VGA compatible controller", "0302": "3D controller", "0680": "Bridge"}
#: pci.ids' names of the devices the lab layout uses (vlmfleet/lab/layout.py PCI_DEVICE_NAMES, repeated here
#: because this file runs alone on the hosts)
DEVICE_NAMES = {
    "1eb8": "TU104GL [Tesla T4]", "2236": "GA102GL [A10]", "2237": "GA102GL [A10G]", "27b8": "AD104GL [L4]",
    "2684": "AD102 [GeForce RTX 4090]", "26b9": "AD102GL [L40S]", "20b0": "GA100 [A100 SXM4 40GB]",
    "20b2": "GA100 [A100 SXM4 80GB]", "20f3": "GA100 [A800-SXM4-80GB]", "2330": "GH100 [H100 SXM5 80GB]",
    "2335": "GH100 [H200 SXM 141GB]", "1af1": "GA100 [A100 NVSwitch]", "22a3": "GH100 [H100 NVSwitch]",
}
USAGE = "lspci stand-in (vlmfleet lab): supports -D -n -nn -m -mm -d [vendor]:[device][:class]; got {}"


def parse(argv):
    opts = {"D": False, "n": 0, "m": 0, "d": None}
    args = list(argv)
    while args:
        a = args.pop(0)
        if not a.startswith("-") or a == "-":
            raise ValueError(a)
        letters = a[1:]
        while letters:
            c, letters = letters[0], letters[1:]
            if c == "D":
                opts["D"] = True
            elif c in "nm":
                opts[c] += 1
            elif c == "d":
                value = letters or (args.pop(0) if args else None)
                if value is None:
                    raise ValueError(a)
                opts["d"], letters = value, ""
            else:
                raise ValueError(a)
    return opts


def matches(dev, spec):
    if not spec:
        return True
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise LookupError("lspci: -d: At least two fields must be given")
    vendor, device = parts[0].lower(), parts[1].lower()
    cls = parts[2].lower() if len(parts) == 3 else ""
    return ((not vendor or vendor == VENDOR) and (not device or device == dev["device"])
            and (not cls or dev["class"].startswith(cls)))


def line(dev, opts):
    slot = dev["slot"] if opts["D"] else dev["slot"].split(":", 1)[1]
    cls, device, rev = dev["class"], dev["device"], dev.get("rev", "a1")
    n = opts["n"]
    cname, dname = CLASS_NAMES.get(cls, f"Class {cls}"), DEVICE_NAMES.get(device, f"Device {device}")
    if opts["m"]:  # -m and -mm print the same in pciutils 3.9
        if n == 1:
            names = (cls, VENDOR, device, VENDOR, device)
        else:
            names = (cname, VENDOR_NAME, dname, VENDOR_NAME, dname)
            if n >= 2:
                names = (f"{cname} [{cls}]", f"{VENDOR_NAME} [{VENDOR}]", f"{dname} [{device}]",
                         f"{VENDOR_NAME} [{VENDOR}]", f"{dname} [{device}]")
        c, v, d, sv, sd = (f'"{x}"' for x in names)
        return f"{slot} {c} {v} {d} -r{rev} -p00 {sv} {sd}"
    if n == 1:
        return f"{slot} {cls}: {VENDOR}:{device} (rev {rev})"
    if n >= 2:
        return f"{slot} {cname} [{cls}]: {VENDOR_NAME} {dname} [{VENDOR}:{device}] (rev {rev})"
    return f"{slot} {cname}: {VENDOR_NAME} {dname} (rev {rev})"


def main(argv):
    try:
        opts = parse(argv)
        with open(CONFIG) as fh:
            devices = json.load(fh).get("pci", [])
        out = [line(d, opts) for d in sorted(devices, key=lambda d: d["slot"]) if matches(d, opts["d"])]
    except ValueError:
        print(USAGE.format(argv), file=sys.stderr)
        return 2
    except LookupError as exc:
        print(exc.args[0], file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lspci stand-in (vlmfleet lab): cannot read {CONFIG}: {exc}", file=sys.stderr)
        return 1
    if out:
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
