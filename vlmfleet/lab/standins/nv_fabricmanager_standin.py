#!/usr/bin/python3
"""nv-fabricmanager STAND-IN for vlmfleet lab hosts (there are no NVSwitches, and no kernel module, in the lab).

Shipped as /usr/bin/nv-fabricmanager by the ``nvidia-fabricmanager-<branch>`` packages of the lab's NVIDIA CUDA
repository stand-in (nvidia_repo.py), run by their unit ``nvidia-fabricmanager.service``. Like NVIDIA's fabric
manager it starts only against the loaded kernel module of exactly its own version, on a host with NVSwitches
(gpus.json ``"nvswitches"``, the 8-GPU A100/H100/H200 hosts of the lab layout):

    no module loaded         a stand-in message, exit 1
    module of another version "fabric manager NVIDIA GPU driver interface version 580.95.05 don't match with
                              driver version 590.44.01. Please update with matching NVIDIA driver package.", exit 1
    no NVSwitch              "request to query NVSwitch device information from NVSwitch driver failed with
                              error:WARNING Nothing to do [NV_WARN_NOTHING_TO_DO]", exit 1
    otherwise                writes "Completed" to /run/vlmfleet-lab-standin/fabric-state (nvidia-smi -q's fabric
                              state), and stays running until SIGTERM

Differences: NVIDIA's unit is ``Type=forking`` (through nvidia-fabricmanager-start.sh); this one stays in the
foreground (``Type=simple``); ``-c CONFIG`` is accepted and ignored. Never install this on a real server.

Test hook: VLMFLEET_LAB_STANDIN_ROOT, a folder that stands for / (unset on lab hosts).
"""

import json
import os
import signal
import sys

ROOT = os.environ.get("VLMFLEET_LAB_STANDIN_ROOT", "")
VERSION = ROOT + "/usr/lib/vlmfleet-lab-standin/nvidia/fabricmanager-version"
LOADED = ROOT + "/run/vlmfleet-lab-standin/nvidia-loaded"
STATE = ROOT + "/run/vlmfleet-lab-standin/fabric-state"
CONFIG = ROOT + "/etc/vlmfleet-lab/gpus.json"


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def main(argv):
    mine, loaded = read(VERSION) or "unknown", read(LOADED)
    if not loaded:
        say("fabric manager could not open the NVIDIA GPU driver interface: no NVIDIA kernel module is loaded "
            "(vlmfleet lab stand-in)")
        return 1
    if loaded != mine:
        say(f"fabric manager NVIDIA GPU driver interface version {mine} don't match with driver version {loaded}. "
            "Please update with matching NVIDIA driver package.")
        return 1
    try:
        with open(CONFIG) as fh:
            switches = int(json.load(fh).get("nvswitches", 0))
    except (OSError, ValueError, TypeError):
        switches = 0
    if not switches:
        say("request to query NVSwitch device information from NVSwitch driver failed with error:WARNING Nothing to "
            "do [NV_WARN_NOTHING_TO_DO]")
        return 1
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    with open(STATE, "w") as fh:
        fh.write("Completed\n")
    say(f"Successfully configured all the available GPUs and NVSwitches to route NVLink traffic ({switches} NVSwitches, "
        "vlmfleet lab stand-in)")

    def stop(signum, _frame):
        say(f"fabric manager received signal {signum}, exiting")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
