"""Helper daemons on the bridge address: apt-cacher-ng (the hosts' only way to Debian's mirror), the lab
registry (Debian's ``docker-registry``), the hub stand-in, the Python package mirror and the NVIDIA CUDA
repository stand-in. All keep their data in ``cache/`` so a second lab is fast."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import LabConfig
from .errors import LabError
from .sh import pid_alive, port_in_use, tail, wait_tcp, who_listens


@dataclass(frozen=True)
class Daemon:
    name: str
    program: str
    port: int

    def pid_file(self, cfg: LabConfig) -> Path:
        return cfg.run_dir / f"{self.name}.pid"

    def log_file(self, cfg: LabConfig) -> Path:
        return cfg.run_dir / f"{self.name}.log"


def daemons(cfg: LabConfig) -> list[Daemon]:
    return [
        Daemon("apt-cacher-ng", "apt-cacher-ng", cfg.apt_port),
        Daemon("registry", "docker-registry", cfg.registry_port),
        Daemon("hub-standin", "hub_standin", cfg.hub_port),
        Daemon("pypi-mirror", "http.server", cfg.pypi_port),
        Daemon("nvidia-repo-standin", "http.server", cfg.nvidia_repo_port),
    ]


PORT_VARS = {"apt-cacher-ng": "APT", "registry": "REGISTRY", "hub-standin": "HUB", "pypi-mirror": "PYPI",
             "nvidia-repo-standin": "NVIDIA_REPO"}


def check_ports(cfg: LabConfig) -> None:
    """Fail before changing anything when a port the lab needs is taken by a process that is not ours."""
    for d in daemons(cfg):
        if pid_alive(d.pid_file(cfg), d.program):
            continue
        # 0.0.0.0 catches a wildcard listener, which would also take the bridge address
        if port_in_use("0.0.0.0", d.port):
            owner = who_listens(d.port)
            raise LabError(
                f"port {d.port} needed by the lab's {d.name} is already taken{' by ' + owner if owner else ''}; "
                f"stop that process or set VLMFLEET_LAB_{PORT_VARS[d.name]}_PORT"
            )


def _acng_argv(cfg: LabConfig) -> list[str]:
    conf = cfg.run_dir / "acng-conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree("/etc/apt-cacher-ng", conf)
    mirror = cfg.mirror.rstrip("/")
    # Keep the configured mirror: the default remaps to mirrors that do not resolve from every network.
    (conf / "backends_debian").write_text(mirror + "/\n")
    cache = cfg.cache_dir / "apt-cacher-ng"
    cache.mkdir(parents=True, exist_ok=True)
    logdir = cfg.run_dir / "acng-log"
    logdir.mkdir(exist_ok=True)
    for p in (cache, logdir, conf, *conf.rglob("*")):
        shutil.chown(p, "apt-cacher-ng", "apt-cacher-ng")
    return [
        "runuser", "-u", "apt-cacher-ng", "--",
        "apt-cacher-ng", "-c", str(conf), "ForeGround=1",
        f"BindAddress={cfg.gateway}", f"Port={cfg.apt_port}", "ConnectProto=v4",
        # only Debian's repositories, never an open proxy to anywhere
        "ForceManaged=1",
        f"CacheDir={cache}", f"LogDir={logdir}",
        f"SocketPath={cfg.run_dir / 'acng.socket'}", f"PidFile={cfg.run_dir / 'acng.pidfile'}",
    ]


def _registry_argv(cfg: LabConfig) -> list[str]:
    storage = cfg.cache_dir / "registry"
    storage.mkdir(parents=True, exist_ok=True)
    conf = cfg.run_dir / "registry.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {cfg.gateway}:{cfg.registry_port}\n"
    )
    return ["docker-registry", "serve", str(conf)]


def _hub_argv(cfg: LabConfig) -> list[str]:
    from .hub import build

    root = build(cfg)
    return [sys.executable, "-m", "vlmfleet.lab.standins.hub_standin", "--root", str(root), "--bind", cfg.gateway,
            "--port", str(cfg.hub_port), "--hosts-dir", str(cfg.hosts_dir), "--net", cfg.net]


def _pypi_argv(cfg: LabConfig) -> list[str]:
    from .pypi import build

    root = build(cfg)
    return [sys.executable, "-m", "http.server", "--bind", cfg.gateway, "--directory", str(root), str(cfg.pypi_port)]


def _nvidia_repo_argv(cfg: LabConfig) -> list[str]:
    from .standins import nvidia_repo

    root = nvidia_repo.build(cfg)
    return [sys.executable, "-m", "http.server", "--bind", cfg.gateway, "--directory", str(root),
            str(cfg.nvidia_repo_port)]


def _content_stale(cfg: LabConfig, name: str) -> bool:
    """True when a daemon's served content (model repositories, package mirror, NVIDIA repository) must be
    rebuilt."""
    from . import hub, pypi
    from .standins import nvidia_repo

    return {"hub-standin": hub.stale, "pypi-mirror": pypi.stale,
            "nvidia-repo-standin": nvidia_repo.stale}.get(name, lambda _: False)(cfg)


def start(cfg: LabConfig) -> None:
    """Start the daemons (a running one is kept unless its content changed) and wait until they listen."""
    for d in daemons(cfg):
        if pid_alive(d.pid_file(cfg), d.program):
            if not _content_stale(cfg, d.name):
                continue
            _stop_one(cfg, d)
        argv = {"apt-cacher-ng": _acng_argv, "registry": _registry_argv, "hub-standin": _hub_argv,
                "pypi-mirror": _pypi_argv, "nvidia-repo-standin": _nvidia_repo_argv}[d.name](cfg)
        with d.log_file(cfg).open("w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        d.pid_file(cfg).write_text(f"{proc.pid}\n")
        if not wait_tcp(cfg.gateway, d.port, 15):
            raise LabError(
                f"the lab's {d.name} did not listen on {cfg.gateway}:{d.port} within 15s: "
                f"{tail(d.log_file(cfg), 3)}; run `vlmfleet lab down` to clean up"
            )


def _stop_one(cfg: LabConfig, d: Daemon) -> str | None:
    """Stop one daemon; return a description when it would not stop."""
    pid = pid_alive(d.pid_file(cfg), d.program)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(50):
            if not pid_alive(d.pid_file(cfg), d.program):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pid_alive(d.pid_file(cfg), d.program):
            return f"{d.name} (pid {pid})"
    d.pid_file(cfg).unlink(missing_ok=True)
    return None


def stop(cfg: LabConfig) -> list[str]:
    """Stop every daemon; return what did not stop."""
    return [p for p in (_stop_one(cfg, d) for d in daemons(cfg)) if p]


def status(cfg: LabConfig) -> dict[str, str]:
    out = {}
    for d in daemons(cfg):
        pid = pid_alive(d.pid_file(cfg), d.program)
        out[d.name] = f"running (pid {pid}) on {cfg.gateway}:{d.port}" if pid else "stopped"
    return out
