"""Lab hosts: systemd-nspawn containers booting Debian with systemd as PID 1.

Each host is an overlayfs over the shared rootfs (its writes land in ``hosts/<name>/upper``), its own network
namespace, its own cgroup, and a bind-mounted ``/var/lib/docker`` on this machine's disk so the Docker engine
inside gets overlay2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import LabConfig
from .errors import LabError
from .sh import ok, pid_alive, run, tail

NSPAWN_FLAGS = (
    "--boot",
    "--register=no",
    "--keep-unit",
    "--console=passive",
    "--resolv-conf=off",
    "--timezone=off",
    # the inner Docker engine needs these: keyrings, bpf (cgroup device filters), swap accounting calls
    "--capability=all",
    "--system-call-filter=@keyring bpf @swap",
)


@dataclass(frozen=True)
class LabHost:
    name: str  # e.g. "h1"
    index: int  # 1-based
    address: str  # e.g. "10.77.0.11"

    def dir(self, cfg: LabConfig) -> Path:
        return cfg.hosts_dir / self.name

    def root(self, cfg: LabConfig) -> Path:
        return self.dir(cfg) / "root"

    def pid_file(self, cfg: LabConfig) -> Path:
        return self.dir(cfg) / "nspawn.pid"

    def log_file(self, cfg: LabConfig) -> Path:
        return self.dir(cfg) / "nspawn.log"

    def boots_file(self, cfg: LabConfig) -> Path:
        return self.dir(cfg) / "boots"

    @property
    def cgroup(self) -> str:
        return f"vlmlab-{self.name}"


#: the lab's operations host: no GPU, in groups monitoring and gateway (Prometheus, HAProxy); index 0 (.10)
OPS = "ops"


def host_named(cfg: LabConfig, name: str) -> LabHost | None:
    """The lab host a folder or namespace name stands for (``h3``, ``ops``), None for any other name."""
    if name == OPS:
        return LabHost(OPS, 0, cfg.host_ip(0))
    if name.startswith("h") and name[1:].isdigit():
        return LabHost(name, int(name[1:]), cfg.host_ip(int(name[1:])))
    return None


def lab_hosts(cfg: LabConfig, count: int, ops: bool = True) -> list[LabHost]:
    """GPU hosts h1..hN (simulated GPUs) and, with ``ops``, the operations host ``ops`` last."""
    if not 1 <= count <= 200:
        raise LabError(f"--hosts {count}: give between 1 and 200 hosts")
    return [LabHost(f"h{i}", i, cfg.host_ip(i)) for i in range(1, count + 1)] + (
        [host_named(cfg, OPS)] if ops else [])


def existing_hosts(cfg: LabConfig) -> list[LabHost]:
    """Hosts that have a folder under hosts/ (running or not): h1..hN by index, then ops."""
    if not cfg.hosts_dir.is_dir():
        return []
    found = [h for h in (host_named(cfg, d.name) for d in cfg.hosts_dir.iterdir()) if h]
    return sorted(found, key=lambda h: (h.name == OPS, h.index))


def running(cfg: LabConfig, host: LabHost) -> int | None:
    """The pid of the host's supervisor (its command line names systemd-nspawn) while the host is up or
    rebooting, else None."""
    return pid_alive(host.pid_file(cfg), "systemd-nspawn")


# ---- cgroups -------------------------------------------------------------------------------------
def _cgroup_dirs(host: LabHost) -> list[Path]:
    """This host's cgroup folders: v1 name=systemd + v2 (hybrid), or v2 alone (unified)."""
    base = Path("/sys/fs/cgroup")
    if (base / "unified").is_dir() and (base / "systemd").is_dir():
        return [base / "systemd" / host.cgroup, base / "unified" / host.cgroup]
    return [base / host.cgroup]


def _cgroup_pids(path: Path) -> list[int]:
    pids = []
    for procs in path.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except (OSError, ValueError):
            pass
    return pids


def _remove_cgroup(path: Path, deadline_s: float = 20) -> None:
    """Remove a host's cgroup tree, first waiting for (then killing) what still runs in it — a host whose
    nspawn died abruptly leaves its processes shutting down for a while."""
    if not path.is_dir():
        return
    end = time.monotonic() + deadline_s
    while _cgroup_pids(path) and time.monotonic() < end:
        if time.monotonic() > end - deadline_s / 2:
            for pid in _cgroup_pids(path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


# ---- identity written before boot ----------------------------------------------------------------
def write_identity(cfg: LabConfig, host: LabHost, all_hosts: list[LabHost]) -> str:
    """Hostname, /etc/hosts, machine-id and a fresh SSH host key; return the known_hosts line."""
    root = host.root(cfg)
    (root / "etc/hostname").write_text(host.name + "\n")
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{host.name}", f"{cfg.gateway}\tlab-gateway"]
    lines += [f"{h.address}\t{h.name}" for h in all_hosts if h.name != host.name]
    (root / "etc/hosts").write_text("\n".join(lines) + "\n")
    mid = root / "etc/machine-id"
    if not mid.read_text().strip():
        mid.write_text(uuid.uuid4().hex + "\n")
    key = root / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", str(key),
            what=f"create the SSH host key of {host.name}")
    pub = Path(str(key) + ".pub").read_text().split()
    return f"{host.address} {pub[0]} {pub[1]}"


