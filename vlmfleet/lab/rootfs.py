"""The hosts' root filesystem: debootstrapped once, cached, then shared read-only by every host.

Two cache levels, both under ``cache/``:

+ ``debootstrap-<suite>.tar.zst`` — the pristine ``debootstrap --variant=minbase`` output (the slow part,
  ~60 s from the network; kept until ``lab down --purge``);
+ ``rootfs/`` — that tarball unpacked and made into a lab server: the sudo user with the lab's key, an apt
  proxy line, no SSH host keys (each host gets its own at boot). Rebuilt in seconds when the stamp changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from .config import ROOTFS_PACKAGES, LabConfig
from .errors import LabError
from .sh import run, tail

#: Bump when customize() changes, so cached rootfs folders are rebuilt.
CUSTOMIZE_VERSION = 3
STAMP = ".vlmfleet-lab-stamp"


def ensure_key(cfg: LabConfig) -> Path:
    """The lab's SSH key pair (created once, kept in the cache so rootfs and key agree)."""
    key = cfg.ssh_key
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vlmfleet-lab", "-f", str(key),
            what="create the lab SSH key")
    return key


def debootstrap_tarball(cfg: LabConfig) -> Path:
    return cfg.cache_dir / f"debootstrap-{cfg.suite}.tar.zst"


def ensure_debootstrap(cfg: LabConfig, log: Callable[[str], None]) -> Path:
    """Debootstrap a minbase Debian into the cache once; return the tarball."""
    tarball = debootstrap_tarball(cfg)
    if tarball.exists():
        return tarball
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.cache_dir / "debootstrap.tmp"
    debs = cfg.cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    logfile = cfg.cache_dir / "debootstrap.log"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrapping Debian {cfg.suite} from {cfg.mirror} (first time only, about a minute)")
    t0 = time.monotonic()
    with logfile.open("w") as out:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--cache-dir={debs}", f"--include={ROOTFS_PACKAGES}",
             cfg.suite, str(tmp), cfg.mirror],
            stdout=out, stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(
            f"debootstrap of {cfg.suite} from {cfg.mirror} failed (exit {proc.returncode}): {tail(logfile, 3)}"
            f" — check that the mirror is reachable (VLMFLEET_LAB_MIRROR), full log in {logfile}"
        )
    run("tar", "-C", str(tmp), "--numeric-owner", "--zstd", "-cf", str(tarball) + ".part", ".",
        what="pack the debootstrapped rootfs")
    Path(str(tarball) + ".part").rename(tarball)
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap done in {time.monotonic() - t0:.0f}s, cached as {tarball}")
    return tarball


def rootfs_dir(cfg: LabConfig) -> Path:
    return cfg.cache_dir / "rootfs"


def _stamp(cfg: LabConfig) -> str:
    pub = Path(str(cfg.ssh_key) + ".pub").read_text()
    parts = [str(CUSTOMIZE_VERSION), cfg.suite, cfg.mirror, ROOTFS_PACKAGES, cfg.user, pub, cfg.apt_proxy]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def rootfs_current(cfg: LabConfig) -> bool:
    stamp = rootfs_dir(cfg) / STAMP
    return stamp.exists() and stamp.read_text().strip() == _stamp(cfg)


def ensure_rootfs(cfg: LabConfig, log: Callable[[str], None], hosts_running: bool) -> Path:
    """The customized, shared lower layer of every host; rebuilt from the tarball when its stamp is stale."""
    ensure_key(cfg)
    root = rootfs_dir(cfg)
    if rootfs_current(cfg):
        return root
    if hosts_running:
        raise LabError(
            "the cached rootfs is out of date but lab hosts still run on it; run `vlmfleet lab down` first"
        )
    tarball = ensure_debootstrap(cfg, log)
    tmp = cfg.cache_dir / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    tmp.mkdir(parents=True)
    run("tar", "-C", str(tmp), "--numeric-owner", "--zstd", "-xpf", str(tarball), what="unpack the rootfs")
    customize(cfg, tmp)
    (tmp / STAMP).write_text(_stamp(cfg) + "\n")
    tmp.rename(root)
    log(f"rootfs prepared at {root}")
    return root


def customize(cfg: LabConfig, root: Path) -> None:
    """Turn a debootstrap tree into a lab server: what a fresh cloud image of Debian 12 would have."""
    pub = Path(str(cfg.ssh_key) + ".pub").read_text()
    # the operator: a non-root user with passwordless sudo and key-only SSH
    run("useradd", "--root", str(root), "--create-home", "--shell", "/bin/bash", "--groups", "sudo", cfg.user,
        what=f"create user {cfg.user} in the rootfs")
    sudoers = root / "etc/sudoers.d" / f"90-{cfg.user}"
    sudoers.write_text(f"{cfg.user} ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    home = root / "home" / cfg.user
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(pub)
    (ssh_dir / "authorized_keys").chmod(0o600)
    uid_gid = _ids(root, cfg.user)
    for p in (home, ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, *uid_gid)
    # apt: the Debian mirror through the lab's apt-cacher-ng (the only way out of the lab)
    mirror = cfg.mirror.rstrip("/")
    security = mirror.rsplit("/", 1)[0] + "/debian-security"
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} {cfg.suite} main\n"
        f"deb {mirror} {cfg.suite}-updates main\n"
        f"deb {security} {cfg.suite}-security main\n"
    )
    (root / "etc/apt/apt.conf.d/01vlmfleet-lab-proxy").write_text(
        f'// vlmfleet lab: Debian packages come through apt-cacher-ng on the lab bridge\n'
        f'Acquire::http::Proxy "{cfg.apt_proxy}";\n'
    )
    # per-host identity is written at boot (hostname, hosts, machine-id, SSH host keys)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# vlmfleet lab: no DNS; hosts know each other through /etc/hosts\n")


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"user {user} missing from {root}/etc/passwd after useradd")
