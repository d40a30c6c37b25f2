"""Stage 2, base: git-lfs, Docker, the NVIDIA container toolkit, and /etc/docker/daemon.json merged."""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from .. import dockerconfig
from ..config import DAEMON_JSON_RECORD, STATE_DIR, HostConfig
from ..facts import JsonFile
from .common import DAEMON_JSON, bounded_apt_update

BASE_PACKAGES = ["ca-certificates", "curl", "gnupg", "git", "git-lfs", "python3-venv"]
DOCKER_KEY = "/etc/apt/keyrings/docker.asc"
NVIDIA_KEY = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"


def docker_repo_line(url: str, os_id: str, codename: str) -> str:
    """``deb [arch=amd64 signed-by=...] https://download.docker.com/linux/debian bookworm stable``."""
    if url.rstrip("/").endswith("/linux/debian") and os_id == "ubuntu":
        url = url.rstrip("/")[: -len("debian")] + "ubuntu"
    return f"deb [arch=amd64 signed-by={DOCKER_KEY}] {url.rstrip('/')} {codename} stable\n"


def nvidia_repo_line(url: str) -> str:
    return f"deb [signed-by={NVIDIA_KEY}] {url.rstrip('/')}/$(ARCH) /\n"


@deploy("Base")
def base(cfg: HostConfig, hold_restart: bool = False) -> list:
    """Install git-lfs and Docker (docker-ce from Docker's repository, or the distro's docker.io), the NVIDIA
    container toolkit when ``nvidia_runtime``, and merge vlmfleet's keys into /etc/docker/daemon.json (a key
    vlmfleet set from ``docker_daemon_options`` and no longer wants is taken out again, unless someone changed
    it since). dockerd restarts only when daemon.json changed; the restart is returned, because it restarts the
    vLLM container too and the health stage must then check the server.

    + cfg: the host's configuration, e.g. ``cfg.docker_package == "docker-ce"``
    + hold_restart: the host serves, and its restarts go in its rollout batch: return the daemon.json change
      instead of restarting dockerd here (``restart_docker`` does it in the batch)
    """
    meta = (host.get_fact(LinuxDistribution) or {}).get("release_meta") or {}
    os_id, codename = (meta.get("ID") or "debian").lower(), meta.get("VERSION_CODENAME") or "bookworm"

    bounded_apt_update(cfg, "Update apt's package lists (bounded in time, 3 tries)", cache_time=3600)
    apt.packages(name="Install git-lfs and base tools", packages=BASE_PACKAGES)

    if cfg.docker_package == "docker-ce":
        files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="755")
        key = files.download(name="Fetch Docker's apt key", src=f"{cfg.docker_apt_url.rstrip('/')}/gpg",
                             dest=DOCKER_KEY, mode="644")
        repo = files.put(name="Add Docker's apt repository", dest="/etc/apt/sources.list.d/docker.list", mode="644",
                         src=StringIO(docker_repo_line(cfg.docker_apt_url, os_id, codename)))
        bounded_apt_update(cfg, "Update apt after adding Docker's repository", _if=any_changed(key, repo))
        docker_pkgs = ["docker-ce", "docker-ce-cli", "containerd.io"]
    else:
        docker_pkgs = ["docker.io", "apparmor"]
    apt.packages(name=f"Install Docker ({cfg.docker_package})", packages=docker_pkgs)

    existing = host.get_fact(JsonFile, path=DAEMON_JSON)
    current = existing.get("data", {}) if existing.get("valid") else {}

    if cfg.nvidia_runtime:
        if host.get_fact(File, path=NVIDIA_KEY):
            host.noop("NVIDIA's apt key is already installed")
            nkey = None
        else:
            nkey = server.shell(
                name="Fetch NVIDIA's container toolkit apt key",
                commands=[f"curl -fsSL {cfg.nvidia_toolkit_apt_url.rstrip('/')}/gpgkey "
                          f"| gpg --dearmor --yes -o {NVIDIA_KEY}"])
        nrepo = files.put(name="Add NVIDIA's container toolkit repository", mode="644",
                          dest="/etc/apt/sources.list.d/nvidia-container-toolkit.list",
                          src=StringIO(nvidia_repo_line(cfg.nvidia_toolkit_apt_url)))
        bounded_apt_update(cfg, "Update apt after adding NVIDIA's repository",
                           _if=any_changed(nkey, nrepo) if nkey else nrepo.did_change)
        apt.packages(name="Install the NVIDIA container toolkit", packages=["nvidia-container-toolkit"])
        if "nvidia" not in (current.get("runtimes") or {}):
            server.shell(name="Register the nvidia runtime with Docker (nvidia-ctk runtime configure)",
                         commands=["nvidia-ctk runtime configure --runtime=docker"])

    files.directory(name="Create /etc/docker", path="/etc/docker", mode="755")
    record = host.get_fact(JsonFile, path=DAEMON_JSON_RECORD)
    before = record.get("data", {}) if record.get("valid") else {}
    wanted = dockerconfig.ours(cfg)
    merged = dockerconfig.merge(current, wanted, retired=before)
    record_now = {k: v for k, v in wanted.items() if k != "runtimes"}  # the NVIDIA runtime is nvidia-ctk's too
    if existing.get("exists") and merged == current:
        host.noop("/etc/docker/daemon.json already has every vlmfleet key")
        daemon = None
    else:
        daemon = files.put(name="Merge vlmfleet's keys into /etc/docker/daemon.json", dest=DAEMON_JSON, mode="644",
                           src=StringIO(dockerconfig.render(merged)))
    files.directory(name=f"Create {STATE_DIR}", path=STATE_DIR, mode="755")
    files.put(name="Record the daemon.json keys vlmfleet set", dest=DAEMON_JSON_RECORD, mode="644",
              src=StringIO(dockerconfig.render(record_now)))
    systemd.service(name="Enable and start Docker", service="docker.service", running=True, enabled=True)
    if daemon is None:
        return []
    if hold_restart:
        host.noop("dockerd restarts for the daemon.json change in this host's rollout batch (it serves)")
        return [daemon]
    return [restart_docker(daemon)]


def restart_docker(daemon, **when):
    """Restart dockerd after a daemon.json change (it restarts the vLLM container with it).

    + daemon: the operation that changed daemon.json
    + when: e.g. ``_if=[...]``: in a rollout batch, the batch gate too
    """
    conds = [daemon.did_change, *(when.pop("_if", None) or [])]
    return systemd.service(name="Restart Docker after a daemon.json change", service="docker.service",
                           restarted=True, _if=conds, **when)
