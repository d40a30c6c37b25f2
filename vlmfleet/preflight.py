"""Preflight: judge one host's facts against its settings and profile, before anything changes.

Pure Python: facts in (as plain values), a verdict out — the problems (each naming the key or fact and the fix)
and, when the host is fit, the plan every later stage renders from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .catalog import CatalogError, model, vllm_version
from .catalog import profile as catalog_profile
from .gpus import Inventory, InventoryError, parse_nvidia_smi
from .planner import Plan
from .profiles import plan_profile
from .settings import validate, wish_overrides

SUPPORTED_OS = {("debian", "12"), ("debian", "13"), ("ubuntu", "22.04"), ("ubuntu", "24.04")}


@dataclass
class HostFacts:
    """What preflight needs to know about a host (gathered by pyinfra facts)."""

    os_id: str | None  # "debian"
    os_version: str | None  # "12"
    gpu_csv: str | None  # NVIDIA_SMI_QUERY output; None: no nvidia-smi
    gpu_topo: str | None = None
    free_model_dir: int | None = None  # bytes
    free_docker: int | None = None  # bytes
    weights_ready: bool = False  # verified weights already on the host
    image_present: bool = False
    daemon_json: dict | None = None  # JsonFile fact of /etc/docker/daemon.json
    config_json: dict | None = None  # the verified checkpoint's config.json, when the weights are there
    config_path: str = ""


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    plan: Plan | None = None
    inventory: Inventory | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and self.plan is not None


def image_version_mismatch(image: str, version: str) -> str | None:
    """The image tag names a vLLM version other than vllm_version (e.g. ...:v0.8.2 with 0.33.0)."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    m = re.search(r"(?<![\d.])v?(\d+\.\d+\.\d+)", tag)
    if m and m.group(1) != version:
        return m.group(1)
    return None


def _secret_file_problems(host: str, key: str, path: str | None) -> list[str]:
    """A secret file named in data must exist on the control machine and hold a first line."""
    if not path:
        return []
    p = Path(path).expanduser()
    try:
        first = p.read_text().splitlines()[0].strip() if p.stat().st_size else ""
    except FileNotFoundError:
        return [f"{host}: data key {key!r} points at {path}, which does not exist on this (control) machine — "
                f"fix: write the secret into it, one line, mode 0600 (or unset {key})"]
    except (OSError, IndexError) as exc:
        return [f"{host}: data key {key!r}: cannot read {path} ({exc}) — fix: make it a readable one-line file"]
    if not first:
        return [f"{host}: data key {key!r}: {path} is empty — fix: put the secret on its first line"]
    return []


def select_gpus(inv: Inventory, devices: Any) -> Inventory:
    if devices == "all":
        return inv
    chosen = tuple(g for g in inv.gpus if g.index in devices)
    missing = sorted(set(devices) - {g.index for g in inv.gpus})
    if missing:
        raise InventoryError(f"gpu_devices {devices} names GPUs {missing} the host does not have "
                             f"(it has {[g.index for g in inv.gpus]})")
    return replace(inv, gpus=chosen)


def deadline_s(settings: dict[str, Any], model_id: str) -> int:
    if settings.get("health_deadline_s"):
        return int(settings["health_deadline_s"])
    return 1800 if model(model_id).params_b > 40 else 900


