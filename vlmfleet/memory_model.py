"""vLLM's profiling pass, per behaviour: what one GPU's KV budget is charged with at startup.

Pure Python, no pyinfra. Each function follows one behaviour of ``catalog/vllm.yaml`` ``memory:`` (which vLLM
releases do what, and the vLLM file it was read from): the engine, the scheduler defaults, the dummy multimodal
batch the profiler encodes, which non-torch memory is charged, whether CUDA graphs are. Exact where vLLM's
arithmetic is exact (how many dummy items of how many tokens); an estimate where vLLM measures (activation peaks,
CUDA context, cuBLAS, NCCL, graphs): those constants are ``estimates:`` in the same file, calibrated against real
startup logs (docs/calibration.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import GIB, MIB, Behaviour, GpuKind, Model, estimates


# ---- engine and defaults -----------------------------------------------------------------------------------
def engine_for(b: Behaviour, kind: GpuKind, kv_cache_dtype: str) -> str:
    """V0 or V1: the version's default engine, and its fallbacks (compute capability < 8.0 in 0.8.0 .. 0.10.1;
    an fp8 KV cache without FlashAttention 3, i.e. off Hopper, in 0.8.0 .. 0.10.x)."""
    if b.engine == "V0":
        return "V0"
    if "cc_below_8" in b.v0_fallback and kind.cc_tuple < (8, 0):
        return "V0"
    if "kv_not_auto" in b.v0_fallback and kv_cache_dtype != "auto":
        return "V0"
    if "fp8_kv_without_fa3" in b.v0_fallback and kv_cache_dtype.startswith("fp8") and kind.cc_tuple < (9, 0):
        return "V0"
    return "V1"


def gpu_tier(b: Behaviour, kind: GpuKind, memory_mib: int) -> str:
    """Which scheduler defaults apply: small | large | huge (vllm/engine/arg_utils.py of that version)."""
    s = b.scheduler_v1
    gib = memory_mib * MIB / GIB
    if "huge" in s and gib >= 160:
        return "huge"
    if s["large_when"] == "h100_h200":
        return "large" if kind.id in ("H100", "H200") else "small"
    if s["large_when"] == "70gib":
        return "large" if gib >= 70 else "small"
    return "large" if gib >= 70 and not kind.id.startswith("A100") else "small"


def scheduler_defaults(b: Behaviour, engine: str, kind: GpuKind, memory_mib: int, max_len: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) when the wish leaves them unset."""
    if engine == "V0":
        v0 = b.scheduler_v0
        return int(v0["max_num_seqs"]), max(max_len, 2048, int(v0["min_max_num_batched_tokens"]))
    seqs, batched = b.scheduler_v1[gpu_tier(b, kind, memory_mib)]
    return int(seqs), int(batched)


def default_limit(b: Behaviour, engine: str) -> int:
    """The per-prompt limit of a modality --limit-mm-per-prompt leaves out: 1, or 999 for V1 from 0.8.4."""
    return int(b.limit_per_modality[engine])


# ---- the dummy multimodal batch ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MmProfile:
    """What the profiling pass encodes: ``items`` dummy items of ``modality``, ``item_tokens`` LLM tokens each.

    ``budget`` is the encoder budget V1 logs ("Encoder cache will be initialized with a budget of N tokens, and
    profiled with M image items"); V0 logs none (0). ``why`` says how the count came about, for the plan."""

    modality: str | None
    item_tokens: int
    items: int
    budget: int
    why: str
    seqs: int = 0  # V0: the sequences of the profiling batch (max_num_seqs shrunk to fit), whose rows are sampled
    lm_tokens: int = 0  # V0: the decoder's dummy tokens when oversized dummies stretch them (0: max_num_batched_tokens)

    @property
    def tokens(self) -> int:
        return self.items * self.item_tokens


