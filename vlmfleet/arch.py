"""Exact arithmetic of a Qwen2.5-VL checkpoint under vLLM: weight bytes per GPU, KV bytes per token, image
tokens, and which tensor-parallel sizes split every dimension. Pure Python; every function is exact to vLLM's
formula (tests/test_planner.py checks them by value)."""

from __future__ import annotations

import math

from .catalog import Model

BLOCK_SIZE = 16  # vLLM's KV block: capacity is counted in whole 16-token blocks
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
KV_DTYPE_BYTES = {"auto": None, "float16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}


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
