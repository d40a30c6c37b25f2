"""Plans as text: a readable table, Markdown, CSV, JSON, and an optional PNG (matplotlib)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

from . import memory_model as mm
from .catalog import GIB
from .flags import command_line, serve_args, serve_env
from .planner import Plan, plan
from .seed import SeedRow


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def model_path(p: Plan) -> str:
    """Where the unit mounts the weights in the container (the same path the service stage uses)."""
    from .config import CONTAINER_MODELS

    return f"{CONTAINER_MODELS}/{p.model.repo_dir}"


def rendered(p: Plan) -> tuple[list[str], dict[str, str]]:
    return serve_args(p, model_path(p), p.model.id), serve_env(p)


def breakdown_rows(p: Plan) -> list[tuple[str, str, str]]:
    mem, r = p.memory, p.resolved
    graphs_note = "counted" if p.version.counts_cudagraph_memory else f"not counted by {p.version.version}"
    if r.enforce_eager:
        graphs_note = "--enforce-eager"
    return [
        ("total", _gib(mem.total), f"CUDA's total: {p.inventory.memory_mib} MiB less {p.inventory.kind.reserved_mib} reserved"),
        ("budget", _gib(mem.budget), f"gpu_memory_utilization {float(r.gpu_memory_utilization):.2f}"),
        ("weights", _gib(mem.weights), f"tp {p.tp}, {p.model.quantization or p.dtype}"),
        ("profiling peak", _gib(mem.activation),
         f"encoder {_gib(mem.encoder_peak)} on {p.profile_mm_tokens} mm tokens, decoder {_gib(mem.lm_peak)} "
         f"on {r.max_num_batched_tokens} tokens (estimate)"),
        ("non-torch", _gib(mem.non_torch), _non_torch_note(p)),
        ("CUDA graphs", _gib(mem.cudagraph), graphs_note + " (estimate)"),
        ("KV cache", _gib(mem.kv_cache), f"{p.kv_capacity_tokens} tokens"),
        ("reserve", _gib(mem.margin), f"kept for the estimates: 'fits' trusts {p.safe_capacity_tokens} tokens"),
    ]


def _non_torch_note(p: Plan) -> str:
    """Which non-torch memory this version charges (catalog memory: non_torch_charged_*), and what it does not."""
    charged = mm.non_torch(p.version.memory, p.engine, p.tp, p.inventory.interconnect).charged_parts
    parts = ", ".join(mm.NON_TORCH_NAMES[x].removeprefix("the ") for x in charged) or "nothing"
    rest = (p.memory.non_torch_total - p.memory.non_torch) / 2**30
    return f"charged by {p.version.version}: {parts}" + (f"; {rest:.2f} more not charged" if rest > 0.005 else "") + \
        " (estimate)"


def text(p: Plan) -> str:
    r = p.resolved
    out = [
        f"vlmfleet plan: {p.model.id} on {p.inventory.describe()}, vLLM {p.version.version} ({p.engine} engine)",
        f"config: {p.model.source}",
        f"verdict: {p.verdict.upper()}",
        "",
        f"{'per GPU':16} {'GiB':>8}  detail",
    ]
    out += [f"{name:16} {val:>8}  {detail}" for name, val, detail in breakdown_rows(p)]
    kvd = r.kv_cache_dtype if r.kv_cache_dtype != "auto" else p.dtype
    out += [
        "",
        f"KV cache: {p.kv_bytes_per_token} B/token per GPU ({kvd}; {p.kv_bytes_per_token_model} B/token for the "
        f"whole model), capacity {p.kv_capacity_tokens} tokens",
        f"max_model_len {p.max_model_len}: one request {'fits' if p.fits_one_request else 'does NOT fit'}; "
        f"{p.concurrency:.1f} concurrent max-length requests (max_num_seqs {r.max_num_seqs})",
        f"largest image: {p.image_tokens} tokens (max_pixels {r.max_pixels}); per prompt: {r.limit_images} images, "
        f"{r.limit_videos} videos",
    ]
    for title, items in (("errors", p.errors), ("warnings", p.warnings), ("notes", p.notes)):
        if items:
            out += ["", f"{title}:"] + [f"  - {i}" for i in items]
    if p.proposal:
        pp = p.proposal
        out += ["", f"proposal: {pp.reason} ({', '.join(f'{k}={v}' for k, v in pp.changes.items())}) -> "
                    f"{pp.plan.verdict}, {pp.plan.kv_capacity_tokens} KV tokens, "
                    f"{pp.plan.concurrency:.1f} concurrent {pp.plan.max_model_len}-token requests"]
    shown = p if p.verdict == "fits" or not p.proposal else p.proposal.plan
    args, env = rendered(shown)
    out += ["", "command" + ("" if shown is p else " (with the proposal)") + ":", "  " + command_line(args)]
    out += ["environment:"] + [f"  {k}={v}" for k, v in env.items()] + ["  VLLM_API_KEY from the root-only env file"]
    return "\n".join(out) + "\n"


def markdown(p: Plan) -> str:
    out = [f"### {p.model.id} on {p.inventory.describe()}, vLLM {p.version.version}", "",
           f"**Verdict: {p.verdict}** — KV capacity {p.kv_capacity_tokens} tokens, "
           f"{p.concurrency:.1f} concurrent {p.max_model_len}-token requests", "",
           "| per GPU | GiB | detail |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in breakdown_rows(p)]
    for title, items in (("Errors", p.errors), ("Warnings", p.warnings), ("Notes", p.notes)):
        if items:
            out += ["", f"{title}:"] + [f"- {i}" for i in items]
    if p.proposal:
        out += ["", f"Proposal: {p.proposal.reason}."]
    shown = p if p.verdict == "fits" or not p.proposal else p.proposal.plan
    out += ["", "```", command_line(rendered(shown)[0]), "```"]
    return "\n".join(out) + "\n"


CSV_FIELDS = ["model", "gpus", "vllm", "engine", "verdict", "tp", "dtype", "quantization", "max_model_len",
              "total_gib", "budget_gib", "weights_gib", "activation_gib", "non_torch_gib", "cudagraph_gib",
              "kv_cache_gib", "kv_bytes_per_token", "kv_capacity_tokens", "concurrency", "errors", "proposal"]


def csv_rows(plans: list[Plan]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for p in plans:
        m = p.memory
        w.writerow({
            "model": p.model.id, "gpus": p.inventory.describe(), "vllm": p.version.version, "engine": p.engine,
            "verdict": p.verdict, "tp": p.tp, "dtype": p.dtype, "quantization": p.quantization or "",
            "max_model_len": p.max_model_len, "total_gib": _gib(m.total), "budget_gib": _gib(m.budget),
            "weights_gib": _gib(m.weights), "activation_gib": _gib(m.activation), "non_torch_gib": _gib(m.non_torch),
            "cudagraph_gib": _gib(m.cudagraph), "kv_cache_gib": _gib(m.kv_cache),
            "kv_bytes_per_token": p.kv_bytes_per_token, "kv_capacity_tokens": p.kv_capacity_tokens,
            "concurrency": f"{p.concurrency:.2f}", "errors": " | ".join(str(e) for e in p.errors),
            "proposal": p.proposal.reason if p.proposal else "",
        })
    return buf.getvalue()


def as_json(p: Plan) -> str:
    d = p.to_dict()
    args, env = rendered(p)
    d["command"] = args
    d["environment"] = env
    if p.proposal:
        pargs, penv = rendered(p.proposal.plan)
        d["proposal"]["command"] = pargs
        d["proposal"]["environment"] = penv
    return json.dumps(d, indent=2) + "\n"


# ---- the seed table --------------------------------------------------------------------------------------
def _why(row: SeedRow) -> list[str]:
    p = row.plan
    reasons = [str(e) for e in p.errors]
    reasons += [str(f) for f in row.parsed.findings]
    if not p.errors and p.verdict != "fits":
        reasons += [n for n in p.notes if "KV cache holds" in n or "exceed" in n]
    reasons += [str(w) for w in p.warnings if w.key != "config"]
    return reasons


def seed_markdown(rows: list[SeedRow]) -> str:
    version = rows[0].plan.version.version if rows else "?"
    out = [
        f"| seed command | GPUs | verdict on vLLM {version} | why | smallest fix | KV tokens after fix (concurrent max-length requests) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, f = r.plan, r.final
        fix = r.plan.proposal.reason if r.plan.proposal else ("none needed" if p.verdict == "fits" else "no single change fits")
        if p.proposal and p.proposal.changes:
            fix += " (" + ", ".join(f"{k}={v}" for k, v in p.proposal.changes.items()) + ")"
        why = "<br>".join(_why(r)) or "—"
        gpus = r.seed.gpus + (f" ({r.seed.gpus_note})" if r.seed.gpus_note else "")
        out.append(f"| `{r.seed.id}` ({r.seed.section}) | {gpus} | **{p.verdict}** | {why} | {fix} | "
                   f"{f.kv_capacity_tokens} ({f.concurrency:.1f} × {f.max_model_len}) |")
    out += ["", "Corrected commands (the seed's image, vLLM " + version + "; the API key comes from VLLM_API_KEY):", ""]
    for r in rows:
        out += [f"- `{r.seed.id}`:", "  ```", "  " + command_line(r.corrected_args()), "  ```"]
    return "\n".join(out) + "\n"


def seed_text(rows: list[SeedRow]) -> str:
    out = []
    for r in rows:
        p = r.plan
        out += [f"== {r.seed.id}: {r.seed.section} on {r.seed.gpus}" + (f" ({r.seed.gpus_note})" if r.seed.gpus_note else ""),
                f"   seed: {r.seed.command}", f"   verdict: {p.verdict}"]
        out += [f"   - {w}" for w in _why(r)]
        if p.proposal:
            out.append(f"   fix: {p.proposal.reason}")
        out += [f"   corrected: {command_line(r.corrected_args())}", ""]
    return "\n".join(out)


# ---- plot ------------------------------------------------------------------------------------------------
def plot(p: Plan, path: str) -> None:
    """Memory breakdown per GPU and KV capacity against max model length, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'vlmfleet[plot]'") from exc
    mem = p.memory
    parts = [("weights", mem.weights), ("profiling peak", mem.activation), ("non-torch", mem.non_torch),
             ("CUDA graphs", mem.cudagraph if p.version.counts_cudagraph_memory else 0), ("KV cache", max(mem.kv_cache, 0))]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = 0.0
    for name, val in parts:
        ax1.bar(["per GPU"], [val / GIB], bottom=bottom, label=f"{name} {val / GIB:.1f} GiB")
        bottom += val / GIB
    ax1.axhline(mem.budget / GIB, color="k", ls="--", lw=1, label=f"budget {mem.budget / GIB:.1f} GiB")
    ax1.axhline(mem.total / GIB, color="r", ls=":", lw=1, label=f"total {mem.total / GIB:.1f} GiB")
    ax1.set_ylabel("GiB")
    ax1.set_title(f"{p.model.id}\n{p.inventory.describe()}, vLLM {p.version.version}", fontsize=9)
    ax1.legend(fontsize=7, loc="lower right")
    top = p.model.text.max_position_embeddings
    xs = sorted({1024, 2048, 4096, 8192, 16384, 32768, 65536, top, p.max_model_len})
    caps = [plan(p.model, p.inventory, p.version, replace(p.wish, max_model_len=x), propose=False).kv_capacity_tokens
            for x in xs]
    ax2.plot(xs, caps, marker="o", label="KV capacity (tokens)")
    ax2.plot(xs, xs, ls="--", color="grey", label="one max-length request")
    ax2.axvline(p.max_model_len, color="r", ls=":", lw=1, label=f"max_model_len {p.max_model_len}")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("max_model_len")
    ax2.set_ylabel("tokens")
    ax2.set_title("KV capacity against max model length (profiling grows with it)", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