def video_tokens(b: Behaviour, seq_len: int, n_img: int, n_vid: int, img_tok: int) -> int:
    """LLM tokens of the dummy video vLLM builds for ``seq_len`` (qwen2_vl.py get_num_frames_with_most_features):
    as many frames as fit (2 frames per temporal patch of ``img_tok`` tokens), shared among ``n_vid`` videos, after
    the images where the version does so, at most max_frames_per_video, at least one frame."""
    if n_vid <= 0:
        return 0
    room = seq_len - (n_img * img_tok if b.video_frames_after_images else 0)
    total_frames = 2 * (room // img_tok) if room >= img_tok else 0
    frames = max(min(total_frames // n_vid, b.max_frames_per_video), 1)
    return math.ceil(frames / 2) * img_tok


def mm_profile(b: Behaviour, engine: str, *, max_len: int, batched: int, seqs: int, n_img: int, n_vid: int,
               img_tok: int) -> MmProfile:
    """The dummy multimodal batch of the profiling pass, as the version builds it."""
    if n_img <= 0 and n_vid <= 0:
        return MmProfile(None, 0, 0, 0, "images and videos are both limited to 0", seqs if engine == "V0" else 0)
    # the largest item of each modality, counted with the limits (before 0.8.4) or one of each modality
    c_img, c_vid = (n_img, n_vid) if b.video_count == "limit" else (int(n_img > 0), int(n_vid > 0))
    per_item = {"image": img_tok if n_img > 0 else 0,
                "video": video_tokens(b, max_len, c_img, c_vid, img_tok) if n_vid > 0 else 0}
    if engine == "V0":
        return _v0_profile(b, batched=batched, seqs=seqs, n_img=n_img, n_vid=n_vid, img_tok=img_tok,
                           per_item=per_item)
    modality = max(per_item, key=lambda k: (per_item[k], k == b.mm_tie_break))
    tokens = per_item[modality]
    limit = n_img if modality == "image" else n_vid
    budget = max(batched, tokens)
    if b.mm_items == "ceil":
        items = min(-(-budget // tokens), seqs * limit)
        rule = f"min(ceil({budget} / {tokens}), {seqs} seqs x limit {limit})"
    elif b.mm_items == "floor":
        items = max(1, min(budget // tokens, seqs * limit))
        rule = f"max(1, min({budget} // {tokens}, {seqs} seqs x limit {limit}))"
    else:
        per_prompt = max(1, min(limit, max_len // tokens))
        items = max(1, min(budget // tokens, seqs * per_prompt))
        rule = f"max(1, min({budget} // {tokens}, {seqs} seqs x {per_prompt} per prompt))"
    dummy_len = batched if b.mm_dummy_seq_len == "max_num_batched_tokens" else max_len
    if modality == "image":
        item_tokens = img_tok  # an image is always built at max_pixels
    elif b.dummy_counts == "limits":
        item_tokens = video_tokens(b, dummy_len, n_img, n_vid, img_tok)
    else:
        item_tokens = video_tokens(b, dummy_len, 0, 1, img_tok)  # built alone: {video: 1}
    return MmProfile(modality, item_tokens, items, budget,
                     f"{items} = {rule} {modality} items, each built at {b.mm_dummy_seq_len} ({dummy_len})")


def _v0_profile(b: Behaviour, *, batched: int, seqs: int, n_img: int, n_vid: int, img_tok: int,
                per_item: dict[str, int]) -> MmProfile:
    """V0 (vllm/worker/model_runner.py profile_run): max_num_seqs shrinks to fit batched // the prompt's
    multimodal tokens; each dummy sequence is batched // seqs long and carries every modality at its limit. When
    they do not fit it, versions before 0.8.3 drop them (the encoder is not profiled) and later ones keep them,
    the sequence growing to hold them (vllm/multimodal/profiling.py)."""
    max_mm = n_img * per_item["image"] + n_vid * per_item["video"]
    n_seqs = max(1, min(seqs, batched // max_mm)) if max_mm else seqs
    seq_len = batched // n_seqs
    in_one = n_img * img_tok + n_vid * video_tokens(b, seq_len, n_img, n_vid, img_tok)
    modality = "image" if n_img else "video"
    if in_one > seq_len and b.v0_oversized_dummy == "drop":
        return MmProfile(None, 0, 0, 0, f"V0 drops the dummy images/videos: {in_one} multimodal tokens do not fit "
                                        f"one {seq_len}-token profiling sequence ({batched} batched / {n_seqs} seqs)",
                         n_seqs)
    if in_one > seq_len:
        return MmProfile(modality, in_one, n_seqs, 0, f"V0 keeps {n_seqs} dummy sequence(s) of {in_one} multimodal "
                                                      f"tokens, longer than their {seq_len} ({batched} batched / "
                                                      f"{n_seqs} seqs)", n_seqs, n_seqs * in_one)
    return MmProfile(modality, in_one, n_seqs, 0, f"V0: {n_seqs} sequences of {seq_len} tokens, each with "
                                                  f"{n_img} images and {n_vid} videos ({in_one} tokens)", n_seqs)


# ---- estimates of what vLLM measures -----------------------------------------------------------------------
def encoder_bytes(m: Model, tp: int, mm_tokens: int, dtype_bytes: int) -> int:
    """Peak of the vision encoder on ``mm_tokens`` LLM tokens (4 patches each): per patch the residual stream, the
    normed input and the MLP's gate/up/act tensors, plus the fp32 + 16-bit pixel values; times encoder_factor,
    the ratio of logged peaks to this count (FACTS.md: the raw count is ~35-40 % high)."""
    v = m.vision
    patches = mm_tokens * v.spatial_merge**2
    per_patch = dtype_bytes * (4 * v.hidden + (3 * v.hidden + 3 * v.intermediate) // tp)
    pixels = 3 * v.temporal_patch * v.patch**2 * (4 + dtype_bytes)
    return int(patches * (per_patch + pixels) * estimates()["encoder_factor"])


def lm_bytes(m: Model, tp: int, tokens: int, seqs: int, dtype_bytes: int) -> int:
    """Peak of the decoder's dummy forward over ``tokens`` tokens plus fp32 logits of ``seqs`` sampled rows: per
    token, ``decoder_hidden_copies`` hidden-size vectors (residual stream, normed input, attention and MLP outputs,
    all-reduce buffers: calibrated on the logs whose peak is the decoder's) and the qkv and MLP tensors per GPU."""
    t = m.text
    copies = int(estimates()["decoder_hidden_copies"])
    per_token = dtype_bytes * (copies * t.hidden + ((t.heads + 2 * t.kv_heads) * t.head_dim + 3 * t.intermediate) // tp)
    logits = min(seqs, tokens) * t.vocab * 4 * 2
    return tokens * per_token + logits


#: The non-torch parts, in the order vLLM creates them, and how plans name them.
NON_TORCH_PARTS = ("context", "cublas", "nccl")
NON_TORCH_NAMES = {"context": "the CUDA context", "cublas": "cuBLAS", "nccl": "NCCL"}


@dataclass(frozen=True)
class NonTorch:
    """Memory outside PyTorch's allocator on one GPU, in bytes: what exists and what the version charges."""

    context: int
    cublas: int
    nccl: int
    charged_parts: tuple[str, ...]

    @property
    def total(self) -> int:
        return self.context + self.cublas + self.nccl

    @property
    def charged(self) -> int:
        return sum(getattr(self, part) for part in self.charged_parts)


def non_torch(b: Behaviour, engine: str, tp: int, interconnect: str) -> NonTorch:
    """CUDA context, cuBLAS, and NCCL at tp > 1 (by interconnect), with the parts this version charges."""
    e = estimates()
    nccl = e["nccl_gib"].get(interconnect, e["nccl_gib"]["pcie"]) if tp > 1 else 0.0
    return NonTorch(context=int(e["context_gib"] * GIB), cublas=int(e["cublas_gib"] * GIB), nccl=int(nccl * GIB),
                    charged_parts=tuple(p for p in b.non_torch_charged(engine) if p != "nccl" or tp > 1))


def cudagraph_bytes(m: Model, enforce_eager: bool) -> int:
    """CUDA-graph memory: a base plus a little per decoder layer (0 with --enforce-eager)."""
    if enforce_eager:
        return 0
    e = estimates()
    return int((e["cudagraph_base_gib"] + e["cudagraph_per_layer_mib"] * m.text.layers / 1024) * GIB)


def loaded_weight_bytes(parameter_bytes: int) -> int:
    """What "Model loading took" reports: the parameters plus buffers (rotary caches and the like)."""
    return parameter_bytes + int(estimates()["weights_extra_gib"] * GIB)