def install_gpu_standin(cfg: LabConfig, host: LabHost, spec: str, bare: bool | None = None) -> None:
    """The simulated GPUs: /etc/vlmfleet-lab/gpus.json, the lspci stand-in as /usr/local/sbin/lspci (the PCI view)
    and, unless the host is ``bare`` (hardware without a driver: the driver stage's package brings nvidia-smi), the
    nvidia-smi stand-in as /usr/bin/nvidia-smi. apt reaches the lab's own services on the bridge address (the
    NVIDIA repository stand-in) directly: apt-cacher-ng, the proxy for everything else, serves only Debian's.

    + bare: None: as the host's layout says (VLMFLEET_LAB_GPUS)
    """
    from .layout import gpus_json, layout

    if bare is None:
        bare = layout(host.index).bare
    root = host.root(cfg)
    standins = Path(__file__).parent / "standins"
    (root / "etc/vlmfleet-lab").mkdir(parents=True, exist_ok=True)
    (root / "etc/vlmfleet-lab/gpus.json").write_text(gpus_json(spec))
    programs = {"usr/local/sbin/lspci": "lspci_standin.py"}
    if not bare:
        programs["usr/bin/nvidia-smi"] = "nvidia_smi_standin.py"
    for path, source in programs.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((standins / source).read_bytes())
        (root / path).chmod(0o755)
    (root / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/apt.conf.d/02vlmfleet-lab-direct").write_text(
        f"// vlmfleet lab: the lab's own repositories on the bridge address, not through apt-cacher-ng\n"
        f'Acquire::http::Proxy::{cfg.gateway} "DIRECT";\n')


# ---- boot / stop ---------------------------------------------------------------------------------
def mount_root(cfg: LabConfig, host: LabHost, lower: Path) -> None:
    d = host.dir(cfg)
    for sub in ("upper", "work", "root", "docker"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    if not ok("mountpoint", "-q", str(host.root(cfg))):
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}", str(host.root(cfg)),
            what=f"mount the root filesystem of {host.name}")


def boot(cfg: LabConfig, host: LabHost, netns_name: str) -> None:
    """Start the host in the background: its supervisor (vlmfleet.lab.supervise) runs systemd-nspawn inside the
    host's own cgroup and starts it again when the host reboots, as a server comes back from a reboot."""
    cgroups = _cgroup_dirs(host)
    for cg in cgroups:
        cg.mkdir(exist_ok=True)
    nspawn = ["systemd-nspawn", "-q", "-D", str(host.root(cfg)), f"--machine={host.name}",
              f"--network-namespace-path=/run/netns/{netns_name}", *NSPAWN_FLAGS,
              f"--bind={host.dir(cfg) / 'docker'}:/var/lib/docker"]
    argv = [sys.executable, "-m", "vlmfleet.lab.supervise", "--boots", str(host.boots_file(cfg)),
            *(a for cg in cgroups for a in ("--cgroup", str(cg))), "--", *nspawn]
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    with host.log_file(cfg).open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    host.pid_file(cfg).write_text(f"{proc.pid}\n")


def boots(cfg: LabConfig, host: LabHost) -> int:
    """How many times the host booted since ``vlmfleet lab up`` started it (1: never rebooted)."""
    try:
        return int(host.boots_file(cfg).read_text().strip())
    except (OSError, ValueError):
        return 0


def wait_ready(cfg: LabConfig, host: LabHost, deadline_s: float) -> str:
    """Wait until SSH answers and systemd finished booting; return systemd's state (running/degraded)."""
    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        if not running(cfg, host):
            raise LabError(f"lab host {host.name} stopped while booting: {tail(host.log_file(cfg), 4)}")
        proc = subprocess.run(
            ["ssh", "-F", str(cfg.ssh_config), "-o", "ConnectTimeout=2", host.name,
             "systemctl is-system-running --wait"],
            capture_output=True, text=True, timeout=deadline_s,
        )
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        last = last[0]
        time.sleep(0.2)
    raise LabError(
        f"lab host {host.name} ({host.address}) was not reachable over SSH within {deadline_s:.0f}s "
        f"(last: {last or 'no answer'}); boot log: {tail(host.log_file(cfg), 3)}"
    )


def stop(cfg: LabConfig, host: LabHost) -> int | None:
    """Send SIGTERM (systemd powers off cleanly); return the pid still to wait for, if any."""
    pid = running(cfg, host)
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return None
    return pid


def orphan_cgroups() -> list[Path]:
    """vlmlab-* cgroups whose host folder is gone (a lab killed mid-way)."""
    base = Path("/sys/fs/cgroup")
    found = []
    for parent in (base / "systemd", base / "unified", base):
        if parent.is_dir():
            found += [p for p in parent.glob("vlmlab-*") if p.is_dir()]
    return found


def reap(cfg: LabConfig, host: LabHost, pid: int | None, deadline_s: float = 30) -> list[str]:
    """Wait for the host to power off (SIGKILL after the deadline), then unmount and delete its files."""
    problems = []
    if pid:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and running(cfg, host):
            time.sleep(0.1)
        if running(cfg, host):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.5)
    for cg in _cgroup_dirs(host):
        _remove_cgroup(cg)
        if cg.exists():
            problems.append(f"cgroup {cg}")
    root = host.root(cfg)
    if ok("mountpoint", "-q", str(root)) and not ok("umount", str(root)):
        if not ok("umount", "-l", str(root)):
            problems.append(f"mount {root}")
    if not ok("mountpoint", "-q", str(root)):
        shutil.rmtree(host.dir(cfg), ignore_errors=True)
    if host.dir(cfg).exists():
        problems.append(f"folder {host.dir(cfg)}")
    return problems
