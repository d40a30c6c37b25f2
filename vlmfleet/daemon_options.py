"""The keys dockerd accepts in /etc/docker/daemon.json, with the JSON type of each, so a bad
``docker_daemon_options`` value is refused in preflight instead of leaving dockerd unable to start.

dockerd refuses the whole file on an unknown key ("the following directives don't match any configuration
option") or a value of the wrong type ("cannot unmarshal string into Go struct field Config.debug of type bool").
Source: the "Daemon configuration file" reference of dockerd (Linux), Docker 20.10 to 29.
"""

from __future__ import annotations

import ipaddress
from typing import Any

BOOL = "bool"
INT = "int"
STR = "str"
STRS = "list of strings"
MAP = "object"
STRMAP = "object of strings"
OBJS = "list of objects"

OPTIONS: dict[str, str] = {
    "allow-nondistributable-artifacts": STRS, "api-cors-header": STR, "authorization-plugins": STRS,
    "bip": STR, "bip6": STR, "bridge": STR, "builder": MAP, "cdi-spec-dirs": STRS, "cgroup-parent": STR,
    "containerd": STR, "containerd-namespace": STR, "containerd-plugins-namespace": STR, "cpu-rt-period": INT,
    "cpu-rt-runtime": INT, "cri-containerd": BOOL, "data-root": STR, "debug": BOOL, "default-address-pools": OBJS,
    "default-cgroupns-mode": STR, "default-gateway": STR, "default-gateway-v6": STR, "default-ipc-mode": STR,
    "default-network-opts": MAP, "default-runtime": STR, "default-shm-size": STR, "default-ulimits": MAP,
    "dns": STRS, "dns-opts": STRS, "dns-search": STRS, "exec-opts": STRS, "exec-root": STR, "experimental": BOOL,
    "features": MAP, "fixed-cidr": STR, "fixed-cidr-v6": STR, "group": STR, "host-gateway-ip": STR,
    "host-gateway-ips": STRS, "hosts": STRS, "icc": BOOL, "init": BOOL, "init-path": STR,
    "insecure-registries": STRS, "ip": STR, "ip-forward": BOOL, "ip-forward-no-drop": BOOL, "ip-masq": BOOL,
    "ip6tables": BOOL, "iptables": BOOL, "ipv6": BOOL, "labels": STRS, "live-restore": BOOL, "log-driver": STR,
    "log-format": STR, "log-level": STR, "log-opts": STRMAP, "max-concurrent-downloads": INT,
    "max-concurrent-uploads": INT, "max-download-attempts": INT, "metrics-addr": STR, "mtu": INT,
    "network-control-plane-mtu": INT, "no-new-privileges": BOOL, "node-generic-resources": STRS,
    "oom-score-adjust": INT, "pidfile": STR, "proxies": STRMAP, "raw-logs": BOOL, "registry-mirrors": STRS,
    "runtimes": MAP, "seccomp-profile": STR, "selinux-enabled": BOOL, "shutdown-timeout": INT,
    "storage-driver": STR, "storage-opts": STRS, "swarm-default-advertise-addr": STR, "tls": BOOL,
    "tlscacert": STR, "tlscert": STR, "tlskey": STR, "tlsverify": BOOL, "userland-proxy": BOOL,
    "userland-proxy-path": STR, "userns-remap": STR,
}

#: values dockerd accepts for some string options
CHOICES: dict[str, tuple[str, ...]] = {
    "log-level": ("debug", "info", "warn", "error", "fatal"),
    "log-format": ("text", "json"),
    "log-driver": ("json-file", "local", "journald", "syslog", "gelf", "fluentd", "awslogs", "splunk",
                   "gcplogs", "logentries", "etwlogs", "none"),
    "storage-driver": ("overlay2", "fuse-overlayfs", "btrfs", "zfs", "vfs", "devicemapper", "aufs"),
    "default-cgroupns-mode": ("host", "private"),
    "default-ipc-mode": ("private", "shareable", "host", "none"),
}
CIDRS = ("bip", "bip6", "fixed-cidr", "fixed-cidr-v6")
ADDRESSES = ("ip", "default-gateway", "default-gateway-v6", "host-gateway-ip")


def _type_ok(kind: str, v: Any) -> bool:
    if kind == BOOL:
        return isinstance(v, bool)
    if kind == INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == STR:
        return isinstance(v, str)
    if kind == STRS:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == MAP:
        return isinstance(v, dict)
    if kind == STRMAP:
        return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


def problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(key, why), ...]`` for every option dockerd would refuse, e.g.
    ``[("debug", "must be a bool (true/false), not str 'yes'")]``."""
    import difflib

    out = []
    for key, value in options.items():
        kind = OPTIONS.get(key)
        if kind is None:
            near = difflib.get_close_matches(key, OPTIONS, n=1, cutoff=0.7)
            out.append((key, "is not a dockerd option (dockerd refuses the whole file)"
                        + (f"; did you mean {near[0]!r}?" if near else "")))
            continue
        if not _type_ok(kind, value):
            article = "a " if kind in (BOOL, INT, STR, STRS, OBJS) else "an "
            out.append((key, f"must be {article}{kind}, not {type(value).__name__} {value!r} (dockerd would not start)"))
            continue
        if key in CHOICES and value not in CHOICES[key]:
            out.append((key, f"is {value!r}, not one of {', '.join(CHOICES[key])} (dockerd would not start)"))
        elif key in CIDRS and value:
            try:
                ipaddress.ip_interface(value)
                if "/" not in value:
                    raise ValueError
            except ValueError:
                out.append((key, f"is {value!r}, not an address/prefix like 172.26.0.1/16 (dockerd would not start)"))
        elif key in ADDRESSES and value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                out.append((key, f"is {value!r}, not an IP address (dockerd would not start)"))
        elif kind == INT and value < 0 and key != "oom-score-adjust":
            out.append((key, f"is {value}, must be 0 or more"))
    return out