def check(host: str, data: dict[str, Any], settings: dict[str, Any], facts: HostFacts) -> Verdict:
    """Every reason this host cannot take the profile, each one line: "<host>: <what> — fix: <how>"."""
    v = Verdict()
    v.problems += [p.render(host) for p in validate(data)]
    if v.problems:
        return v  # bad data: judge nothing else on top of it

    for key in ("api_key_file", "hf_token_file"):
        v.problems += _secret_file_problems(host, key, settings.get(key))
    dj = facts.daemon_json or {}
    if dj.get("exists") and not dj.get("valid"):
        v.problems.append(f"{host}: /etc/docker/daemon.json is not valid JSON ({dj.get('error')}) — fix: repair it; "
                          "vlmfleet merges its keys into that file and never overwrites one it cannot read")
    if (facts.os_id, facts.os_version) not in SUPPORTED_OS:
        v.problems.append(f"{host}: OS {facts.os_id} {facts.os_version} is not supported — fix: use Debian 12/13 "
                          "or Ubuntu 22.04/24.04")
    profile_id = settings.get("vlm_profile")
    if not profile_id:
        v.problems.append(f"{host}: data key 'vlm_profile' is unset — fix: put the host in a profile group "
                          "(qwen7b, qwen72b_awq) or set vlm_profile in its host data")
        return v
    try:
        version = vllm_version(settings["vllm_version"])
    except CatalogError as exc:
        v.problems.append(f"{host}: data key 'vllm_version' {exc}")
        return v
    other = image_version_mismatch(settings["vllm_image"], version.version)
    if other:
        v.problems.append(f"{host}: data key 'vllm_image' {settings['vllm_image']!r} runs vLLM {other} but "
                          f"vllm_version is {version.version} — fix: set vllm_version = {other!r} (or change the image)")

    if facts.gpu_csv is None:
        v.problems.append(f"{host}: no NVIDIA GPU found (nvidia-smi is missing or failed) — fix: install the NVIDIA "
                          "driver on the host first; vlmfleet does not install drivers")
        return v
    try:
        inv = parse_nvidia_smi(facts.gpu_csv, facts.gpu_topo, settings.get("gpu_interconnect"))
        inv = select_gpus(inv, settings["gpu_devices"])
    except InventoryError as exc:
        v.problems.append(f"{host}: GPUs: {exc}")
        return v
    v.inventory = inv

    try:
        p = plan_profile(profile_id, inv, version, wish_overrides(settings), facts.config_json, facts.config_path)
    except CatalogError as exc:
        v.problems.append(f"{host}: data key 'vlm_profile' {exc}")
        return v
    if p.verdict != "fits":
        reasons = "; ".join(str(e) for e in p.errors) or "; ".join(n for n in p.notes if "KV" in n or "exceed" in n)
        fix = (f"{p.proposal.reason} ({', '.join(f'vllm_{k}={val!r}' if k != 'model' else f'{k}={val}' for k, val in p.proposal.changes.items())})"
               if p.proposal else "a larger GPU host or a smaller profile")
        v.problems.append(f"{host}: profile {profile_id} on {inv.describe()} with vLLM {version.version} "
                          f"{p.verdict}: {reasons} — fix: {fix}")
    else:
        v.plan = p

    m = model(catalog_profile(profile_id).model_id)
    weights_gb = settings.get("weights_disk_gb") or m.disk_gb * 1.05
    need_weights = 0 if facts.weights_ready else int(weights_gb * 1e9)
    need_image = 0 if facts.image_present else int(settings["image_disk_gb"] * 1e9)
    if facts.free_model_dir is not None and facts.free_model_dir < need_weights:
        v.problems.append(f"{host}: {settings['model_dir']} has {facts.free_model_dir / 1e9:.1f} GB free, the "
                          f"weights of {m.id} need {need_weights / 1e9:.1f} GB — fix: free disk or set model_dir")
    if facts.free_docker is not None and facts.free_docker < need_image:
        v.problems.append(f"{host}: {settings['docker_data_root']} has {facts.free_docker / 1e9:.1f} GB free, the "
                          f"image needs {need_image / 1e9:.0f} GB — fix: free disk or move docker_data_root")
    if v.plan and not v.problems:
        v.summary = (f"{inv.describe()}, {p.model.id} tp {p.tp} on vLLM {version.version}: fits, "
                     f"{p.kv_capacity_tokens} KV tokens ({p.concurrency:.1f} x {p.max_model_len})")
    return v
