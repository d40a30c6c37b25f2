"""`vlmfleet lab up | status | down`: the whole lab, put together from its parts."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from . import hosts as hostmod
from . import network, rootfs, services
from .config import HOST_TOOLS, LabConfig
from .errors import LabError
from .hosts import LabHost
from .layout import layout
from .sh import ok, run
from .standins import nvidia_repo

NSPAWN_RUN = Path("/run/systemd/nspawn")
BOOT_DEADLINE_S = 90


def _log_to_stdout(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def check_machine() -> None:
    """Root and the host tools, checked before anything is changed."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it creates a bridge, network namespaces and containers); run it as root, "
            "e.g. `sudo .venv/bin/vlmfleet lab up`"
        )
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(
            f"missing packages on this machine: {' '.join(missing)}; install them with "
            f"`apt-get install -y --no-install-recommends {' '.join(missing)}` (or `make deps`)"
        )


@contextmanager
def locked(cfg: LabConfig) -> Iterator[None]:
    cfg.root.mkdir(parents=True, exist_ok=True)
    with cfg.lock_file.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LabError(f"another `vlmfleet lab` command holds {cfg.lock_file}; wait for it to finish") from exc
        yield


# ---- connection files ------------------------------------------------------------------------------
def _ssh_config(cfg: LabConfig, hosts: list[LabHost]) -> str:
    blocks = []
    for h in hosts:
        blocks.append(
            f"Host {h.name} {h.address}\n"
            f"  HostName {h.address}\n"
            f"  User {cfg.user}\n"
            f"  IdentityFile {cfg.ssh_key}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {cfg.known_hosts}\n"
            f"  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n"
            f"  LogLevel ERROR\n"
        )
    return "# written by `vlmfleet lab up`; use with: ssh -F THIS_FILE h1\n" + "\n".join(blocks)


def inventory_data(cfg: LabConfig, hosts: list[LabHost]) -> dict:
    """What inventories/lab.py reads (through vlmfleet.lab.inventory)."""
    return {
        "hosts": [{"name": h.name, "address": h.address, "gpus": layout(h.index).gpus, "group": layout(h.index).group,
                   "bare": layout(h.index).bare}
                  for h in hosts if h.name != hostmod.OPS],
        # the operations host (no GPU): Prometheus and the gateway; inventories/lab.py puts it in their groups
        "ops": [{"name": h.name, "address": h.address} for h in hosts if h.name == hostmod.OPS],
        "ssh_user": cfg.user,
        "ssh_key": str(cfg.ssh_key),
        "known_hosts": str(cfg.known_hosts),
        "ssh_config": str(cfg.ssh_config),
        "gateway": cfg.gateway,
        "apt_proxy": cfg.apt_proxy,
        "registry": cfg.registry,
        "hub_url": cfg.hub_url,
        "pypi_url": cfg.pypi_url,
        "api_key_file": str(cfg.run_dir / "api-key"),
        # the NVIDIA CUDA repository stand-in; {distro} and {arch} are the driver stage's to fill in
        "nvidia_repo": {"url": cfg.nvidia_repo_url, "key_url": cfg.nvidia_repo_url + nvidia_repo.KEY_FILE,
                        "fingerprint": nvidia_repo.fingerprint(cfg)},
    }


# ---- up ----------------------------------------------------------------------------------------------
def up(cfg: LabConfig, count: int = 3, log: Callable[[str], None] = _log_to_stdout, ops: bool = True) -> dict:
    """Bring GPU hosts h1..hN and the operations host ``ops`` up (running ones are kept), with the network and
    the helper daemons."""
    t0 = time.monotonic()
    check_machine()
    wanted = hostmod.lab_hosts(cfg, count, ops=ops)
    with locked(cfg):
        # extra hosts from an earlier, larger lab go away
        extra = [h for h in hostmod.existing_hosts(cfg) if h not in wanted]
        if extra:
            _remove_hosts(cfg, extra)
        alive = [h for h in wanted if hostmod.running(cfg, h)]
        # everything that can fail without a trace is checked before the first change
        network.check_free(cfg)
        services.check_ports(cfg)
        lower = rootfs.ensure_rootfs(cfg, log, hosts_running=bool(alive))
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        network.bridge_up(cfg)
        services.start(cfg)
        if not ok("mountpoint", "-q", str(NSPAWN_RUN)):
            NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
            run("mount", "-t", "tmpfs", "tmpfs", str(NSPAWN_RUN), what=f"mount a tmpfs on {NSPAWN_RUN}")
            (cfg.run_dir / "nspawn-tmpfs").write_text("mounted by vlmfleet lab\n")

        known = []
        to_boot = []
        for h in wanted:
            if h not in alive:
                network.host_net_up(cfg, h.name, h.address)
                hostmod.mount_root(cfg, h, lower)
                to_boot.append(h)
            known.append(hostmod.write_identity(cfg, h, wanted).replace(" ", f",{h.name} ", 1))
            if h.name != hostmod.OPS:  # the ops host has no GPU, and no nvidia-smi
                hostmod.install_gpu_standin(cfg, h, layout(h.index).gpus)
        cfg.known_hosts.write_text("\n".join(known) + "\n")
        key_file = cfg.run_dir / "api-key"
        if not key_file.exists():  # the lab fleet's API key: exercises the secret path end to end
            import secrets

            key_file.write_text(f"sk-lab-{secrets.token_hex(16)}\n")
            key_file.chmod(0o600)
        cfg.ssh_config.write_text(_ssh_config(cfg, wanted))
        for h in to_boot:
            hostmod.boot(cfg, h, network.netns(h.name))
        from .images import push_standins

        push_standins(cfg, log)
        states = {h.name: hostmod.wait_ready(cfg, h, BOOT_DEADLINE_S) for h in wanted}
        data = inventory_data(cfg, wanted)
        cfg.inventory_file.write_text(json.dumps(data, indent=2) + "\n")
    degraded = [n for n, s in states.items() if s != "running"]
    gpu_hosts = [h for h in wanted if h.name != hostmod.OPS]
    log(
        f"{len(gpu_hosts)} hosts{' and ops' if ops else ''} up in {time.monotonic() - t0:.1f}s "
        f"({len(to_boot)} booted, {len(alive)} already running): "
        + ", ".join(f"{h.name}={h.address}" for h in wanted)
    )
    if degraded:
        log(f"warning: systemd reports 'degraded' on {', '.join(degraded)}; see `vlmfleet lab ssh NAME systemctl --failed`")
    log(f"inventory data: {cfg.inventory_file}; ssh: ssh -F {cfg.ssh_config} h1")
    return data


