"""What every stage shares: the host's settings, facts and preflight verdict, and two small operations.

pyinfra runs deploy code at planning time against the host *before* the run, so everything here reads facts
once per host and caches the verdict; operations express the state to reach.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path
from typing import Any

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import Sha256File
from pyinfra.facts.server import LinuxDistribution

from .. import settings as settings_mod
from .. import weights
from ..settings import image_ref
from ..facts import DockerImage, FreeBytes, GpuQuery, GpuTopology, JsonFile
from ..preflight import HostFacts, Verdict, check

_VERDICTS: dict[str, Verdict] = {}
DAEMON_JSON = "/etc/docker/daemon.json"


def host_settings() -> dict[str, Any]:
    """Defaults overlaid with this host's merged data (host > group > all.py)."""
    return settings_mod.resolve(host.data.dict())


def verdict() -> Verdict:
    """The preflight verdict for the current host (facts gathered once, then cached)."""
    if host.name in _VERDICTS:
        return _VERDICTS[host.name]
    data = host.data.dict()
    s = host_settings()
    dist = host.get_fact(LinuxDistribution) or {}
    meta = dist.get("release_meta") or {}
    weights_ready = False
    image_present = False
    config_json, config_path = None, ""
    if s.get("vlm_profile"):
        try:
            from ..catalog import model, profile

            folder = weights.dest(s, model(profile(s["vlm_profile"]).model_id))
            manifest = host.get_fact(JsonFile, path=f"{folder}/{weights.MANIFEST}")
            weights_ready = bool(manifest.get("exists") and manifest.get("valid"))
            if weights_ready:  # the verified checkpoint's own numbers win over the catalog's
                config_path = f"{folder}/config.json"
                cfg = host.get_fact(JsonFile, path=config_path)
                config_json = cfg.get("data") if cfg.get("valid") else None
        except Exception:  # noqa: BLE001 - a bad profile is reported by check() itself
            pass
    if settings_mod.validate(data) == []:
        image_present = bool(host.get_fact(DockerImage, ref=image_ref(s)))
    facts = HostFacts(
        os_id=(meta.get("ID") or str(dist.get("name") or "")).lower() or None,
        os_version=meta.get("VERSION_ID"),
        gpu_csv=host.get_fact(GpuQuery),
        gpu_topo=host.get_fact(GpuTopology),
        free_model_dir=host.get_fact(FreeBytes, path=str(s.get("model_dir") or "/")),
        free_docker=host.get_fact(FreeBytes, path=str(s.get("docker_data_root") or "/")),
        weights_ready=weights_ready,
        image_present=image_present,
        daemon_json=host.get_fact(JsonFile, path=DAEMON_JSON),
        config_json=config_json,
        config_path=f"{host.name}:{config_path}",
    )
    v = check(host.name, data, s, facts)
    _VERDICTS[host.name] = v
    return v


def fit_host(stage: str):
    """``(settings, plan)`` for a host that passed preflight; None (with a noop saying so) for one that did not —
    pyinfra has already failed it at the preflight gate, this keeps planning from building on a missing plan."""
    v = verdict()
    if not v.ok:
        host.noop(f"{stage} skipped: preflight did not pass")
        return None
    return host_settings(), v.plan


def reset_cache() -> None:
    _VERDICTS.clear()
    _CHANGES.clear()


# Operations of earlier stages that later stages react to (a new image or new weights restart the service).
_CHANGES: dict[str, dict[str, list]] = {}


def record_change(kind: str, op) -> None:
    """Remember an operation of this host whose change matters later, e.g. ``record_change("image", pull)``."""
    _CHANGES.setdefault(host.name, {}).setdefault(kind, []).append(op)


def recorded_changes(*kinds: str) -> list:
    per_host = _CHANGES.get(host.name, {})
    return [op for kind in kinds for op in per_host.get(kind, [])]


# ---- operations ------------------------------------------------------------------------------------------
@operation(is_idempotent=False)
def fail_host(reasons: list[str]):
    """Fail this host now, before any change, printing each reason on its own line.

    + reasons: e.g. ``["h2: data key 'api_port' must be int — fix: api_port = 8000"]``
    """
    import shlex

    text = "\n".join(reasons)
    yield f"printf '%s\\n' {shlex.quote(text)} >&2; exit 1"


@operation()
def secret_file(src: str, dest: str, mode: str = "600", line_format: str = "{secret}"):
    """Upload a secret from the control machine without ever printing it (not even with --diff).

    + src: local path of the secret, e.g. ``secrets/api-key``; its first line is the secret
    + dest: remote path in a root-only folder, e.g. ``/etc/vlmfleet/secrets/vllm-qwen7b.env``
    + line_format: the line written, e.g. ``"VLLM_API_KEY={secret}"`` for an env file
    """
    secret = Path(src).expanduser().read_text().splitlines()[0].strip()
    body = (line_format.format(secret=secret) + "\n").encode()
    want = hashlib.sha256(body).hexdigest()
    have = host.get_fact(Sha256File, path=dest)
    if have == want:
        host.noop(f"{dest} is already current (contents not shown)")
        return
    if have is not None:
        logger.info(f"    [{host.name}] {dest}: secret changed (contents not shown)")
    # The SSH user uploads into a 0700 folder of its own; root copies it into dest, whose folder is 0700 too
    # (callers create it), so no other user can read the secret at any moment.
    updir = "/var/tmp/vlmfleet-upload"
    yield f'install -d -m 0700 -o "${{SUDO_USER:-$(id -un)}}" {updir}'
    yield FileUploadCommand(BytesIO(body), dest, remote_temp_filename=f"{updir}/{want[:16]}")
    yield f"chown root:root {dest} && chmod {mode} {dest}"
