"""The ladder of fixes: correct what is invalid, then walk the seed's OOM ladder in order and propose the first
single change that fits — utilisation, max length, fp8 KV cache, more tensor parallel, the AWQ checkpoint, then
all together. Pure Python; every candidate is judged by ``planner.evaluate`` (never ``plan``: no recursion)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .arch import tp_problems, valid_tps
from .catalog import Model, VllmVersion, estimates
from .gpus import Inventory
from .planner import Plan, Proposal, evaluate
from .rules import awq_sibling
from .wish import Wish


def largest_fitting_len(m: Model, inv: Inventory, version: VllmVersion, wish: Wish, floor: int = 1024) -> int | None:
    """The largest max_model_len (a multiple of 256) that fits, searched by bisection; None when none does."""
    def fits(n: int) -> bool:
        return evaluate(m, inv, version, replace(wish, max_model_len=n)).verdict == "fits"

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
    base = evaluate(m, inv, ver, base_wish)
    if base.errors:
        return None
    if base.verdict == "fits":
        return Proposal(changes, "correct the invalid settings", base)
    cap = estimates()["max_safe_utilization"]
    util = float(base.resolved.gpu_memory_utilization)

    def attempt(wish: Wish, mdl: Model = m) -> Plan | None:
        q = evaluate(mdl, inv, ver, wish)
        return q if q.verdict == "fits" else None

    # 0. the version refuses to start above what is free at start: the largest utilisation below that, which
    #    every later step keeps (and never raises past)
    if not base.startup_ok:
        u = base.memory.startup_max_utilization
        base_wish = replace(base_wish, gpu_memory_utilization=u)
        changes = {**changes, "gpu_memory_utilization": u}
        q = attempt(base_wish)
        if q:
            return Proposal(changes, f"lower gpu_memory_utilization to {u}: what is free when vLLM starts", q)
        cap = min(cap, u)
        util = u
        base = evaluate(m, inv, ver, base_wish)
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
    sib = awq_sibling(m)
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



# ---- the startup ladder: what the deploy tries when vLLM itself runs out of memory -----------------------------
#: one step of utilisation, as the seed's troubleshooting steps it (0.75 -> 0.70 -> 0.65)
UTILISATION_STEP = 0.05
#: the lowest utilisation the ladder goes to
UTILISATION_FLOOR = 0.5


@dataclass(frozen=True)
class Rung:
    """One rung of the startup ladder: the changes from the planned wish (cumulative), why, and its plan.

    + changes: e.g. ``{"gpu_memory_utilization": 0.87, "max_model_len": 24576}``
    + only_utilisation: the rung adds nothing but a lower utilisation (no help for a KV cache too small)
    """

    rung: int
    changes: dict
    why: str
    plan: Plan
    only_utilisation: bool = False


def startup_ladder(p: Plan, steps: int) -> list[Rung]:
    """At most ``steps`` rungs, each asking less memory than the one before, in the seed's order: utilisation
    down by 0.05 (with max_model_len lowered if the planner says the KV cache no longer holds one request), max
    length to three quarters (a multiple of 1024), then an fp8 KV cache where the GPU and version support it.
    Every rung is a valid plan; the host tries them in order only when vLLM reports running out of memory."""
    m, inv, ver = p.model, p.inventory, p.version
    rungs: list[Rung] = []
    wish, changes = p.wish, {}

    def add(new: dict, why: str, only_util: bool = False) -> bool:
        nonlocal wish, changes
        cand = replace(wish, **new)
        q = evaluate(m, inv, ver, cand)
        if q.errors:
            return False
        wish, changes = cand, {**changes, **new}
        rungs.append(Rung(len(rungs) + 1, dict(changes), why, q, only_util))
        return True

    util = float(p.resolved.gpu_memory_utilization)
    length = p.max_model_len
    lower = round(util - UTILISATION_STEP, 2)
    if lower >= UTILISATION_FLOOR:
        new: dict = {"gpu_memory_utilization": lower}
        q = evaluate(m, inv, ver, replace(wish, **new))
        fit = None if q.verdict == "fits" else largest_fitting_len(m, inv, ver, replace(wish, **new))
        if fit and fit < length:
            length = fit // 1024 * 1024 if fit >= 4096 else fit
            new["max_model_len"] = length
            add(new, f"gpu_memory_utilization {util:.2f} -> {lower:.2f}, max_model_len -> {length}")
        else:
            add(new, f"gpu_memory_utilization {util:.2f} -> {lower:.2f}", only_util=True)
    shorter = length * 3 // 4 // 1024 * 1024
    if shorter >= 2048 and shorter < length:
        add({"max_model_len": shorter}, f"max_model_len {length} -> {shorter}")
    if p.resolved.kv_cache_dtype == "auto" and inv.kind.fp8_kv.get(ver.version) == "ok":
        add({"kv_cache_dtype": "fp8"}, "kv_cache_dtype auto -> fp8")
    return rungs[:max(0, steps)]
