"""Where the lab keeps its files and how its network is laid out.

Every setting has one default here and one environment variable to change it;
docs/lab.md's "Lab settings" table echoes this file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Debian packages this machine needs to run the lab, by the command each provides.
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "apt-cacher-ng": "apt-cacher-ng",
    "docker-registry": "docker-registry",
    "iptables": "iptables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "zstd": "zstd",
    # the NVIDIA CUDA repository stand-in: its packages, their index's signature and its key
    "dpkg-deb": "dpkg",
    "gpg": "gpg",
    "gpg-agent": "gpg-agent",
}

#: What debootstrap adds to the minbase variant: a Debian 12 server as a cloud image ships it.
ROOTFS_PACKAGES = (
    "systemd-sysv,dbus,openssh-server,iproute2,ca-certificates,curl,gnupg,sudo,python3,procps,less"
)


@dataclass(frozen=True)
class LabConfig:
    """Settings of one lab on this machine.

    + root: the lab's folder; ``cache/`` in it survives ``lab down`` (VLMFLEET_LAB_DIR)
    + net: first three octets of the lab's /24, the bridge takes .1, host N takes .(10+N) (VLMFLEET_LAB_NET)
    + bridge: the bridge's interface name (VLMFLEET_LAB_BRIDGE)
    + apt_port: apt-cacher-ng's port on the bridge address (VLMFLEET_LAB_APT_PORT)
    + registry_port: the lab registry's port on the bridge address (VLMFLEET_LAB_REGISTRY_PORT)
    + hub_port: the model hub stand-in's port (VLMFLEET_LAB_HUB_PORT)
    + pypi_port: the Python package mirror's port (VLMFLEET_LAB_PYPI_PORT)
    + nvidia_repo_port: the NVIDIA CUDA repository stand-in's port (VLMFLEET_LAB_NVIDIA_REPO_PORT)
    + user: the non-root sudo user the hosts accept by key (VLMFLEET_LAB_USER)
    + mirror: the Debian mirror, the only outside address the lab reaches (VLMFLEET_LAB_MIRROR)
    + suite: the Debian release of the hosts (VLMFLEET_LAB_SUITE)
    """

    root: Path = Path("/var/lib/vlmfleet-lab")
    net: str = "10.77.0"
    bridge: str = "vlmlab0"
    apt_port: int = 3142
    registry_port: int = 5000
    hub_port: int = 8081
    pypi_port: int = 3141
    nvidia_repo_port: int = 8082
    user: str = "fleet"
    mirror: str = "http://deb.debian.org/debian"
    suite: str = "bookworm"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "LabConfig":
        env = os.environ if environ is None else environ
        d = cls()
        try:
            cfg = cls(
                root=Path(env.get("VLMFLEET_LAB_DIR", str(d.root))),
                net=env.get("VLMFLEET_LAB_NET", d.net),
                bridge=env.get("VLMFLEET_LAB_BRIDGE", d.bridge),
                apt_port=int(env.get("VLMFLEET_LAB_APT_PORT", d.apt_port)),
                registry_port=int(env.get("VLMFLEET_LAB_REGISTRY_PORT", d.registry_port)),
                hub_port=int(env.get("VLMFLEET_LAB_HUB_PORT", d.hub_port)),
                pypi_port=int(env.get("VLMFLEET_LAB_PYPI_PORT", d.pypi_port)),
                nvidia_repo_port=int(env.get("VLMFLEET_LAB_NVIDIA_REPO_PORT", d.nvidia_repo_port)),
                user=env.get("VLMFLEET_LAB_USER", d.user),
                mirror=env.get("VLMFLEET_LAB_MIRROR", d.mirror),
                suite=env.get("VLMFLEET_LAB_SUITE", d.suite),
            )
        except ValueError as exc:
            from .errors import LabError

            raise LabError(f"a VLMFLEET_LAB_*_PORT setting is not a number ({exc}); unset it or give a port") from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .errors import LabError

        octets = self.net.split(".")
        if len(octets) != 3 or not all(o.isdigit() and 0 <= int(o) <= 255 for o in octets):
            raise LabError(f"VLMFLEET_LAB_NET={self.net!r} is not three octets like 10.77.0; fix or unset it")
        if not (1 <= len(self.bridge) <= 15):
            raise LabError(f"VLMFLEET_LAB_BRIDGE={self.bridge!r} must be 1-15 characters (a Linux interface name)")
        if not self.root.is_absolute():
            raise LabError(f"VLMFLEET_LAB_DIR={str(self.root)!r} must be an absolute path")

    # ---- addresses -------------------------------------------------------------------------
    @property
    def gateway(self) -> str:
        return f"{self.net}.1"

    def host_ip(self, index: int) -> str:
        return f"{self.net}.{10 + index}"

    @property
    def apt_proxy(self) -> str:
        return f"http://{self.gateway}:{self.apt_port}"

    @property
    def registry(self) -> str:
        return f"{self.gateway}:{self.registry_port}"

    @property
    def hub_url(self) -> str:
        return f"http://{self.gateway}:{self.hub_port}"

    @property
    def pypi_url(self) -> str:
        return f"http://{self.gateway}:{self.pypi_port}/simple"

    @property
    def nvidia_repo_url(self) -> str:
        """NVIDIA's CUDA repository layout on the stand-in; ``{distro}`` and ``{arch}`` are the stage's to fill."""
        return f"http://{self.gateway}:{self.nvidia_repo_port}/compute/cuda/repos/{{distro}}/{{arch}}/"

    # ---- files -----------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def hosts_dir(self) -> Path:
        return self.root / "hosts"

    @property
    def ssh_key(self) -> Path:
        return self.cache_dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.run_dir / "ssh_config"

    @property
    def inventory_file(self) -> Path:
        return self.run_dir / "inventory.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"
