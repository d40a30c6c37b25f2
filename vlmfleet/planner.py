"""The VRAM planner: what a Qwen2.5-VL profile needs per GPU under vLLM, whether it fits, and what to change.

Pure Python, no pyinfra. Exact where vLLM's arithmetic is exact (weights from the architecture, KV bytes per
token, KV capacity in 16-token blocks, tensor-parallel and AWQ divisibility); an estimate where vLLM measures
(the activation peak of its profiling pass, CUDA context, NCCL and CUDA-graph memory) — those constants live in
catalog/vllm.yaml and docs/planner.md says how they are counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .catalog import GIB, MIB, CatalogError, Model, VllmVersion, driver_at_least, model, overheads
from .gpus import Inventory

BLOCK_SIZE = 16
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
KV_DTYPE_BYTES = {"auto": None, "float16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}


# ---- inputs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wish:
    """What a profile asks for. None means "the version's default" (resolved in the plan).

    + max_model_len: context length, e.g. 32768; None = the model's 128000; -1 = "auto" (0.33: largest that fits)
    + max_num_seqs / max_num_batched_tokens: scheduler limits
    + limit_images / limit_videos: per-prompt multimodal limits (None = version default: 1 in 0.8.2, 999 in 0.33)
    + max_pixels: largest image the processor keeps (None = 12,845,056 = 16,384 tokens)
    + gpu_memory_utilization: fraction of each GPU's total memory for this instance
    + kv_cache_dtype: auto | fp8 | fp8_e4m3 | fp8_e5m2 ...
    + tp: tensor parallel size (None = every GPU of the inventory)
    + dtype: auto | float16 | bfloat16
    + quantization: what the operator wants passed to --quantization (None = let vLLM detect it)
    + enforce_eager: no CUDA graphs
    """

    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    limit_images: int | None = None
    limit_videos: int | None = None
    max_pixels: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "auto"
    tp: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False


@dataclass(frozen=True)
class Finding:
    """One reason: ``key`` names the wish field (or "gpu", "driver") it is about."""

    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.message}" + (f" — fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Memory:
    """Per-GPU memory, in bytes."""

    total: int
    budget: int  # total x utilisation
    weights: int
    activation: int  # profiling peak above the weights
    encoder_peak: int
    lm_peak: int
    non_torch: int
    cudagraph: int  # estimated graph memory (counted against the budget only where the version does)
    kv_cache: int  # what is left for the KV cache (negative: does not fit)


@dataclass
class Plan:
    model: Model
    inventory: Inventory
    version: VllmVersion
    wish: Wish  # as asked
    resolved: Wish  # every value concrete (defaults filled in, corrections applied)
    engine: str  # V1 | V0
    dtype: str  # float16 | bfloat16
    quantization: str | None  # the --quantization value rendered (None: not passed)
    memory: Memory
    kv_bytes_per_token: int  # per GPU, for the resolved kv cache dtype
    kv_bytes_per_token_model: int  # whole model (all GPUs), for the record
    kv_capacity_tokens: int
    image_tokens: int  # LLM tokens of one max-size image
    profile_mm_tokens: int  # LLM tokens the vision encoder profiles
    errors: list[Finding] = field(default_factory=list)  # invalid: vLLM refuses or fails
    warnings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    proposal: "Proposal | None" = None

    @property
    def tp(self) -> int:
        return int(self.resolved.tp or 1)

    @property
    def max_model_len(self) -> int:
        return int(self.resolved.max_model_len or 0)

    @property
    def fits_one_request(self) -> bool:
        return self.memory.kv_cache > 0 and self.kv_capacity_tokens >= self.max_model_len

    @property
    def concurrency(self) -> float:
        return self.kv_capacity_tokens / self.max_model_len if self.max_model_len else 0.0

    @property
    def verdict(self) -> str:
        if self.errors:
            return "invalid"
        return "fits" if self.fits_one_request else "does not fit"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.id,
            "config_source": self.model.source,
            "gpus": self.inventory.describe(),
            "vllm": self.version.version,
            "engine": self.engine,
            "verdict": self.verdict,
            "tp": self.tp,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "wish": asdict(self.wish),
            "resolved": asdict(self.resolved),
            "memory_per_gpu_bytes": asdict(self.memory),
            "kv_bytes_per_token_per_gpu": self.kv_bytes_per_token,
            "kv_bytes_per_token_model": self.kv_bytes_per_token_model,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "max_concurrent_max_length_requests": round(self.concurrency, 2),
            "image_tokens_max": self.image_tokens,
            "profile_mm_tokens": self.profile_mm_tokens,
            "errors": [str(f) for f in self.errors],
            "warnings": [str(f) for f in self.warnings],
            "notes": self.notes,
            "proposal": self.proposal.to_dict() if self.proposal else None,
        }


@dataclass
class Proposal:
    """The smallest change (in the seed's OOM-ladder order) that turns this plan into one that fits."""

    changes: dict[str, Any]  # wish field -> new value
    reason: str
    plan: Plan
    model_id: str | None = None  # a different checkpoint, when the change is "use the AWQ one"

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "reason": self.reason, "model": self.model_id or self.plan.model.id,
                "verdict": self.plan.verdict, "kv_capacity_tokens": self.plan.kv_capacity_tokens,
                "max_model_len": self.plan.max_model_len}


