"""pyinfra facts vlmfleet gathers on each host. Each returns raw, small values; the logic that judges them lives in
pure modules (gpus, preflight, dockerconfig, weights) so it is tested by value."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from .gpus import NVIDIA_SMI_QUERY, NVIDIA_SMI_TOPO


class GpuQuery(FactBase):
    """Output of the preflight ``nvidia-smi --query-gpu=...`` (CSV text), or None without nvidia-smi/driver."""

    requires_command = "nvidia-smi"

    def command(self) -> str:
        return f"{NVIDIA_SMI_QUERY} 2>&1 || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return text or None


class GpuTopology(FactBase):
    """``nvidia-smi topo -m`` text, or None."""

    requires_command = "nvidia-smi"

    def command(self) -> str:
        return f"{NVIDIA_SMI_TOPO} 2>/dev/null || true"

    def process(self, output):
        return "\n".join(output) or None


class FreeBytes(FactBase):
    """Bytes available to the filesystem that holds ``path`` (or its nearest existing parent)."""

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return (f"p={p}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
                "df -P -B1 \"$p\" | awk 'NR==2 {print $4}'")

    def process(self, output):
        try:
            return int(output[0].strip())
        except (IndexError, ValueError):
            return None


class JsonFile(FactBase):
    """A JSON file: ``{"exists": False}``, ``{"exists": True, "valid": True, "data": {...}}`` or
    ``{"exists": True, "valid": False, "error": "..."}``."""

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return f"if [ -f {p} ]; then echo EXISTS; cat {p}; else echo MISSING; fi"

    def process(self, output):
        if not output or output[0] != "EXISTS":
            return {"exists": False}
        text = "\n".join(output[1:])
        if not text.strip():
            return {"exists": True, "valid": True, "data": {}}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return {"exists": True, "valid": False, "error": f"{exc.msg} at line {exc.lineno}"}
        if not isinstance(data, dict):
            return {"exists": True, "valid": False, "error": "top level is not an object"}
        return {"exists": True, "valid": True, "data": data}


class DockerImage(FactBase):
    """``{"id": "sha256:...", "repo_digests": [...]}`` for a local image reference, or None."""

    requires_command = "docker"

    def command(self, ref: str) -> str:
        return (f"docker image inspect --format '{{{{.Id}}}} {{{{json .RepoDigests}}}}' {shlex.quote(ref)} "
                "2>/dev/null || true")

    def process(self, output):
        line = "\n".join(output).strip()
        if not line.startswith("sha256:"):
            return None
        image_id, _, digests = line.partition(" ")
        try:
            repo_digests = json.loads(digests) or []
        except json.JSONDecodeError:
            repo_digests = []
        return {"id": image_id, "repo_digests": repo_digests}


class ContainerState(FactBase):
    """``{"running": bool, "started_at": str, "image": str}`` of a named container, or None."""

    requires_command = "docker"

    def command(self, container: str) -> str:
        return (f"docker inspect --format '{{{{.State.Running}}}} {{{{.State.StartedAt}}}} {{{{.Image}}}}' "
                f"{shlex.quote(container)} 2>/dev/null || true")

    def process(self, output):
        parts = "\n".join(output).split()
        if len(parts) != 3:
            return None
        return {"running": parts[0] == "true", "started_at": parts[1], "image": parts[2]}


class CommandJson(FactBase):
    """Run a command that prints one JSON object; None when it prints nothing parseable."""

    def command(self, command: str) -> str:
        return f"{command} 2>/dev/null || true"

    def process(self, output):
        try:
            return json.loads("\n".join(output))
        except json.JSONDecodeError:
            return None
