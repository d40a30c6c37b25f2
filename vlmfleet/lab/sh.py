"""Small wrappers around the commands the lab runs on this machine."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from .errors import LabError


def run(*argv: str, check: bool = True, input: str | None = None, what: str = "") -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure raise LabError with its last stderr line.

    + argv: the command, e.g. ``run("ip", "link", "add", "vlmlab0", "type", "bridge")``
    + check: raise on a non-zero exit
    + what: words for the error message, e.g. ``"create the lab bridge"``
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed; run `make deps` (or apt-get install it)") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise LabError(f"could not {what or ' '.join(argv)}: {last}")
    return proc


def ok(*argv: str) -> bool:
    """True when the command exits 0 (output discarded)."""
    return subprocess.run(argv, capture_output=True).returncode == 0


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log file, joined with ' | ' for a one-line error."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return " | ".join(text[-lines:]) or f"(empty log at {path})"


def port_in_use(address: str, port: int) -> bool:
    """True when something already listens on address:port (or the address would refuse a bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def who_listens(port: int) -> str:
    """A short description of the process on a TCP port, from ss, or '' when unknown."""
    proc = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True)
    m = re.search(r'"([^"]+)",pid=(\d+)', proc.stdout)
    return f"{m.group(1)} (pid {m.group(2)})" if m else ""


def wait_tcp(address: str, port: int, deadline_s: float) -> bool:
    """Poll until address:port accepts a TCP connection; False when the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def pid_alive(pid_file: Path, expect: str) -> int | None:
    """The pid recorded in pid_file when that process still runs the program ``expect``, else None.

    + expect: a word of the process's command line, e.g. ``"systemd-nspawn"``; guards against a recycled pid
    """
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if expect in cmdline else None
