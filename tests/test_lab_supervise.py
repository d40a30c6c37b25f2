"""The lab's host supervisor (vlmfleet.lab.supervise), run for real with a stand-in for systemd-nspawn: a host
that "reboots" (exit 133) is started again, each boot with its boot clock at zero (what pyinfra's reboot waits
for); any other exit or a SIGTERM ends it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unshare --time needs root (CI runs as root)")

FAKE = """import sys, time
from pathlib import Path
runs = Path(sys.argv[1])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
Path(sys.argv[1] + f".uptime{n}").write_text(open("/proc/uptime").read().split()[0])
if sys.argv[2] == "sleep":
    time.sleep(60)
sys.exit(133 if n < int(sys.argv[2]) else 0)
"""


def supervise(tmp_path, *fake_args):
    fake = tmp_path / "fake_nspawn.py"
    fake.write_text(FAKE)
    return subprocess.Popen([sys.executable, "-m", "vlmfleet.lab.supervise", "--boots", str(tmp_path / "boots"), "--",
                             sys.executable, str(fake), str(tmp_path / "runs"), *fake_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_reboot_starts_the_host_again_with_its_clock_at_zero(tmp_path):
    proc = supervise(tmp_path, "3")  # two reboots, then a poweroff
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert (tmp_path / "boots").read_text() == "3\n"
    host_uptime = float(open("/proc/uptime").read().split()[0])
    for n in (1, 2, 3):
        assert float((tmp_path / f"runs.uptime{n}").read_text()) < 5 < host_uptime
    assert out.count("the host rebooted (nspawn exit 133)") == 2
    assert "exited with 0 after boot 3; not restarting" in out


def test_sigterm_is_forwarded_and_ends_it(tmp_path):
    proc = supervise(tmp_path, "sleep")
    for _ in range(100):
        if (tmp_path / "runs").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out  # stopped on request
    assert (tmp_path / "boots").read_text() == "1\n"
    assert "systemd-nspawn exited with -15 after boot 1; not restarting" in out  # the forwarded signal ended it
