#!/usr/bin/python3
"""nvidia-persistenced STAND-IN for vlmfleet lab hosts (there is no GPU, and no kernel module, in the lab).

Shipped as /usr/bin/nvidia-persistenced by the ``nvidia-persistenced`` package of the lab's NVIDIA CUDA
repository stand-in (nvidia_repo.py), with the unit ``nvidia-persistenced.service``. Like the real daemon it
needs the NVIDIA kernel module, which the lab "loads" at boot (/run/vlmfleet-lab-standin/nvidia-loaded):

    no module loaded               "Failed to query NVIDIA devices. ..." and "nvidia-persistenced failed to
                                   initialize. Check syslog for more details.", exit 1
    module not this package's      the kernel's "NVRM: API mismatch: ..." and the same failure, exit 1
    otherwise                      "device <bus id> - registered" per GPU of /etc/vlmfleet-lab/gpus.json, then it
                                   stays running until SIGTERM ("Shutdown (<pid>)", exit 0)

Like the real daemon it forks once it has initialised (``Type=forking`` units, as NVIDIA's and vlmfleet's): the
parent exits 0, the daemon writes /var/run/nvidia-persistenced/nvidia-persistenced.pid. Messages go to stderr (the
journal), not to syslog. Options (``--verbose``, ``--user NAME``, ``--persistence-mode``) are accepted and ignored.
Never install this on a real server.

Test hook: VLMFLEET_LAB_STANDIN_ROOT, a folder that stands for / (unset on lab hosts).
"""

import json
import os
import signal
import sys

ROOT = os.environ.get("VLMFLEET_LAB_STANDIN_ROOT", "")
VERSION = ROOT + "/usr/lib/vlmfleet-lab-standin/nvidia/persistenced-version"
LOADED = ROOT + "/run/vlmfleet-lab-standin/nvidia-loaded"
CONFIG = ROOT + "/etc/vlmfleet-lab/gpus.json"


def read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def fail(uid):
    say(f"Failed to query NVIDIA devices. Please ensure that the NVIDIA device files (/dev/nvidia*) exist, and that "
        f"user {uid} has read and write permissions for those files.")
    say("nvidia-persistenced failed to initialize. Check syslog for more details.")
    return 1


def main(argv):
    mine, loaded = read(VERSION), read(LOADED)
    if not loaded:
        return fail(os.getuid())
    if mine and loaded != mine:
        say(f"NVRM: API mismatch: the client has the version {mine}, but this kernel module has the version "
            f"{loaded}.  Please make sure that this kernel module and all NVIDIA driver components have the same "
            "version.")
        return fail(os.getuid())
    try:
        with open(CONFIG) as fh:
            gpus = json.load(fh)["gpus"]
    except (OSError, ValueError, KeyError):
        gpus = []
    say("Verbose syslog connection opened")
    say(f"Started ({os.getpid()})")
    for i in range(len(gpus)):
        say(f"device 0000:{0x17 + i:02x}:00.0 - registered")

    if os.fork():  # the parent: initialised, the daemon runs on (systemd's Type=forking waits for this exit)
        return 0
    os.setsid()
    piddir = ROOT + "/var/run/nvidia-persistenced"
    os.makedirs(piddir, exist_ok=True)
    with open(piddir + "/nvidia-persistenced.pid", "w") as fh:
        fh.write(f"{os.getpid()}\n")

    def stop(signum, _frame):
        say(f"Received signal {signum}")
        say(f"Shutdown ({os.getpid()})")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
