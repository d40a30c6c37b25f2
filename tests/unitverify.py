"""`systemd-analyze verify` of a unit file against this machine's systemd units, the programs it runs present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def verify_root(tmp_path: Path, programs: tuple[str, ...] = ("usr/bin/docker",), docker: bool = True) -> Path:
    """A root with the machine's systemd units, ``programs`` as executables, and a docker.service when ``docker``.

    + programs: paths under the root, e.g. ``("usr/bin/docker", "opt/vlmfleet/venv/bin/python")``
    """
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for program in programs:
        (root / program).parent.mkdir(parents=True, exist_ok=True)
        (root / program).write_text("#!/bin/sh\n")
        (root / program).chmod(0o755)
    if docker:
        (root / "etc/systemd/system/docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    return root


def verify(root: Path, unit_name: str, text: str) -> subprocess.CompletedProcess:
    """Install ``text`` as ``unit_name`` under ``root`` and run ``systemd-analyze verify`` on it."""
    (root / "etc/systemd/system" / unit_name).write_text(text)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit_name], capture_output=True, text=True)
