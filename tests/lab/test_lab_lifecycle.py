"""`lab down` removes everything `lab up` made; `lab up` from the cache is fast; bad setups fail in one line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, VLMFLEET

pytestmark = pytest.mark.lab


def vlmfleet(*args, env=None):
    return subprocess.run([*VLMFLEET, *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **(env or {})))


def leftovers(cfg) -> list[str]:
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {n}" for n in re.findall(r"^(vlmlab-\S+)", netns, re.M)]
    if subprocess.run(["ip", "link", "show", cfg.bridge], capture_output=True).returncode == 0:
        found.append(f"bridge {cfg.bridge}")
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    found += [f"rule {r}" for r in rules.splitlines() if "vlmfleet-lab" in r]
    procs = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    found += [f"process {p.strip()}" for p in procs.splitlines()
              if not p.startswith("Z") and str(cfg.root) in p
              and any(d in p for d in ("nspawn", "apt-cacher", "registry", "hub_standin", "http.server"))]
    mounts = Path("/proc/mounts").read_text()
    found += [f"mount {m.split()[1]}" for m in mounts.splitlines() if str(cfg.hosts_dir) in m]
    for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup")):
        if base.is_dir():
            found += [f"cgroup {p}" for p in base.glob("vlmlab-*")]
    for d in (cfg.run_dir, cfg.hosts_dir):
        if d.exists():
            found.append(f"folder {d}")
    return found


def test_down_removes_everything_and_up_comes_back_from_the_cache(lab, lab_cfg):
    down = vlmfleet("lab", "down")
    assert down.returncode == 0, down.stderr
    assert leftovers(lab_cfg) == []
    assert (lab_cfg.cache_dir / f"debootstrap-{lab_cfg.suite}.tar.zst").exists()  # the cache stays

    status = vlmfleet("lab", "status")
    assert status.returncode == 3 and "no lab hosts" in status.stdout

    up = vlmfleet("lab", "up", "--hosts", "3")
    assert up.returncode == 0, up.stderr
    m = re.search(r"3 hosts and ops up in ([\d.]+)s \(4 booted", up.stdout)
    assert m, up.stdout
    status = vlmfleet("lab", "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("systemd running") == 4, status.stdout  # h1-h3 and the operations host


def _isolated(tmp_path, **extra):
    """Settings for a second, separate lab that must fail before it changes anything."""
    env = {"VLMFLEET_LAB_DIR": str(tmp_path / "lab"), "VLMFLEET_LAB_NET": "10.79.0",
           "VLMFLEET_LAB_BRIDGE": "vlmtest0", "VLMFLEET_LAB_APT_PORT": "3199", "VLMFLEET_LAB_REGISTRY_PORT": "5099",
           "VLMFLEET_LAB_HUB_PORT": "8099", "VLMFLEET_LAB_PYPI_PORT": "3198", "VLMFLEET_LAB_NVIDIA_REPO_PORT": "8098"}
    env.update(extra)
    return env


def _assert_one_line_error_and_nothing_changed(proc, words, tmp_path):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmfleet lab: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(words, lines[0]), lines[0]
    assert subprocess.run(["ip", "link", "show", "vlmtest0"], capture_output=True).returncode != 0
    assert not (tmp_path / "lab" / "run").exists() and not (tmp_path / "lab" / "hosts").exists()


def test_port_taken_fails_before_any_change(lab, tmp_path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = vlmfleet("lab", "up", env=_isolated(tmp_path, VLMFLEET_LAB_APT_PORT=str(port)))
    _assert_one_line_error_and_nothing_changed(
        proc, rf"port {port} needed by the lab's apt-cacher-ng is already taken .*VLMFLEET_LAB_APT_PORT", tmp_path)


def test_subnet_in_use_fails_before_any_change(lab, tmp_path):
    proc = vlmfleet("lab", "up", env=_isolated(tmp_path, VLMFLEET_LAB_NET="127.0.0"))
    _assert_one_line_error_and_nothing_changed(proc, r"overlaps 127\.0\.0\.0/8 on interface lo.*VLMFLEET_LAB_NET", tmp_path)


def test_debootstrap_failure_says_what_and_what_to_do(lab, tmp_path):
    proc = vlmfleet("lab", "up", env=_isolated(tmp_path, VLMFLEET_LAB_MIRROR="http://127.0.0.1:9/debian"))
    _assert_one_line_error_and_nothing_changed(
        proc, r"debootstrap of bookworm from http://127\.0\.0\.1:9/debian failed .*Failed getting release file"
              r".*VLMFLEET_LAB_MIRROR", tmp_path)


def test_non_root_is_refused_with_the_fix(tmp_path):
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *VLMFLEET, "lab", "up"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **_isolated(tmp_path)))
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("vlmfleet lab: error: the lab needs root (it creates a bridge, network namespaces "
                                   "and containers); run it as root, e.g. `sudo .venv/bin/vlmfleet lab up`")