# ---- architecture arithmetic (exact) ---------------------------------------------------------------------
def kv_heads_per_gpu(m: Model, tp: int) -> int:
    """vLLM's rule: kv heads split across ranks, replicated when tp > kv heads."""
    return max(1, m.text.kv_heads // tp)


def kv_bytes_per_token(m: Model, tp: int = 1, kv_dtype_bytes: int = 2) -> int:
    """2 (K and V) x layers x kv heads per GPU x head_dim x bytes: 57,344 for 7B fp16 at tp 1."""
    return 2 * m.text.layers * kv_heads_per_gpu(m, tp) * m.text.head_dim * kv_dtype_bytes


def _linear(inp: int, out: int, bias: bool, quant: tuple[int, int] | None) -> int:
    """Bytes of one linear layer: fp16/bf16, or AWQ (packed 4-bit weights, fp16 scales, packed zeros per group)."""
    if quant is None:
        return 2 * (inp * out + (out if bias else 0))
    bits, group = quant
    groups = math.ceil(inp / group)
    return inp * out * bits // 8 + groups * out * 2 + groups * out * bits // 8 + (2 * out if bias else 0)


def weight_bytes(m: Model, tp: int = 1) -> int:
    """Weight bytes on each GPU: sharded layers / tp, norms replicated. Vision and embeddings stay 16-bit."""
    t, v = m.text, m.vision
    quant = (m.awq.bits, m.awq.group_size) if m.quantization == "awq" and m.awq else None
    q_out, kv_out = t.heads * t.head_dim, t.kv_heads * t.head_dim
    layer = (_linear(t.hidden, q_out, True, quant) + 2 * _linear(t.hidden, kv_out, True, quant)
             + _linear(q_out, t.hidden, False, quant) + 3 * _linear(t.hidden, t.intermediate, False, quant))
    embed = 2 * t.vocab * t.hidden * (1 if t.tie_embeddings else 2)
    vq = None if (m.awq and "visual" in m.awq.modules_to_not_convert) or quant is None else quant
    block = (_linear(v.hidden, 3 * v.hidden, True, vq) + _linear(v.hidden, v.hidden, True, vq)
             + 2 * _linear(v.hidden, v.intermediate, True, vq) + _linear(v.intermediate, v.hidden, True, vq))
    merged = v.hidden * v.spatial_merge**2
    vision = (2 * 3 * v.temporal_patch * v.patch**2 * v.hidden + v.depth * block
              + _linear(merged, merged, True, None) + _linear(merged, v.out_hidden, True, None))
    sharded = t.layers * layer + embed + vision
    replicated = 2 * (t.layers * 2 * t.hidden + t.hidden + v.depth * 2 * v.hidden + v.hidden)
    return math.ceil(sharded / tp) + replicated


def tp_problems(m: Model, tp: int) -> list[str]:
    """Every dimension that tensor parallel size ``tp`` cannot split for this model (empty: tp is valid)."""
    t, v = m.text, m.vision
    out = []
    if t.heads % tp:
        out.append(f"{t.heads} attention heads are not divisible by {tp}")
    if t.kv_heads % tp and tp % t.kv_heads:
        out.append(f"{t.kv_heads} KV heads neither divide nor are divisible by {tp}")
    if v.heads % tp:
        out.append(f"{v.heads} vision heads are not divisible by {tp}")
    if v.intermediate % tp:
        out.append(f"the vision MLP width {v.intermediate} is not divisible by {tp}")
    if m.quantization == "awq" and m.awq:
        g = m.awq.group_size
        if t.intermediate % tp or (t.intermediate // tp) % g:
            out.append(f"AWQ: intermediate_size {t.intermediate} / tp {tp} = {t.intermediate / tp:g} "
                       f"is not a multiple of group_size {g}")
        o_in = t.heads * t.head_dim
        if o_in % tp or (o_in // tp) % g:
            out.append(f"AWQ: o_proj input {o_in} / tp {tp} is not a multiple of group_size {g}")
    return out


def valid_tps(m: Model, max_gpus: int) -> list[int]:
    return [tp for tp in range(1, max_gpus + 1) if not tp_problems(m, tp)]


def image_tokens(m: Model, max_pixels: int) -> int:
    """LLM tokens of the largest image the processor keeps: one per 28x28 pixels (16,384 at 12,845,056)."""
    return max(1, max_pixels // m.vision.pixels_per_token)


def smart_resize_tokens(m: Model, width: int, height: int, max_pixels: int = 12845056, min_pixels: int = 3136) -> int:
    """Tokens of one image after Qwen2.5-VL's resize to multiples of 28 (1024x1024 → 1,369)."""
    f = m.vision.patch * m.vision.spatial_merge
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h, w = math.floor(height / beta / f) * f, math.floor(width / beta / f) * f
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    return (h // f) * (w // f)


# ---- profiling estimate ------------------------------------------------------------------------------------
def video_item_tokens(version: VllmVersion, seq_len: int, n_img: int, n_vid: int, img_tok: int) -> int:
    """Tokens of the dummy video vLLM profiles (qwen2_vl.py get_num_frames_with_most_features)."""
    if n_vid <= 0:
        return 0
    budget = seq_len - (n_img * img_tok if version.video_frames_after_images else 0)
    total_frames = 2 * (budget // img_tok) if budget >= img_tok else 0
    frames = max(min(total_frames // max(n_vid, 1), version.max_frames_per_video), 1)
    return math.ceil(frames / 2) * img_tok


def encoder_bytes(m: Model, tp: int, mm_tokens: int, dtype_bytes: int) -> int:
    """Peak of the vision encoder on ``mm_tokens`` LLM tokens (4 patches each): per patch the residual stream,
    the normed input and the MLP's gate/up/act tensors, plus the fp32 + 16-bit pixel values."""
    v = m.vision
    patches = mm_tokens * v.spatial_merge**2
    per_patch = dtype_bytes * (4 * v.hidden + (3 * v.hidden + 3 * v.intermediate) // tp)
    pixels = 3 * v.temporal_patch * v.patch**2 * (4 + dtype_bytes)
    return patches * (per_patch + pixels)


def lm_bytes(m: Model, tp: int, tokens: int, seqs: int, dtype_bytes: int) -> int:
    """Peak of the decoder's dummy forward over ``tokens`` tokens plus fp32 logits of ``seqs`` sampled rows."""
    t = m.text
    per_token = dtype_bytes * (4 * t.hidden + ((t.heads + 2 * t.kv_heads) * t.head_dim + 3 * t.intermediate) // tp)
    logits = min(seqs, tokens) * t.vocab * 4 * 2
    return tokens * per_token + logits


# ---- the plan ----------------------------------------------------------------------------------------------
#: Wish fields that are whole numbers, with the smallest value vLLM accepts and the name vLLM gives them.
#: The range vLLM (and vlmfleet) accepts for each whole-number wish: (smallest, largest). One table for the
#: planner, ``vlmfleet plan``'s options and the data keys (vlmfleet.config).
LIMITS = {
    "tp": (1, 64),
    "max_model_len": (1, 10_000_000),
    "max_num_seqs": (1, 65536),
    "max_num_batched_tokens": (1, 1_048_576),
    "max_pixels": (3136, 4 * 12845056),  # 3136 = Qwen2.5-VL's min_pixels (4 tokens of 28x28)
    "limit_images": (0, 999),
    "limit_videos": (0, 999),
}
WHOLE_FIELDS = {
    "tp": "tensor_parallel_size", "max_model_len": "max_model_len", "max_num_seqs": "max_num_seqs",
    "max_num_batched_tokens": "max_num_batched_tokens", "max_pixels": "max_pixels",
    "limit_images": "the image limit (limit_mm_per_prompt image)",
    "limit_videos": "the video limit (limit_mm_per_prompt video)",
}


def wish_problems(wish: Wish) -> list[Finding]:
    """Values of the wish as asked that no vLLM accepts (tp -2, max_model_len 0, a negative image limit, a
    utilisation of 0 or NaN ...): one validity error each. ``plan`` counts these fields as unset for its
    arithmetic, so an invalid wish never shows negative weights or a "fits"."""
    out = []
    for key, name in WHOLE_FIELDS.items():
        low, high = LIMITS[key]
        v = getattr(wish, key)
        if v is None or (key == "max_model_len" and v == -1):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            auto = ", or -1 (auto)" if key == "max_model_len" else ""
            out.append(Finding(key, f"{name} {v!r} is invalid: it must be a whole number from {low} to {high}{auto}",
                               f"{key} >= {low}" if v is not None and not isinstance(v, bool)
                               and isinstance(v, int) and v < low else f"{key} <= {high}"))
    u = wish.gpu_memory_utilization
    if u is not None and (isinstance(u, bool) or not isinstance(u, (int, float)) or not math.isfinite(u) or u <= 0):
        out.append(Finding("gpu_memory_utilization", f"gpu_memory_utilization {u!r} is outside (0, 1]", "0.90"))
    return out


def _countable(m: Model, wish: Wish, problems: list[Finding]) -> Wish:
    """The wish with every field ``wish_problems`` refused set back to unset (max_model_len: the model's)."""
    bad = {f.key for f in problems}
    return replace(wish, **{k: m.text.max_position_embeddings if k == "max_model_len" else None for k in bad})


def _large_gpu(inv: Inventory) -> str:
    gib = inv.memory_mib * MIB / GIB
    if gib >= 160:
        return "huge"
    if gib >= 70 and not inv.kind.id.startswith("A100"):
        return "large"
    return "small"


def _engine(version: VllmVersion, inv: Inventory, kv_dtype: str) -> str:
    if version.version.startswith("0.8."):
        cc = inv.kind.cc_tuple
        if cc < (8, 0):
            return "V0"
        if kv_dtype.startswith("fp8") and cc < (9, 0):
            return "V0"
    return "V1"


def resolve(m: Model, inv: Inventory, version: VllmVersion, wish: Wish) -> tuple[Wish, str, list[str]]:
    """Fill every None with the version's default; return (resolved wish, engine, notes)."""
    d = version.defaults
    notes = []
    engine = _engine(version, inv, wish.kv_cache_dtype)
    max_len = wish.max_model_len if wish.max_model_len is not None else m.text.max_position_embeddings
    if wish.max_model_len is None:
        notes.append(f"max_model_len unset: vLLM uses the model's {max_len}")
    tier = _large_gpu(inv)
    if engine == "V0":
        v0 = d["v0"]
        seqs = wish.max_num_seqs or v0["max_num_seqs"]
        batched = wish.max_num_batched_tokens or max(max(max_len, 0), 2048, v0["min_max_num_batched_tokens"])
    else:
        v1 = d["v1"]
        seqs = wish.max_num_seqs or v1.get(f"max_num_seqs_{tier}", v1["max_num_seqs"])
        batched = wish.max_num_batched_tokens or v1.get(f"max_num_batched_tokens_{tier}", v1["max_num_batched_tokens"])
    lim = d["limit_per_modality"]
    resolved = replace(
        wish,
        max_model_len=max_len,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        limit_images=lim if wish.limit_images is None else wish.limit_images,
        limit_videos=lim if wish.limit_videos is None else wish.limit_videos,
        max_pixels=wish.max_pixels or d["max_pixels"],
        gpu_memory_utilization=wish.gpu_memory_utilization or version.default_gpu_memory_utilization,
        tp=wish.tp or inv.count,
    )
    return resolved, engine, notes


def plan(m: Model, inv: Inventory, version: VllmVersion, wish: Wish = Wish(), propose: bool = True) -> Plan:
    """Evaluate ``wish`` for ``m`` on ``inv`` under ``version``; with propose, attach the smallest fix."""
    if wish.max_model_len == -1:
        return _plan_auto_len(m, inv, version, wish, propose)
    errors: list[Finding] = wish_problems(wish)
    refused = {e.key for e in errors}  # counted as unset below; checks of their stand-in values are skipped
    resolved, engine, notes = resolve(m, inv, version, _countable(m, wish, errors))
    warnings: list[Finding] = []
    tp = int(resolved.tp)
    kind = inv.kind

    # -- validity ------------------------------------------------------------------------------------------
    if tp > inv.count:
        errors.append(Finding("tp", f"tensor_parallel_size {tp} needs {tp} GPUs, the host has {inv.count}",
                              f"tp <= {inv.count}"))
    problems = [] if "tp" in refused else tp_problems(m, tp)
    if problems:
        ok = valid_tps(m, inv.count)
        errors.append(Finding("tp", f"tensor_parallel_size {tp} is invalid for {m.id}: " + "; ".join(problems),
                              f"tp in {ok}" if ok else "a model with fewer heads, or more GPUs"))
    for f in m.verify:
        warnings.append(Finding("config", f"{f} is the catalog's value, not confirmed by a downloaded config.json",
                                "plan with --config PATH/config.json (the weights stage does this)"))
    alt = _unverified_intermediate_alternative(m)
    if alt and not problems and "tp" not in refused and tp_problems(alt, tp):
        warnings.append(Finding("awq-tp", f"tp {tp} relies on intermediate_size {m.text.intermediate} (the AWQ "
                                f"repository's, per the catalog); a checkpoint with {alt.text.intermediate} only "
                                f"aligns to group_size at tp {valid_tps(alt, inv.count)}",
                                "confirm with --config PATH/config.json before rolling out"))

    ckpt_dtype = "float16" if m.quantization == "awq" else m.torch_dtype
    want = resolved.dtype
    if want == "auto":
        dtype = ckpt_dtype
        if dtype == "bfloat16" and not kind.bf16:
            if version.version.startswith("0.8."):
                errors.append(Finding("dtype", f"--dtype auto picks the checkpoint's bfloat16, which {kind.id} "
                                               f"(cc {kind.cc}) lacks: vLLM {version.version} refuses to start",
                                      "dtype: float16"))
            dtype = "float16"
    elif want in ("float16", "half"):
        dtype = "float16"
    elif want == "bfloat16":
        dtype = "bfloat16"
        if not kind.bf16:
            errors.append(Finding("dtype", f"bfloat16 needs compute capability >= 8.0; {kind.id} has {kind.cc}",
                                  "dtype: float16"))
        if m.quantization == "awq" and version.version.startswith("0.8."):
            errors.append(Finding("dtype", "AWQ kernels in vLLM 0.8.2 run float16 only", "dtype: float16"))
    else:
        errors.append(Finding("dtype", f"dtype {want!r} is not auto, float16 or bfloat16", "dtype: auto"))
        dtype = ckpt_dtype

    quant = None
    if resolved.quantization:
        q = resolved.quantization
        if m.quantization != "awq" and q.startswith("awq"):
            sib = _awq_sibling(m)
            errors.append(Finding("quantization", f"--quantization {q} on {m.hf}, which is not an AWQ checkpoint: "
                                  "vLLM fails to load its weights",
                                  "drop the flag" + (f", or serve {sib.id}" if sib else "")))
        elif m.quantization != "awq":
            errors.append(Finding("quantization", f"--quantization {q} on {m.hf}, a {m.torch_dtype} checkpoint "
                                  f"without {q} weights: vLLM fails to load it (or quantizes it in flight, which "
                                  "vlmfleet does not plan)", "drop the flag"))
        elif q not in ("awq", "awq_marlin"):
            errors.append(Finding("quantization", f"--quantization {q} does not match the checkpoint's awq",
                                  "quantization: unset (vLLM detects awq)"))
        elif q == "awq_marlin" and kind.awq_kernel != "awq_marlin":
            errors.append(Finding("quantization", f"awq_marlin needs compute capability >= 8.0; {kind.id} has {kind.cc}",
                                  "quantization: awq"))
        elif q == "awq" and kind.awq_kernel == "awq_marlin":
            warnings.append(Finding("quantization", f"--quantization awq forces the slow awq kernel on {kind.id}; "
                                    "vLLM picks awq_marlin when the flag is left out", "quantization: awq_marlin"))
    if m.quantization == "awq":
        quant = kind.awq_kernel

    kv = resolved.kv_cache_dtype
    if kv not in version.kv_cache_dtypes:
        errors.append(Finding("kv_cache_dtype", f"--kv-cache-dtype {kv} is not accepted by vLLM {version.version} "
                              f"(choices: {', '.join(version.kv_cache_dtypes)})", "kv_cache_dtype: auto"))
        kv = "auto"
    elif kv.startswith("fp8"):
        status = kind.fp8_kv.get(version.version, "no")
        if status == "no":
            errors.append(Finding("kv_cache_dtype", f"fp8 KV cache is not supported on {kind.id} (cc {kind.cc}) "
                                  f"in vLLM {version.version}", "kv_cache_dtype: auto"))
        elif status == "risky":
            warnings.append(Finding("kv_cache_dtype", f"fp8 KV cache on {kind.id} is known to misbehave in some "
                                    f"vLLM {version.version} builds (e.g. vllm#26431 on sm86)", "kv_cache_dtype: auto"))
    kv_bytes = KV_DTYPE_BYTES.get(kv) or DTYPE_BYTES[dtype]

    max_len = int(resolved.max_model_len)
    if max_len > m.text.max_position_embeddings:
        errors.append(Finding("max_model_len", f"max_model_len {max_len} exceeds the model's "
                              f"max_position_embeddings {m.text.max_position_embeddings}",
                              f"max_model_len <= {m.text.max_position_embeddings}"))
    if engine == "V0" and not refused & {"max_model_len", "max_num_batched_tokens"} \
            and int(resolved.max_num_batched_tokens) < max_len:
        errors.append(Finding("max_num_batched_tokens",
                              f"vLLM {version.version} runs the V0 engine here (no chunked prefill for multimodal "
                              f"models): max_num_batched_tokens {resolved.max_num_batched_tokens} < max_model_len "
                              f"{max_len} is refused", f"max_num_batched_tokens >= {max_len}"))
    if not refused & {"max_num_seqs", "max_num_batched_tokens"} \
            and int(resolved.max_num_batched_tokens) < int(resolved.max_num_seqs):
        errors.append(Finding("max_num_batched_tokens", f"max_num_batched_tokens {resolved.max_num_batched_tokens} < "
                              f"max_num_seqs {resolved.max_num_seqs} is refused by vLLM",
                              f"max_num_batched_tokens >= {resolved.max_num_seqs}"))
    if not 0.05 <= float(resolved.gpu_memory_utilization) <= 1.0:
        errors.append(Finding("gpu_memory_utilization", f"gpu_memory_utilization {resolved.gpu_memory_utilization} "
                              "is outside (0, 1]", "0.90"))
    if inv.driver and not driver_at_least(inv.driver, version.min_driver):
        errors.append(Finding("driver", f"driver {inv.driver} is older than {version.min_driver}, the minimum for "
                              f"vLLM {version.version}'s CUDA {version.cuda} image", f"driver >= {version.min_driver}"))

    # -- memory --------------------------------------------------------------------------------------------
    oh = overheads()
    dbytes = DTYPE_BYTES[dtype]
    total = (inv.memory_mib - inv.kind.reserved_mib) * MIB  # CUDA's total, what vLLM multiplies
    util = float(resolved.gpu_memory_utilization)
    budget = int(total * util)
    weights = weight_bytes(m, tp)
    img_tok = image_tokens(m, int(resolved.max_pixels))
    n_img, n_vid = int(resolved.limit_images), int(resolved.limit_videos)
    vid_tok = video_item_tokens(version, max_len, n_img, n_vid, img_tok)
    item = max(img_tok if n_img > 0 else 0, vid_tok)
    batched, seqs = int(resolved.max_num_batched_tokens), int(resolved.max_num_seqs)
    if item == 0:
        mm_tokens = 0
    elif engine == "V0":
        mm_tokens = min(batched, max(item, n_img * img_tok + n_vid * vid_tok))
    else:
        budget_tokens = max(batched, item)
        mm_tokens = max(1, budget_tokens // item) * item
    enc = encoder_bytes(m, tp, mm_tokens, dbytes) + mm_tokens * m.text.hidden * dbytes if mm_tokens else 0
    lm = lm_bytes(m, tp, batched, seqs, dbytes)
    activation = max(enc, lm + mm_tokens * m.text.hidden * dbytes)
    non_torch = int((oh["non_torch_gib"] + (oh["nccl_gib"] if tp > 1 else 0)) * GIB)
    graphs = 0 if resolved.enforce_eager else int((oh["cudagraph_base_gib"] + oh["cudagraph_per_layer_mib"]
                                                    * m.text.layers / 1024) * GIB)
    counted_graphs = graphs if version.counts_cudagraph_memory else 0
    kv_budget = budget - weights - activation - non_torch - counted_graphs
    kv_per_token = kv_bytes_per_token(m, tp, kv_bytes)
    blocks = kv_budget // (kv_per_token * BLOCK_SIZE) if kv_budget > 0 else 0
    capacity = int(blocks * BLOCK_SIZE)

    if graphs and not version.counts_cudagraph_memory and total - budget < graphs + non_torch // 2:
        warnings.append(Finding("gpu_memory_utilization", f"vLLM {version.version} captures CUDA graphs (~{graphs / GIB:.1f} GiB) "
                                f"after allocating the KV cache, from the {1 - util:.0%} left over "
                                f"({(total - budget) / GIB:.1f} GiB): capture may run out of memory",
                                "lower gpu_memory_utilization or set enforce_eager"))
    # The image limit warns only as the user set it: an unset limit is the version's default (999 in 0.33), not
    # a wish, so only "one image does not fit one prompt" applies then.
    n_warn = n_img if wish.limit_images is not None else min(n_img, 1)
    if n_warn and n_warn * img_tok > max_len:
        what = f"{n_warn} images of up to {img_tok} tokens each ({n_warn * img_tok})" if n_warn > 1 else \
            f"one image of up to {img_tok} tokens"
        warnings.append(Finding("limit_images", f"{what} cannot fit one {max_len}-token prompt",
                                "lower max_pixels, the image limit, or raise max_model_len"))
    if n_vid and vid_tok > 32768:
        notes.append(f"profiling encodes a {vid_tok}-token dummy video (limit {n_vid}); limit videos to 0 or lower "
                     "max_pixels / max_model_len if video is not needed")

    memory = Memory(total=total, budget=budget, weights=weights, activation=activation, encoder_peak=enc,
                    lm_peak=lm, non_torch=non_torch, cudagraph=graphs, kv_cache=kv_budget)
    p = Plan(model=m, inventory=inv, version=version, wish=wish, resolved=replace(resolved, kv_cache_dtype=kv),
             engine=engine, dtype=dtype, quantization=quant, memory=memory, kv_bytes_per_token=kv_per_token,
             kv_bytes_per_token_model=kv_bytes_per_token(m, 1, kv_bytes), kv_capacity_tokens=capacity,
             image_tokens=img_tok, profile_mm_tokens=mm_tokens, errors=errors, warnings=warnings, notes=notes)
    if not p.errors and not p.fits_one_request:
        if kv_budget <= 0:
            p.notes.append(f"weights {weights / GIB:.2f} GiB + profiling peak {activation / GIB:.2f} GiB + overhead "
                           f"{(non_torch + counted_graphs) / GIB:.2f} GiB exceed {util:.2f} x {total / GIB:.2f} GiB")
        else:
            p.notes.append(f"KV cache holds {capacity} tokens, fewer than one max_model_len {max_len} request: "
                           "vLLM refuses to start")
    if propose and p.verdict != "fits":
        p.proposal = propose_fix(p)
    return p


def _plan_auto_len(m: Model, inv: Inventory, version: VllmVersion, wish: Wish, propose: bool) -> Plan:
    if version.version.startswith("0.8."):
        p = plan(m, inv, version, replace(wish, max_model_len=None), propose)
        p.errors.insert(0, Finding("max_model_len", f"--max-model-len auto does not exist in vLLM {version.version}",
                                   "give a number"))
        return p
    best = largest_fitting_len(m, inv, version, wish)
    p = plan(m, inv, version, replace(wish, max_model_len=best or m.text.max_position_embeddings), propose)
    p.notes.append(f"max_model_len auto: {best or 'nothing'} fits")
    p.wish = replace(p.wish, max_model_len=-1)  # as asked: the unit passes auto, vLLM sizes it at startup
    return p


def largest_fitting_len(m: Model, inv: Inventory, version: VllmVersion, wish: Wish, floor: int = 1024) -> int | None:
    """The largest max_model_len (a multiple of 256) that fits, searched by bisection; None when none does."""
    def fits(n: int) -> bool:
        return plan(m, inv, version, replace(wish, max_model_len=n), propose=False).verdict == "fits"

    hi = min(wish.max_model_len or m.text.max_position_embeddings, m.text.max_position_embeddings)
    if hi <= 0:
        hi = m.text.max_position_embeddings
    if fits(hi):
        return hi
    lo = floor
    if not fits(lo):
        return None
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        if mid <= lo:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _unverified_intermediate_alternative(m: Model) -> Model | None:
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


# ---- the ladder --------------------------------------------------------------------------------------------
def _awq_sibling(m: Model) -> Model | None:
    if m.quantization == "awq":
        return None
    try:
        return model(m.id + "-awq")
    except CatalogError:
        return None


def corrected_wish(p: Plan) -> tuple[Wish, dict[str, Any]]:
    """Fix every validity error with its documented fix; return the wish and the changes made."""
    w, changes = p.wish, {}
    keys = {e.key for e in p.errors}
    if "tp" in keys:
        ok = valid_tps(p.model, p.inventory.count)
        if ok:
            want = p.tp
            best = max((t for t in ok if t <= want), default=min(ok))
            changes["tp"] = best
    if "dtype" in keys:
        changes["dtype"] = "float16"
    if "quantization" in keys:
        if p.model.quantization == "awq":
            changes["quantization"] = None
        elif p.wish.quantization:
            changes["quantization"] = None
    if "kv_cache_dtype" in keys:
        changes["kv_cache_dtype"] = "auto"
    if "max_model_len" in keys:
        changes["max_model_len"] = min(p.max_model_len, p.model.text.max_position_embeddings)
    if "max_num_batched_tokens" in keys:
        floor = p.max_model_len if p.engine == "V0" else int(p.resolved.max_num_batched_tokens)
        changes["max_num_batched_tokens"] = max(floor, int(p.resolved.max_num_seqs))
    for key in ("max_num_seqs", "max_pixels", "limit_images", "limit_videos"):
        if key in keys:  # only wish_problems names these: back to what the plan counted (the version's default)
            changes[key] = getattr(p.resolved, key)
    if "max_num_seqs" in keys:
        changes["max_num_seqs"] = min(changes["max_num_seqs"], changes.get("max_num_batched_tokens",
                                                                            p.resolved.max_num_batched_tokens))
    if "gpu_memory_utilization" in keys:
        changes["gpu_memory_utilization"] = p.version.default_gpu_memory_utilization
    return replace(w, **changes), changes


def propose_fix(p: Plan) -> Proposal | None:
    """Correct what is invalid, then walk the seed's OOM ladder: utilisation, max length, kv dtype, tp, AWQ."""
    if "driver" in {e.key for e in p.errors}:
        return None  # nothing in the profile fixes an old driver
    base_wish, changes = corrected_wish(p)
    m, inv, ver = p.model, p.inventory, p.version
    base = plan(m, inv, ver, base_wish, propose=False)
    if base.errors:
        return None
    if base.verdict == "fits":
        return Proposal(changes, "correct the invalid settings", base)
    cap = overheads()["max_safe_utilization"]
    util = float(base.resolved.gpu_memory_utilization)

    def attempt(wish: Wish, mdl: Model = m) -> Plan | None:
        q = plan(mdl, inv, ver, wish, propose=False)
        return q if q.verdict == "fits" else None

    # 1. utilisation: the smallest step of 0.01 up to the cap
    for step in range(1, int(round((cap - util) * 100)) + 1):
        u = round(util + step / 100, 2)
        q = attempt(replace(base_wish, gpu_memory_utilization=u))
        if q:
            return Proposal({**changes, "gpu_memory_utilization": u}, f"raise gpu_memory_utilization to {u}", q)
    # 2. max length: the largest that fits
    n = largest_fitting_len(m, inv, ver, base_wish)
    if n and n >= 2048:
        n = n // 1024 * 1024 if n >= 4096 else n
        q = attempt(replace(base_wish, max_model_len=n))
        if q:
            return Proposal({**changes, "max_model_len": n}, f"lower max_model_len to {n}", q)
    # 3. fp8 KV cache where the GPU and version support it
    if base.resolved.kv_cache_dtype == "auto" and inv.kind.fp8_kv.get(ver.version) == "ok":
        q = attempt(replace(base_wish, kv_cache_dtype="fp8"))
        if q:
            return Proposal({**changes, "kv_cache_dtype": "fp8"}, "use an fp8 KV cache", q)
    # 4. more tensor parallel
    for t in valid_tps(m, inv.count):
        if t > base.tp:
            q = attempt(replace(base_wish, tp=t))
            if q:
                return Proposal({**changes, "tp": t}, f"raise tensor parallel to {t}", q)
    # 5. the AWQ checkpoint
    sib = _awq_sibling(m)
    if sib:
        awq_wish = replace(base_wish, quantization=None, dtype="auto")
        for t in [base.tp] + [t for t in valid_tps(sib, inv.count) if t != base.tp]:
            if tp_problems(sib, t) or t > inv.count:
                continue
            q = attempt(replace(awq_wish, tp=t), sib)
            if q:
                extra = {} if t == base.tp else {"tp": t}
                return Proposal({**changes, **extra, "model": sib.id}, f"serve the AWQ checkpoint {sib.hf}", q, sib.id)
    # 6. everything together, in ladder order
    wish = replace(base_wish, gpu_memory_utilization=max(util, min(cap, 0.92)))
    combo = dict(changes, gpu_memory_utilization=wish.gpu_memory_utilization)
    for t in sorted(valid_tps(m, inv.count), reverse=True)[:1]:
        wish = replace(wish, tp=t)
        combo["tp"] = t
    n = largest_fitting_len(m, inv, ver, wish)
    if n:
        q = attempt(replace(wish, max_model_len=n))
        if q:
            return Proposal({**combo, "max_model_len": n}, "raise utilisation and tp, lower max_model_len", q)
    return None

