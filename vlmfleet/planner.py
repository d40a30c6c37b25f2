"""The VRAM planner: what a Qwen2.5-VL profile needs per GPU under a vLLM version, whether it fits, what to change.

Pure Python, no pyinfra. ``plan`` = ``evaluate`` (one wish, one verdict) + the ladder of fixes (vlmfleet.ladder).
``evaluate`` puts together the parts, each in its own module:

- exact arithmetic of the checkpoint (vlmfleet.arch): weights, KV bytes per token, image tokens, tp splits;
- validity rules (vlmfleet.rules): what vLLM refuses before memory is counted;
- the memory model per vLLM behaviour (vlmfleet.memory_model, catalog/vllm.yaml ``memory:``): the defaults,
  the dummy multimodal batch, what the profiler charges — and the estimates of what vLLM measures.

A verdict of "fits" is given only when one max-length request still fits after a reserve is taken off the KV
estimate: the calibration's tolerance, max(0.5 GiB, 15 %), or 6 % of the weights on each GPU, for what a large
model on several GPUs holds beyond the count (docs/calibration.md). The planner leans safe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import memory_model as mm
from .arch import (BLOCK_SIZE, DTYPE_BYTES, KV_DTYPE_BYTES, image_tokens, kv_bytes_per_token, smart_resize_tokens,
                   tp_problems, valid_tps, weight_bytes)
from .catalog import GIB, Model, VllmVersion
from .gpus import Inventory
from .rules import check
from .wish import LIMITS, WHOLE_FIELDS, Finding, Wish, countable, wish_problems

__all__ = ["BLOCK_SIZE", "LIMITS", "WHOLE_FIELDS", "Finding", "Memory", "Plan", "Proposal", "Wish", "corrected_wish",
           "evaluate", "image_tokens", "kv_bytes_per_token", "largest_fitting_len", "plan", "smart_resize_tokens",
           "tp_problems", "valid_tps", "weight_bytes", "wish_problems", "TOLERANCE_GIB", "TOLERANCE_FRACTION", "RESERVE_OF_WEIGHTS"]

#: The calibration's tolerance on the available-KV estimate (docs/calibration.md): max(0.5 GiB, 15 %).
TOLERANCE_GIB = 0.5
TOLERANCE_FRACTION = 0.15
#: What "fits" also keeps in reserve, as a share of the weights on each GPU: room for what a large model on several
#: GPUs holds beyond the count. Fitted to one log (tests/fixtures/vllm-logs/vllm-16570-a100-40g-tp4-72b-v1-oom): a
#: 72B at tp 4 on PCIe A100-40s, vLLM 0.8.3 V1, allocated its KV cache (PyTorch then held the weights + 1.5 GiB) and
#: ran out of memory in the warm-up that follows, with 3.3 GiB of non-PyTorch memory in use where the planner counts
#: 0.94; the planner's own KV estimate there is 1.81 GiB, 5.3 % of the 34.4 GiB of weights per GPU. No 3B or 7B log
#: shows such an excess.
RESERVE_OF_WEIGHTS = 0.06


@dataclass(frozen=True)
class Memory:
    """Per-GPU memory, in bytes."""

    total: int
    budget: int  # total x utilisation
    weights: int  # as loaded ("Model loading took"): parameters plus buffers
    activation: int  # profiling peak above the weights
    encoder_peak: int
    lm_peak: int
    non_torch: int  # the non-torch memory this version charges to the KV budget
    cudagraph: int  # estimated graph memory (charged only where the version does)
    kv_cache: int  # what is left for the KV cache (negative: does not fit)
    non_torch_total: int = 0  # context + cuBLAS + NCCL, charged or not
    margin: int = 0  # the estimate's tolerance, taken off kv_cache before a verdict of "fits"

    @property
    def free_at_start(self) -> int:
        """What is free when vLLM takes its baseline: the total less the non-torch memory it does not charge."""
        return self.total - (self.non_torch_total - self.non_torch)

    @property
    def startup_max_utilization(self) -> float:
        """The largest utilisation (in hundredths) whose budget the memory free at start still covers."""
        return int(self.free_at_start / self.total * 100) / 100


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
    mm_profile: mm.MmProfile | None = None
    startup_ok: bool = True  # free memory at start covers total x utilisation, where the version checks it

    @property
    def tp(self) -> int:
        return int(self.resolved.tp or 1)

    @property
    def max_model_len(self) -> int:
        return int(self.resolved.max_model_len or 0)

    @property
    def safe_capacity_tokens(self) -> int:
        """KV tokens once the estimate's tolerance is taken off: what the verdict trusts."""
        safe = self.memory.kv_cache - self.memory.margin
        return int(safe // (self.kv_bytes_per_token * BLOCK_SIZE) * BLOCK_SIZE) if safe > 0 else 0

    @property
    def fits_one_request(self) -> bool:
        return self.startup_ok and self.memory.kv_cache > 0 and self.safe_capacity_tokens >= self.max_model_len

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
            "kv_capacity_tokens_after_tolerance": self.safe_capacity_tokens,
            "max_concurrent_max_length_requests": round(self.concurrency, 2),
            "image_tokens_max": self.image_tokens,
            "profile_mm_tokens": self.profile_mm_tokens,
            "profile_mm": asdict(self.mm_profile) if self.mm_profile else None,
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


# ---- resolving defaults ------------------------------------------------------------------------------------
def resolve(m: Model, inv: Inventory, version: VllmVersion, wish: Wish) -> tuple[Wish, str, list[str]]:
    """Fill every None with the version's default (catalog memory behaviours); return (resolved, engine, notes)."""
    b = version.memory
    notes = []
    engine = wish.engine or mm.engine_for(b, inv.kind, wish.kv_cache_dtype)
    max_len = wish.max_model_len if wish.max_model_len is not None else m.text.max_position_embeddings
    if wish.max_model_len is None:
        notes.append(f"max_model_len unset: vLLM uses the model's {max_len}")
    seqs, batched = mm.scheduler_defaults(b, engine, inv.kind, inv.memory_mib, max(max_len, 0))
    lim = mm.default_limit(b, engine)
    resolved = replace(
        wish,
        max_model_len=max_len,
        max_num_seqs=wish.max_num_seqs or seqs,
        max_num_batched_tokens=wish.max_num_batched_tokens or batched,
        limit_images=lim if wish.limit_images is None else wish.limit_images,
        limit_videos=lim if wish.limit_videos is None else wish.limit_videos,
        max_pixels=wish.max_pixels or version.default_max_pixels,
        gpu_memory_utilization=wish.gpu_memory_utilization or b.default_gpu_memory_utilization,
        tp=wish.tp or inv.count,
    )
    return resolved, engine, notes


# ---- one wish, one verdict ---------------------------------------------------------------------------------
def evaluate(m: Model, inv: Inventory, version: VllmVersion, wish: Wish = Wish(),
             loaded_weights: int | None = None, profile_len: int | None = None) -> Plan:
    """The plan for exactly ``wish``: validity, memory, verdict. No proposal (``plan`` adds the ladder's).

    + loaded_weights: bytes per GPU as vLLM logged them ("Model loading took"), for replaying a log of a
      checkpoint the planner cannot size (bitsandbytes, GPTQ); None = computed from the architecture
    + profile_len: the length vLLM profiles at when it differs from max_model_len (``auto``: the model's 128000)
    """
    if wish.max_model_len == -1:
        return _evaluate_auto_len(m, inv, version, wish)
    errors = wish_problems(wish)
    refused = {e.key for e in errors}  # counted as unset below; checks of their stand-in values are skipped
    resolved, engine, notes = resolve(m, inv, version, countable(m, wish, errors))
    valid = check(m, inv, version, resolved, engine, refused)
    errors += valid.errors
    warnings = valid.warnings
    if not version.has_flag_table:
        notes.append(f"vLLM {version.version} has no flag table in the catalog: memory follows its own behaviours "
                     f"(catalog/vllm.yaml memory:), the command is not checked against its parser")
    return _with_memory(m, inv, version, wish, replace(resolved, kv_cache_dtype=valid.kv_cache_dtype), engine,
                        valid.dtype, valid.quantization, errors, warnings, notes, loaded_weights, profile_len)


@dataclass(frozen=True)
class _Count:
    """The memory arithmetic of one resolved wish (no findings): what ``_with_memory`` explains."""

    memory: Memory
    profile: mm.MmProfile
    non_torch: mm.NonTorch
    image_tokens: int
    kv_per_token: int
    capacity: int
    startup_ok: bool


def _count(m: Model, inv: Inventory, b: Any, r: Wish, engine: str, dtype: str, loaded_weights: int | None,
           profile_len: int | None) -> _Count:
    """Per GPU: budget − weights − the profiling peak − charged non-torch − charged CUDA graphs = the KV cache."""
    tp, dbytes = int(r.tp), DTYPE_BYTES[dtype]
    total = (inv.memory_mib - inv.kind.reserved_mib) * 1024**2  # CUDA's total, what vLLM multiplies
    budget = int(total * float(r.gpu_memory_utilization))
    weights = loaded_weights if loaded_weights is not None else mm.loaded_weight_bytes(weight_bytes(m, tp))
    img_tok = image_tokens(m, int(r.max_pixels))
    batched, seqs = int(r.max_num_batched_tokens), int(r.max_num_seqs)
    prof = mm.mm_profile(b, engine, max_len=profile_len or int(r.max_model_len), batched=batched, seqs=seqs,
                         n_img=int(r.limit_images), n_vid=int(r.limit_videos), img_tok=img_tok)
    outputs = prof.tokens * m.text.hidden * dbytes  # encoder outputs kept while the decoder's dummy pass runs
    enc = mm.encoder_bytes(m, tp, prof.tokens, dbytes) + outputs if prof.tokens else 0
    # V0 samples the rows of its shrunk batch, over tokens oversized dummies may stretch
    lm = mm.lm_bytes(m, tp, prof.lm_tokens or batched, prof.seqs or seqs, dbytes)
    activation = max(enc, lm + outputs)
    nt = mm.non_torch(b, engine, tp, inv.interconnect)
    graphs = mm.cudagraph_bytes(m, bool(r.enforce_eager))
    kv_budget = budget - weights - activation - nt.charged - (graphs if b.cudagraph_charged else 0)
    kv_per_token = kv_bytes_per_token(m, tp, KV_DTYPE_BYTES.get(r.kv_cache_dtype) or dbytes)
    blocks = kv_budget // (kv_per_token * BLOCK_SIZE) if kv_budget > 0 else 0
    margin = int(max(TOLERANCE_GIB * GIB, TOLERANCE_FRACTION * abs(kv_budget), RESERVE_OF_WEIGHTS * weights))
    memory = Memory(total=total, budget=budget, weights=weights, activation=activation, encoder_peak=enc, lm_peak=lm,
                    non_torch=nt.charged, cudagraph=graphs, kv_cache=kv_budget, non_torch_total=nt.total, margin=margin)
    # V1 from 0.9.1 refuses to start when what it does not charge leaves less free than the budget (V0 never)
    checks = b.startup_free_check and engine == "V1"
    return _Count(memory, prof, nt, img_tok, kv_per_token, int(blocks * BLOCK_SIZE),
                  not checks or memory.free_at_start >= budget)


def _with_memory(m: Model, inv: Inventory, version: VllmVersion, wish: Wish, r: Wish, engine: str, dtype: str,
                 quant: str | None, errors: list[Finding], warnings: list[Finding], notes: list[str],
                 loaded_weights: int | None = None, profile_len: int | None = None) -> Plan:
    """The plan: the count, and what it means in findings and notes."""
    b = version.memory
    c = _count(m, inv, b, r, engine, dtype, loaded_weights, profile_len)
    mem, nt, util = c.memory, c.non_torch, float(r.gpu_memory_utilization)
    free_at_start = mem.free_at_start
    if not c.startup_ok:
        before = [mm.NON_TORCH_NAMES[x] for x in mm.NON_TORCH_PARTS if x not in nt.charged_parts and getattr(nt, x)]
        notes.append(f"vLLM {version.version} refuses to start: free memory at start ({free_at_start / GIB:.2f} GiB, "
                     f"after {' and '.join(before)}) is below gpu_memory_utilization {util:.2f} x "
                     f"{mem.total / GIB:.2f} GiB; at most {mem.startup_max_utilization:.2f}")
    if mem.cudagraph and not b.cudagraph_charged and free_at_start - mem.budget < mem.cudagraph:
        warnings.append(Finding("gpu_memory_utilization", f"vLLM {version.version} captures CUDA graphs "
                                f"(~{mem.cudagraph / GIB:.1f} GiB) after allocating the KV cache, from what the "
                                f"{1 - util:.0%} left over holds beside the CUDA context and NCCL "
                                f"({(free_at_start - mem.budget) / GIB:.1f} GiB): capture may run out of memory",
                                "lower gpu_memory_utilization or set enforce_eager"))
    _limit_warnings(wish, r, c.image_tokens, int(r.max_model_len), c.profile, warnings, notes)
    notes.append(f"profiling: {c.profile.why}")
    notes.append("estimate: activation peak, non-torch memory and CUDA graphs are estimated (vLLM measures them); "
                 f"'fits' keeps {mem.margin / GIB:.2f} GiB of KV in reserve for that (docs/calibration.md)")
    p = Plan(model=m, inventory=inv, version=version, wish=wish, resolved=r, engine=engine, dtype=dtype,
             quantization=quant, memory=mem, kv_bytes_per_token=c.kv_per_token,
             kv_bytes_per_token_model=kv_bytes_per_token(m, 1, KV_DTYPE_BYTES.get(r.kv_cache_dtype) or DTYPE_BYTES[dtype]),
             kv_capacity_tokens=c.capacity, image_tokens=c.image_tokens, profile_mm_tokens=c.profile.tokens,
             errors=errors, warnings=warnings, notes=notes, mm_profile=c.profile, startup_ok=c.startup_ok)
    if not p.errors and not p.fits_one_request and c.startup_ok:
        p.notes.append(_why_not(p, nt.charged + (mem.cudagraph if b.cudagraph_charged else 0), util))
    return p


def _why_not(p: Plan, overhead: int, util: float) -> str:
    mem, max_len = p.memory, p.max_model_len
    if mem.kv_cache <= 0:
        return (f"weights {mem.weights / GIB:.2f} GiB + profiling peak {mem.activation / GIB:.2f} GiB + overhead "
                f"{overhead / GIB:.2f} GiB exceed {util:.2f} x {mem.total / GIB:.2f} GiB")
    if p.kv_capacity_tokens >= max_len:
        return (f"KV cache holds {p.kv_capacity_tokens} tokens by the estimate, but only {p.safe_capacity_tokens} once "
                f"its tolerance ({mem.margin / GIB:.2f} GiB) is kept: fewer than one max_model_len {max_len} request, "
                "too close to call")
    return f"KV cache holds {p.kv_capacity_tokens} tokens, fewer than one max_model_len {max_len} request: vLLM refuses to start"


def _limit_warnings(wish: Wish, r: Wish, img_tok: int, max_len: int, prof: mm.MmProfile,
                    warnings: list[Finding], notes: list[str]) -> None:
    """Warn about image limits only as the user set them: an unset limit is the version's default (999 from
    0.8.4), not a wish, so only "one image does not fit one prompt" applies then — and only when the user set
    the length or the image size that makes it so."""
    n_img = int(r.limit_images)
    if wish.limit_images is not None:
        n_warn = n_img
    elif wish.max_model_len is not None or wish.max_pixels is not None:
        n_warn = min(n_img, 1)
    else:
        n_warn = 0
    if n_warn and n_warn * img_tok > max_len:
        what = f"{n_warn} images of up to {img_tok} tokens each ({n_warn * img_tok})" if n_warn > 1 else \
            f"one image of up to {img_tok} tokens"
        warnings.append(Finding("limit_images", f"{what} cannot fit one {max_len}-token prompt",
                                "lower max_pixels, the image limit, or raise max_model_len"))
    if prof.modality == "video" and prof.item_tokens > 32768:
        notes.append(f"profiling encodes {prof.items} dummy video(s) of {prof.item_tokens} tokens; limit videos to 0 "
                     "or lower max_pixels / max_model_len if video is not needed")


def _evaluate_auto_len(m: Model, inv: Inventory, version: VllmVersion, wish: Wish) -> Plan:
    """``--max-model-len auto`` (-1): vLLM profiles at the model's length (128000: the dummy video and the items
    per prompt are sized for it), then serves the largest length its KV cache holds. The plan does the same,
    with the length its reserve-adjusted capacity holds (a multiple of 256)."""
    if not version.memory.max_model_len_auto:
        p = evaluate(m, inv, version, replace(wish, max_model_len=None))
        p.errors.insert(0, Finding("max_model_len", f"--max-model-len auto does not exist in vLLM {version.version} "
                                   "(from 0.14)", "give a number"))
        return p
    full = m.text.max_position_embeddings
    at_full = evaluate(m, inv, version, replace(wish, max_model_len=full))
    best = min(full, at_full.safe_capacity_tokens // 256 * 256) if at_full.startup_ok else 0
    p = evaluate(m, inv, version, replace(wish, max_model_len=best or full), profile_len=full) if best else at_full
    p.notes.append(f"max_model_len auto: profiled at the model's {full}; " +
                   (f"{best} fits" if best else "nothing fits"))
    p.wish = replace(p.wish, max_model_len=-1)  # as asked: the unit passes auto, vLLM sizes it at startup
    return p


def plan(m: Model, inv: Inventory, version: VllmVersion, wish: Wish = Wish(), propose: bool = True) -> Plan:
    """Evaluate ``wish`` for ``m`` on ``inv`` under ``version``; with propose, attach the ladder's smallest fix."""
    p = evaluate(m, inv, version, wish)
    if propose and p.verdict != "fits":
        from .ladder import propose_fix
        p.proposal = propose_fix(p)
    return p


def corrected_wish(p: Plan) -> tuple[Wish, dict[str, Any]]:
    from .ladder import corrected_wish as _corrected
    return _corrected(p)


def largest_fitting_len(m: Model, inv: Inventory, version: VllmVersion, wish: Wish, floor: int = 1024) -> int | None:
    from .ladder import largest_fitting_len as _largest
    return _largest(m, inv, version, wish, floor)
