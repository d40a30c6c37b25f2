"""Render ``vllm serve`` arguments and the container environment from a plan, for the image's vLLM version.

Pure functions: a plan in, lists and dicts out, tested by exact value. Secrets never appear here: the API key
reaches vLLM as ``VLLM_API_KEY`` from a root-only env file, never as ``--api-key`` in argv.
"""

from __future__ import annotations

import json
import shlex

from .catalog import VllmVersion
from .planner import Plan

#: Environment every served model gets.
BASE_ENV = {
    # fewer fragmentation OOMs under changing batch shapes (FACTS: a real, useful setting)
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    # weights are local and verified; never reach for a hub at serve time
    "HF_HUB_OFFLINE": "1",
}

#: NCCL settings by interconnect class, only when tensor parallel > 1. Never blanket: P2P off hurts NVLink.
NCCL_ENV = {
    "nvlink": {},
    "pcie": {},
    "pcie_no_p2p": {"NCCL_P2P_DISABLE": "1"},
}


def limit_mm_value(version: VllmVersion, images: int, videos: int) -> str:
    """``image=5,video=0`` (0.8.2) or ``{"image": 5, "video": 0}`` (0.10 and later: JSON only)."""
    if version.limit_mm_syntax == "kv":
        return f"image={images},video={videos}"
    return json.dumps({"image": images, "video": videos}, separators=(",", ":"))


def serve_args(plan: Plan, model_path: str, served_name: str, host: str = "0.0.0.0", port: int = 8000) -> list[str]:
    """The full ``vllm serve`` argv for a plan.

    + model_path: where the weights are inside the container, e.g. ``/models/Qwen2.5-VL-7B-Instruct``
    + served_name: the name clients send as "model", e.g. ``qwen2.5-vl-7b-instruct``
    """
    r = plan.resolved
    v = plan.version
    args = [
        "vllm", "serve", model_path,
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(plan.tp),
        "--dtype", plan.dtype,
        # -1 ("auto", 0.33): vLLM sizes it at startup; the planner's estimate stays in the plan record, so a
        # planner update does not rewrite the unit
        "--max-model-len", "auto" if plan.wish.max_model_len == -1 else str(plan.max_model_len),
        "--max-num-seqs", str(r.max_num_seqs),
        "--max-num-batched-tokens", str(r.max_num_batched_tokens),
        "--gpu-memory-utilization", f"{float(r.gpu_memory_utilization):.2f}",
        "--limit-mm-per-prompt", limit_mm_value(v, int(r.limit_images), int(r.limit_videos)),
    ]
    if int(r.max_pixels) != v.default_max_pixels:
        args += ["--mm-processor-kwargs", json.dumps({"max_pixels": int(r.max_pixels)}, separators=(",", ":"))]
    if r.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", r.kv_cache_dtype]
    if plan.quantization:
        args += ["--quantization", plan.quantization]
    if r.enforce_eager:
        args.append("--enforce-eager")
    if v.tables == "0.8.2":  # 0.8.2 and the versions planned with its flag table; 0.33 logs no requests by default
        args.append("--disable-log-requests")  # prompts stay out of the journal
    return args


def serve_env(plan: Plan) -> dict[str, str]:
    """Environment for the container: allocator, offline hub, and NCCL settings for the interconnect."""
    env = dict(BASE_ENV)
    if plan.tp > 1:
        env.update(NCCL_ENV[plan.inventory.interconnect])
    return env


def command_line(args: list[str]) -> str:
    """One shell-quoted line, for humans (docs, plan output)."""
    return shlex.join(args)


def wish_from_serve_args(args: list[str]) -> tuple[str, dict]:
    """The model path and the planner wish fields a ``vllm serve`` argv asks for: the inverse of
    ``serve_args`` (the lab's serving stand-in sizes memory from it, as vLLM would from its flags).

    + args: e.g. ``["vllm", "serve", "/models/Qwen2.5-VL-7B-Instruct", "--max-model-len", "32768", ...]``
    Returns ``("/models/Qwen2.5-VL-7B-Instruct", {"max_model_len": 32768, ...})``: only what the argv sets.
    """
    from .vllm_flags import parse_limits

    words = list(args)
    if words[:2] == ["vllm", "serve"]:
        words = words[2:]
    model, wish = "", {}
    ints = {"--tensor-parallel-size": "tp", "--max-num-seqs": "max_num_seqs",
            "--max-num-batched-tokens": "max_num_batched_tokens"}
    i = 0
    while i < len(words):
        a = words[i]
        val = words[i + 1] if i + 1 < len(words) else ""
        if not a.startswith("-"):
            model = model or a
            i += 1
            continue
        if a == "--enforce-eager":
            wish["enforce_eager"] = True
        elif a in ints:
            wish[ints[a]] = int(val)
        elif a == "--max-model-len":
            wish["max_model_len"] = -1 if val in ("auto", "-1") else int(val)
        elif a == "--gpu-memory-utilization":
            wish["gpu_memory_utilization"] = float(val)
        elif a == "--kv-cache-dtype":
            wish["kv_cache_dtype"] = val
        elif a == "--dtype":
            wish["dtype"] = val
        elif a == "--quantization":
            wish["quantization"] = val
        elif a == "--limit-mm-per-prompt":
            limits = parse_limits(val)
            wish["limit_images"], wish["limit_videos"] = limits.get("image", 0), limits.get("video", 0)
        elif a == "--mm-processor-kwargs":
            kwargs = json.loads(val)
            if "max_pixels" in kwargs:
                wish["max_pixels"] = int(kwargs["max_pixels"])
        elif a == "--model":
            model = val
        if a in ("--enforce-eager", "--disable-log-requests", "--trust-remote-code"):
            i += 1
        else:
            i += 2
    return model, wish
