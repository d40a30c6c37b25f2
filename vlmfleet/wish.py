"""What a profile asks the planner for (``Wish``), the reasons it gives (``Finding``), and the ranges every
whole-number wish must fall in — one table for the planner, ``vlmfleet plan``'s options and the data keys
(vlmfleet.config). Pure Python."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .catalog import Model


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
    + engine: V0 | V1 to force what VLLM_USE_V1 forces (None = the version's default; used to replay logs)
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
    engine: str | None = None


@dataclass(frozen=True)
class Finding:
    """One reason: ``key`` names the wish field (or "gpu", "driver") it is about."""

    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.message}" + (f" — fix: {self.fix}" if self.fix else "")


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


def countable(m: Model, wish: Wish, problems: list[Finding]) -> Wish:
    """The wish with every field ``wish_problems`` refused set back to unset (max_model_len: the model's)."""
    bad = {f.key for f in problems}
    return replace(wish, **{k: m.text.max_position_embeddings if k == "max_model_len" else None for k in bad})
