"""Keep one lab host up across its own reboots, as a server's firmware does: ``python -m vlmfleet.lab.supervise``.

When the systemd inside a lab host reboots, systemd-nspawn exits with status 133 (systemd's own
``systemd-nspawn@.service`` restarts it on that status: ``RestartForceExitStatus=133``). This supervisor does the
same for the lab: it starts nspawn again with the same root, network namespace (so the same address) and cgroup,
and counts the boots. Any other exit — a poweroff, ``vlmfleet lab down`` (SIGTERM, forwarded to nspawn) — ends it.

Each boot runs in a fresh time namespace whose boot clock starts at zero (``unshare --time --boottime``), so the
host's ``/proc/uptime`` restarts as a rebooted server's does — pyinfra's ``server.reboot`` waits for exactly that.

    python -m vlmfleet.lab.supervise --boots FILE --cgroup DIR [--cgroup DIR] -- systemd-nspawn ARGS...
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container's systemd rebooted


def uptime_s() -> int:
    with open("/proc/uptime") as fh:
        return int(float(fh.read().split()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmfleet.lab.supervise")
    parser.add_argument("--boots", required=True, help="file counting the host's boots (1 after the first)")
    parser.add_argument("--cgroup", action="append", default=[], help="cgroup folder each boot's nspawn enters")
    parser.add_argument("nspawn", nargs=argparse.REMAINDER, help="-- systemd-nspawn and its arguments")
    args = parser.parse_args(argv)
    nspawn = args.nspawn[1:] if args.nspawn[:1] == ["--"] else args.nspawn
    if not nspawn:
        parser.error("give the systemd-nspawn command after --")
    state = {"stopping": False, "child": None}

    def forward(signum, _frame) -> None:
        state["stopping"] = True
        child = state["child"]
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def enter_cgroup() -> None:  # in the child, between fork and exec
        for cg in args.cgroup:
            Path(cg, "cgroup.procs").write_text(str(os.getpid()))

    boots = 0
    while not state["stopping"]:
        boots += 1
        Path(args.boots).write_text(f"{boots}\n")
        argv_ = ["unshare", "--time", f"--boottime=-{uptime_s()}", *nspawn]
        state["child"] = subprocess.Popen(argv_, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL)
        if state["stopping"]:  # the signal came while it started: it gets it now
            state["child"].send_signal(signal.SIGTERM)
        rc = state["child"].wait()
        if state["stopping"] or rc != REBOOT_STATUS:
            print(f"vlmfleet lab supervisor: systemd-nspawn exited with {rc} after boot {boots}; not restarting",
                  flush=True)
            return 0 if state["stopping"] else (rc if rc >= 0 else 128 - rc)
        print(f"vlmfleet lab supervisor: the host rebooted (nspawn exit {rc}); boot {boots + 1}", flush=True)
        time.sleep(0.5)  # nspawn's own teardown of the previous boot's mounts
    return 0  # stopped between two boots


if __name__ == "__main__":
    sys.exit(main())
