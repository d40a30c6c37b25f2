"""Validity rules: what vLLM refuses (or the planner cannot vouch for) before any memory is counted.

Pure Python. ``check`` takes a resolved wish (every value concrete) and returns the errors and warnings, each a
``Finding`` naming the wish key and its fix, plus the dtype, ``--quantization`` and KV-cache dtype vLLM will run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .arch import tp_problems, valid_tps
from .catalog import CatalogError, Model, VllmVersion, driver_at_least, model
from .gpus import Inventory
from .wish import Finding, Wish


@dataclass
class Validity:
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    dtype: str = "float16"  # float16 | bfloat16, what the model runs in
    quantization: str | None = None  # the --quantization kernel vLLM uses (awq_marlin | awq), None for bf16
    kv_cache_dtype: str = "auto"


def awq_sibling(m: Model) -> Model | None:
    """The AWQ checkpoint of a 16-bit model (``qwen2.5-vl-72b-instruct`` → ``...-awq``), if the catalog has one."""
    if m.quantization == "awq":
        return None
    try:
        return model(m.id + "-awq")
    except CatalogError:
        return None


def unverified_intermediate_alternative(m: Model) -> Model | None:
    """The same AWQ model with its base model's intermediate_size, when the catalog's value is unverified."""
    if m.quantization != "awq" or "text.intermediate" not in m.verify:
        return None
    try:
        base = model(m.id.removesuffix("-awq"))
    except CatalogError:
        return None
    if base.text.intermediate == m.text.intermediate:
        return None
    return replace(m, text=replace(m.text, intermediate=base.text.intermediate))


def check(m: Model, inv: Inventory, version: VllmVersion, r: Wish, engine: str, refused: set[str]) -> Validity:
    """Every rule against the resolved wish ``r``; ``refused`` names the wish keys already found invalid as asked
    (their stand-in values are not checked again)."""
    out = Validity()
    _tensor_parallel(m, inv, r, refused, out)
    _dtype(m, inv, version, r, out)
    _quantization(m, inv, r, out)
    _kv_cache_dtype(inv, version, r, out)
    _lengths(m, version, r, engine, refused, out)
    if not 0.05 <= float(r.gpu_memory_utilization) <= 1.0:
        out.errors.append(Finding("gpu_memory_utilization", f"gpu_memory_utilization {r.gpu_memory_utilization} "
                                  "is outside (0, 1]", "0.90"))
    if inv.driver and version.min_driver and not driver_at_least(inv.driver, version.min_driver):
        out.errors.append(Finding("driver", f"driver {inv.driver} is older than {version.min_driver}, the minimum "
                                  f"for vLLM {version.version}'s CUDA {version.cuda} image",
                                  f"driver >= {version.min_driver}"))
    return out


def _tensor_parallel(m: Model, inv: Inventory, r: Wish, refused: set[str], out: Validity) -> None:
    tp = int(r.tp)
    if tp > inv.count:
        out.errors.append(Finding("tp", f"tensor_parallel_size {tp} needs {tp} GPUs, the host has {inv.count}",
                                  f"tp <= {inv.count}"))
    problems = [] if "tp" in refused else tp_problems(m, tp)
    if problems:
        ok = valid_tps(m, inv.count)
        out.errors.append(Finding("tp", f"tensor_parallel_size {tp} is invalid for {m.id}: " + "; ".join(problems),
                                  f"tp in {ok}" if ok else "a model with fewer heads, or more GPUs"))
    for f in m.verify:
        out.warnings.append(Finding("config", f"{f} is the catalog's value, not confirmed by a downloaded "
                                    "config.json", "plan with --config PATH/config.json (the weights stage does this)"))
    alt = unverified_intermediate_alternative(m)
    if alt and not problems and "tp" not in refused and tp_problems(alt, tp):
        out.warnings.append(Finding("awq-tp", f"tp {tp} relies on intermediate_size {m.text.intermediate} (the AWQ "
                                    f"repository's, per the catalog); a checkpoint with {alt.text.intermediate} only "
                                    f"aligns to group_size at tp {valid_tps(alt, inv.count)}",
                                    "confirm with --config PATH/config.json before rolling out"))


def _dtype(m: Model, inv: Inventory, version: VllmVersion, r: Wish, out: Validity) -> None:
    kind = inv.kind
    ckpt = "float16" if m.quantization == "awq" else m.torch_dtype
    want = r.dtype
    if want == "auto":
        out.dtype = ckpt
        if ckpt == "bfloat16" and not kind.bf16:
            if not version.memory.auto_dtype_fallback:
                out.errors.append(Finding("dtype", f"--dtype auto picks the checkpoint's bfloat16, which {kind.id} "
                                          f"(cc {kind.cc}) lacks: vLLM {version.version} refuses to start "
                                          "(from 0.9.2 vLLM falls back to float16 itself)", "dtype: float16"))
            out.dtype = "float16"
    elif want in ("float16", "half"):
        out.dtype = "float16"
    elif want == "bfloat16":
        out.dtype = "bfloat16"
        if not kind.bf16:
            out.errors.append(Finding("dtype", f"bfloat16 needs compute capability >= 8.0; {kind.id} has {kind.cc}",
                                      "dtype: float16"))
        elif m.quantization == "awq" and kind.awq_kernel == "awq":
            out.errors.append(Finding("dtype", "the plain awq kernel runs float16 only (awq_marlin, cc >= 8.0, "
                                      "runs bfloat16 too)", "dtype: float16"))
    else:
        out.errors.append(Finding("dtype", f"dtype {want!r} is not auto, float16 or bfloat16", "dtype: auto"))
        out.dtype = ckpt


def _quantization(m: Model, inv: Inventory, r: Wish, out: Validity) -> None:
    kind = inv.kind
    q = r.quantization
    if q:
        if m.quantization != "awq" and q.startswith("awq"):
            sib = awq_sibling(m)
            out.errors.append(Finding("quantization", f"--quantization {q} on {m.hf}, which is not an AWQ "
                                      "checkpoint: vLLM fails to load its weights",
                                      "drop the flag" + (f", or serve {sib.id}" if sib else "")))
        elif m.quantization != "awq":
            out.errors.append(Finding("quantization", f"--quantization {q} on {m.hf}, a {m.torch_dtype} checkpoint "
                                      f"without {q} weights: vLLM fails to load it (or quantizes it in flight, "
                                      "which vlmfleet does not plan)", "drop the flag"))
        elif q not in ("awq", "awq_marlin"):
            out.errors.append(Finding("quantization", f"--quantization {q} does not match the checkpoint's awq",
                                      "quantization: unset (vLLM detects awq)"))
        elif q == "awq_marlin" and kind.awq_kernel != "awq_marlin":
            out.errors.append(Finding("quantization", f"awq_marlin needs compute capability >= 8.0; {kind.id} has "
                                      f"{kind.cc}", "quantization: awq"))
        elif q == "awq" and kind.awq_kernel == "awq_marlin":
            out.warnings.append(Finding("quantization", f"--quantization awq forces the slow awq kernel on "
                                        f"{kind.id}; vLLM picks awq_marlin when the flag is left out",
                                        "quantization: awq_marlin"))
    if m.quantization == "awq":
        out.quantization = kind.awq_kernel


def _kv_cache_dtype(inv: Inventory, version: VllmVersion, r: Wish, out: Validity) -> None:
    kind = inv.kind
    kv = r.kv_cache_dtype
    if kv not in version.kv_cache_dtypes:
        out.errors.append(Finding("kv_cache_dtype", f"--kv-cache-dtype {kv} is not accepted by vLLM {version.version}"
                                  f" (choices: {', '.join(version.kv_cache_dtypes)})", "kv_cache_dtype: auto"))
        kv = "auto"
    elif kv.startswith("fp8"):
        status = kind.fp8_kv.get(version.tables, "no")
        if status == "no":
            out.errors.append(Finding("kv_cache_dtype", f"fp8 KV cache is not supported on {kind.id} (cc {kind.cc}) "
                                      f"in vLLM {version.version}", "kv_cache_dtype: auto"))
        elif status == "risky" and kind.cc_tuple < (8, 0):
            out.warnings.append(Finding("kv_cache_dtype", f"fp8 KV cache on {kind.id} (cc {kind.cc}): vLLM "
                                        f"{version.version} runs it on V0 + XFormers without a compute-capability "
                                        "check, untested on this hardware", "kv_cache_dtype: auto"))
        elif status == "risky":
            out.warnings.append(Finding("kv_cache_dtype", f"fp8 KV cache on {kind.id} is known to misbehave in some "
                                        f"vLLM {version.version} builds (e.g. vllm#26431 on sm86)",
                                        "kv_cache_dtype: auto"))
    out.kv_cache_dtype = kv


def _lengths(m: Model, version: VllmVersion, r: Wish, engine: str, refused: set[str], out: Validity) -> None:
    max_len = int(r.max_model_len)
    if max_len > m.text.max_position_embeddings:
        out.errors.append(Finding("max_model_len", f"max_model_len {max_len} exceeds the model's "
                                  f"max_position_embeddings {m.text.max_position_embeddings}",
                                  f"max_model_len <= {m.text.max_position_embeddings}"))
    if engine == "V0" and not refused & {"max_model_len", "max_num_batched_tokens"} \
            and int(r.max_num_batched_tokens) < max_len:
        out.errors.append(Finding("max_num_batched_tokens",
                                  f"vLLM {version.version} runs the V0 engine here (no chunked prefill for "
                                  f"multimodal models): max_num_batched_tokens {r.max_num_batched_tokens} < "
                                  f"max_model_len {max_len} is refused", f"max_num_batched_tokens >= {max_len}"))
    if not refused & {"max_num_seqs", "max_num_batched_tokens"} \
            and int(r.max_num_batched_tokens) < int(r.max_num_seqs):
        out.errors.append(Finding("max_num_batched_tokens", f"max_num_batched_tokens {r.max_num_batched_tokens} < "
                                  f"max_num_seqs {r.max_num_seqs} is refused by vLLM",
                                  f"max_num_batched_tokens >= {r.max_num_seqs}"))