# ---- down --------------------------------------------------------------------------------------------
def _remove_hosts(cfg: LabConfig, hosts: list[LabHost]) -> list[str]:
    pids = {h.name: hostmod.stop(cfg, h) for h in hosts}  # all power off in parallel
    problems = []
    for h in hosts:
        problems += hostmod.reap(cfg, h, pids[h.name])
        problems += network.host_net_down(h.name)
    return problems


def down(cfg: LabConfig, purge: bool = False, log: Callable[[str], None] = _log_to_stdout) -> None:
    """Stop and delete every host, namespace, daemon, rule and mount the lab made; keep cache/ unless purge."""
    t0 = time.monotonic()
    check_machine()
    with locked(cfg):
        hosts = hostmod.existing_hosts(cfg)
        names = {h.name for h in hosts}
        for name in network.lab_namespaces():  # namespaces left by a lab whose folders are gone
            if name not in names and hostmod.host_named(cfg, name):
                hosts.append(hostmod.host_named(cfg, name))
        problems = _remove_hosts(cfg, hosts)
        for cg in hostmod.orphan_cgroups():
            hostmod._remove_cgroup(cg)
            if cg.exists():
                problems.append(f"cgroup {cg}")
        problems += services.stop(cfg)
        problems += network.bridge_down(cfg)
        marker = cfg.run_dir / "nspawn-tmpfs"
        if marker.exists() and ok("mountpoint", "-q", str(NSPAWN_RUN)):
            if not ok("umount", str(NSPAWN_RUN)):
                problems.append(f"mount {NSPAWN_RUN}")
        if not problems:
            shutil.rmtree(cfg.run_dir, ignore_errors=True)
            shutil.rmtree(cfg.hosts_dir, ignore_errors=True)
            if purge:
                shutil.rmtree(cfg.cache_dir, ignore_errors=True)
    if problems:
        raise LabError(f"lab down could not remove: {'; '.join(problems)} — run `vlmfleet lab down` again")
    if purge:
        cfg.lock_file.unlink(missing_ok=True)
        try:
            cfg.root.rmdir()
        except OSError:
            pass
    log(f"down in {time.monotonic() - t0:.1f}s: {len(hosts)} hosts, daemons, bridge and rules removed"
        + ("; cache purged" if purge else f"; cache kept in {cfg.cache_dir}"))


# ---- status ------------------------------------------------------------------------------------------
def status(cfg: LabConfig) -> tuple[str, bool]:
    """A readable report and whether the lab is fully up."""
    lines = []
    healthy = True
    hosts = hostmod.existing_hosts(cfg)
    if not hosts:
        lines.append(f"no lab hosts (lab folder {cfg.root}); start them with `vlmfleet lab up`")
        healthy = False
    for h in hosts:
        pid = hostmod.running(cfg, h)
        if not pid:
            lines.append(f"{h.name:4} {h.address:15} stopped")
            healthy = False
            continue
        proc = _ssh_quick(cfg, h.name, "systemctl is-system-running")
        state = proc or "no SSH answer"
        healthy &= state in ("running", "degraded")
        lines.append(f"{h.name:4} {h.address:15} nspawn pid {pid}, systemd {state}")
    for name, st in services.status(cfg).items():
        lines.append(f"{name:14} {st}")
        healthy &= st.startswith("running")
    if cfg.inventory_file.exists():
        lines.append(f"inventory data  {cfg.inventory_file}")
    return "\n".join(lines), healthy


def _ssh_quick(cfg: LabConfig, name: str, command: str) -> str:
    if not cfg.ssh_config.exists():
        return ""
    proc = subprocess.run(["ssh", "-F", str(cfg.ssh_config), "-o", "ConnectTimeout=2", name, command],
                          capture_output=True, text=True)
    return proc.stdout.strip()
