"""/etc/docker/daemon.json, merged: our keys go in, every key someone else set stays.

Pure functions, tested by value. Lists (registry-mirrors, insecure-registries) are unions in a stable order:
ours first, then theirs. Nested objects (runtimes) merge key by key. A scalar we manage wins.
"""

from __future__ import annotations

import json
from typing import Any

from .config import HostConfig

#: what `nvidia-ctk runtime configure --runtime=docker` adds (the toolkit's own default entry)
NVIDIA_RUNTIME = {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}


def ours(cfg: HostConfig) -> dict[str, Any]:
    """The daemon.json keys vlmfleet manages for a host (the configuration has checked that
    docker_daemon_options cannot replace any of them)."""
    out: dict[str, Any] = {}
    if cfg.docker_registry_mirrors:
        out["registry-mirrors"] = list(cfg.docker_registry_mirrors)
    if cfg.docker_insecure_registries:
        out["insecure-registries"] = list(cfg.docker_insecure_registries)
    out = merge(out, json.loads(json.dumps(dict(cfg.docker_daemon_options))))
    if cfg.nvidia_runtime:
        out = merge(out, {"runtimes": json.loads(json.dumps(NVIDIA_RUNTIME))})
    return out


def merge(existing: dict[str, Any], wanted: dict[str, Any], retired: dict[str, Any] | None = None) -> dict[str, Any]:
    """``existing`` with ``wanted`` merged in; nothing someone else set is lost. What vlmfleet itself set last
    time (``retired``, the previous run's ``wanted``) and no longer wants goes again: a top-level value still as
    vlmfleet left it, and list items vlmfleet added (an old registry mirror) — a value someone changed since stays.

    + retired: e.g. ``{"debug": True, "registry-mirrors": ["https://old.example"]}`` from the previous run's record
    """
    retired = retired or {}
    out: dict[str, Any] = {}
    for key, have in existing.items():
        old = retired.get(key)
        if isinstance(old, list) and isinstance(have, list):
            keep = wanted.get(key) if isinstance(wanted.get(key), list) else []
            have = [x for x in have if x not in old or x in keep]
            if not have and key not in wanted:
                continue
        elif key in retired and key not in wanted and old == have:
            continue
        out[key] = have
    for key, value in wanted.items():
        have = out.get(key)
        if isinstance(value, list) and isinstance(have, list):
            out[key] = value + [x for x in have if x not in value]
        elif isinstance(value, dict) and isinstance(have, dict):
            out[key] = merge(have, value)
        else:
            out[key] = value
    return out


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
