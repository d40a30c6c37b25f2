"""Shared fixtures. The lab tier (`-m lab`) starts the lab itself when it is not up, and fails when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VLMFLEET = [sys.executable, "-m", "vlmfleet.cli"]
PYINFRA = [str(Path(sys.executable).parent / "pyinfra")]


@pytest.fixture(scope="session")
def lab_cfg():
    from vlmfleet.lab import LabConfig

    return LabConfig.from_env()


@pytest.fixture(scope="session")
def lab(lab_cfg):
    """A running lab of (at least) 3 hosts: started here when needed; a lab that cannot start fails the test."""
    if os.geteuid() != 0:
        pytest.fail("the lab tier needs root (it starts systemd-nspawn hosts); run `make test` as root")
    proc = subprocess.run([*VLMFLEET, "lab", "up", "--hosts", "3"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"`vlmfleet lab up` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    from vlmfleet.lab.inventory import load

    return load(lab_cfg)


def recreate_lab(lab_cfg) -> dict:
    """Freshly installed hosts: `lab down` then `lab up --hosts 3`; returns the new inventory data."""
    for action in (["down"], ["up", "--hosts", "3"]):
        proc = subprocess.run([*VLMFLEET, "lab", *action], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
    from vlmfleet.lab.inventory import load

    return load(lab_cfg)


def run_pyinfra(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real pyinfra CLI from the repository root (where group_data/ lives)."""
    proc = subprocess.run([*PYINFRA, *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYINFRA_PROGRESS="off", COLUMNS="200"))
    if check and proc.returncode != 0:
        raise AssertionError(f"pyinfra {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def pytest_terminal_summary(terminalreporter):
    """Say how many lab-tier tests ran, so a CI log shows the lab was really exercised."""
    ran = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
           if getattr(r, "when", "call") == "call" and "lab" in getattr(r, "keywords", {})]
    terminalreporter.write_line(f"lab tier: {len(ran)} tests executed against the lab hosts")
