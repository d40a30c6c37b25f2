"""GPU MEMORY STAND-IN for the vlmfleet lab: what vLLM's memory profiler would find on a lab host's simulated GPUs.

There is no GPU in the lab. The serving stand-in (vllm_standin.py) asks this, through the hub stand-in's lab
control ``POST /_standin/gpu-memory``, whether its ``vllm serve`` flags fit the simulated GPUs of the host it runs
on, and prints vLLM's own startup lines and failure messages from the answer. The numbers are the planner's
memory model (vlmfleet.planner.evaluate) for the host's GPUs as its nvidia-smi stand-in reports them, less what
the lab says the planner cannot see (the host's ``/etc/vlmfleet-lab/gpus.json``):

    "used_by_others_mib": 2048   memory other processes hold when vLLM starts (seen by nvidia-smi's memory.used)
    "peak_extra_mib": 4096       profiling peak beyond the planner's estimate (it reduces the KV cache)

So a deploy whose plan fits can still fail at startup, with vLLM's real messages (FACTS.md), and the deploy's
startup ladder is exercised end to end. Never used outside the lab.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...catalog import model_with_config, models, vllm_version
from ...flags import wish_from_serve_args
from ...gpus import parse_nvidia_smi
from ...planner import GIB, evaluate
from ...wish import Wish
from . import nvidia_smi_standin as smi

QUERY = ["--query-gpu=index,name,memory.total,compute_cap,driver_version,pci.bus_id", "--format=csv,noheader,nounits"]


def inventory(gpus: dict):
    """The host's GPUs as preflight parses them from its nvidia-smi stand-in."""
    fields = QUERY[0].split("=", 1)[1].split(",")
    csv = "\n".join(", ".join(smi.field(gpus, i, g, f, False) for f in fields) for i, g in enumerate(gpus["gpus"]))
    return parse_nvidia_smi(csv, interconnect=gpus.get("topology"))


def find_model(path: str, config: dict):
    repo_dir = Path(path).name
    for m in models().values():
        if m.repo_dir == repo_dir:
            return model_with_config(m, config, f"{path}/config.json") if config else m
    raise LookupError(f"{path}: not a checkpoint of the catalog")


def profile(argv: list[str], config: dict, gpus: dict, version: str) -> dict:
    """vLLM's startup as the planner's model sees it on these GPUs, less what the planner cannot see.

    Returns ``{"ok": True, "log": [...]}`` or ``{"ok": False, "log": [...], "error": "<vLLM's message>"}``.
    """
    path, fields = wish_from_serve_args(argv)
    m = find_model(path, config)
    inv = inventory(gpus)
    ver = vllm_version(version)
    p = evaluate(m, inv, ver, Wish(**fields))
    if p.errors:
        return {"ok": False, "log": [], "error": "; ".join(str(e) for e in p.errors)}
    mem = p.memory
    others = int(gpus.get("used_by_others_mib", 0)) * 1024**2
    extra = int(gpus.get("peak_extra_mib", 0)) * 1024**2
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    log = [f"Model loading took {gib(mem.weights)} GiB memory"]
    util = float(p.resolved.gpu_memory_utilization)
    checks = ver.memory.startup_free_check and p.engine == "V1"
    free = mem.free_at_start - others
    if checks and free < mem.budget:
        return {"ok": False, "log": log, "error": (
            f"ValueError: Free memory on device cuda:0 ({gib(free)}/{gib(mem.total)} GiB) on startup is less than "
            f"desired GPU memory utilization ({util}, {gib(mem.budget)} GiB). Decrease GPU memory utilization or "
            "reduce GPU memory used by other processes.")}
    kv = mem.kv_cache - extra - (0 if checks else others)  # without the check, others' memory is charged
    if kv <= 0:
        return {"ok": False, "log": log, "error": (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
            "initializing the engine.")}
    tokens = kv // (p.kv_bytes_per_token * 16) * 16
    log.append(f"Available KV cache memory: {gib(kv)} GiB")
    log.append(f"GPU KV cache size: {tokens:,} tokens")
    if tokens < p.max_model_len:
        needed = p.max_model_len * p.kv_bytes_per_token
        return {"ok": False, "log": log, "error": (
            f"ValueError: To serve at least one request with the model's max seq len ({p.max_model_len}), "
            f"({gib(needed)} GiB KV cache is needed, which is larger than the available KV cache memory "
            f"({gib(kv)} GiB). Based on the available memory, the estimated maximum model length is {tokens}. Try "
            "increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")}
    log.append(f"Maximum concurrency for {p.max_model_len:,} tokens per request: {tokens / p.max_model_len:.2f}x")
    return {"ok": True, "log": log}


def answer(body: bytes, gpus_path: Path) -> dict:
    """The hub stand-in's ``POST /_standin/gpu-memory`` for the host whose gpus.json is ``gpus_path``."""
    req = json.loads(body or b"{}")
    gpus = json.loads(gpus_path.read_text())
    return profile(req["argv"], req.get("config") or {}, gpus, req["version"])


__all__ = ["answer", "profile"]
