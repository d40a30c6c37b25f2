"""pyinfra facts vlmfleet gathers on each host. Each returns raw, small values; the logic that judges them lives in
pure modules (gpus, preflight, dockerconfig, weights) so it is tested by value."""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase

from .config import UNIT_DIR, UNIT_MARKER
from .gpus import NVIDIA_SMI_QUERY, NVIDIA_SMI_TOPO


class GpuQuery(FactBase):
    """The preflight ``nvidia-smi --query-gpu=...``: ``{"csv": "0, NVIDIA A10, ..."}`` when it works,
    ``{"error": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver..."}`` when
    nvidia-smi runs and fails (no driver loaded), None without nvidia-smi."""

    requires_command = "nvidia-smi"

    def command(self) -> str:
        return f"out=$({NVIDIA_SMI_QUERY} 2>&1); echo \"rc=$?\"; printf '%s\\n' \"$out\""

    def process(self, output):
        lines = list(output)
        rc = lines.pop(0).strip() if lines and lines[0].startswith("rc=") else "rc=?"
        text = "\n".join(lines).strip()
        if rc == "rc=0" and text:
            return {"csv": text}
        return {"error": text or f"nvidia-smi exited with {rc[3:]} and printed nothing"}


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


class HostAddresses(FactBase):
    """The host's own IP addresses (every interface, IPv4 and IPv6), e.g. ``["127.0.0.1", "10.0.0.5", "::1"]``."""

    requires_command = "ip"
    default = list

    def command(self) -> str:
        return "ip -o addr show | awk '{print $4}'"

    def process(self, output):
        return [line.strip().split("/")[0] for line in output if line.strip()]


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


class VlmfleetUnits(FactBase):
    """Names of the unit files vlmfleet wrote on this host (first line ``# Managed by vlmfleet``), e.g.
    ``["vllm-qwen7b.service"]``: how the service stage finds a profile the host has left."""

    default = list  # pyinfra gives a fact with no output its default

    def command(self, unit_dir: str = UNIT_DIR, marker: str = UNIT_MARKER) -> str:
        return (f"for f in {shlex.quote(unit_dir)}/vllm-*.service; do [ -f \"$f\" ] && "
                f"head -n 1 \"$f\" | grep -qF {shlex.quote(marker)} && basename \"$f\"; done; true")

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip().endswith(".service"))


class CommandJson(FactBase):
    """Run a command that prints one JSON object; None when it prints nothing parseable."""

    def command(self, command: str) -> str:
        return f"( {command} ) 2>/dev/null || true"

    def process(self, output):
        try:
            return json.loads("\n".join(output))
        except json.JSONDecodeError:
            return None


class ReleaseStatus(FactBase):
    """What ``vlmfleet-release status`` says of one served profile, with the sha256 of the live unit file:
    ``{"active": {"id": "3f2a...", "rung": 0, ...}, "good": {...}, "previous": {...}, "last": {<history line>},
    "lock": {"who": ..., "since": ..., "run": ...} or None, "unit_sha256": "..."}``; ``{}`` before the first
    release (no tool yet)."""

    def command(self, release_bin: str, release_dir: str, lock_file: str, unit_path: str) -> str:
        b, d, lk, u = (shlex.quote(x) for x in (release_bin, release_dir, lock_file, unit_path))
        return (f"if [ -x {b} ]; then {b} status --dir {d} --lock {lk} 2>/dev/null || echo '{{}}'; "
                f"else echo '{{}}'; fi; sha256sum {u} 2>/dev/null | cut -c1-64; true")

    def process(self, output):
        lines = [line for line in output if line.strip()]
        try:
            out = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            out = {}
        out["unit_sha256"] = lines[1].strip() if len(lines) > 1 else None
        return out


class NvidiaPci(FactBase):
    """The NVIDIA PCI devices as ``lspci -Dnmm -d 10de:`` prints them (the sysfs loop where pciutils is not
    installed): GPUs and NVSwitches, with or without a driver; parsed by vlmfleet.driver.parse_pci."""

    def command(self) -> str:
        from .driver import PCI_QUERY

        return PCI_QUERY

    def process(self, output):
        return "\n".join(output)


class NvidiaDriverState(FactBase):
    """The driver's state in sections (vlmfleet.driver.STATE_SCRIPT: kernel, packages, holds, nouveau, the loaded
    module, the persistence and fabric manager units); parsed by vlmfleet.driver.parse_state."""

    def command(self) -> str:
        from .driver import STATE_SCRIPT

        return STATE_SCRIPT

    def process(self, output):
        return "\n".join(output)


class KeyringFingerprint(FactBase):
    """The fingerprint of the first key in an apt keyring file (binary or armoured), None when there is none."""

    requires_command = "gpg"

    def command(self, path: str) -> str:
        p = shlex.quote(path)
        return (f"[ -f {p} ] && gpg --show-keys --with-colons {p} 2>/dev/null "
                "| awk -F: '$1 == \"fpr\" {print $10; exit}' || true")

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None
