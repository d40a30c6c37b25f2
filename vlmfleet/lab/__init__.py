"""The local lab: real Debian 12 hosts (systemd-nspawn, own network namespace, sshd, Docker-capable) on this
machine, for proving every deploy over real SSH. See docs/lab.md."""

from .config import LabConfig
from .errors import LabError

__all__ = ["LabConfig", "LabError"]
