"""The planner against real vLLM startup logs: each public log (tests/fixtures/vllm-logs/*.json) replayed through
the planner with the log's model, GPUs, vLLM version and serve arguments, and compared with what vLLM logged.

    python -m vlmfleet.calibration tests/fixtures/vllm-logs > docs/calibration.md

A row is within tolerance when the planner's available-KV figure is within max(0.5 GiB, 15 %) of the logged one,
and agrees when the planner's verdict matches what vLLM did (started = "fits"; out of memory or refused = not).
Pure Python; tests/test_calibration.py checks every row and that docs/calibration.md is this output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .catalog import GIB, MIB, CatalogError, estimates, gpu_kind, model, planning_version, version_key
from .gpus import Inventory, parse_spec
from .planner import LIMITS, RESERVE_OF_WEIGHTS, TOLERANCE_FRACTION, TOLERANCE_GIB, Plan, Wish, evaluate

WISH_FIELDS = ("tp", "gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens",
               "limit_images", "limit_videos", "max_pixels", "dtype", "kv_cache_dtype", "enforce_eager", "quantization")


@dataclass(frozen=True)
class Row:
    log: dict[str, Any]
    plan: Plan | None  # None: not comparable (``why``)
    why: str = ""

    @property
    def logged_kv(self) -> float | None:
        return self.log["logged"].get("available_kv_gib")

    @property
    def planned_kv(self) -> float | None:
        return self.plan.memory.kv_cache / GIB if self.plan else None

    @property
    def error(self) -> float | None:
        if self.logged_kv is None or self.planned_kv is None:
            return None
        return self.planned_kv - self.logged_kv

    @property
    def tolerance(self) -> float | None:
        return None if self.logged_kv is None else max(TOLERANCE_GIB, TOLERANCE_FRACTION * abs(self.logged_kv))

    @property
    def within(self) -> bool | None:
        return None if self.error is None else abs(self.error) <= self.tolerance

    @property
    def vllm_started(self) -> bool:
        """vLLM sized its KV cache and went on ("profiled": it failed afterwards for a reason that is not memory)."""
        return self.log["outcome"] in ("started", "profiled")

    @property
    def engine_agrees(self) -> bool:
        """The engine the planner derives for the version, GPU and settings is the one the log shows."""
        return self.plan is not None and self.plan.engine == self.log["engine"]

    @property
    def agrees(self) -> bool | None:
        return None if self.plan is None else (self.plan.verdict == "fits") == self.vllm_started


def load(folder: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def inventory(log: dict[str, Any]) -> Inventory:
    """The log's GPUs: the catalog kind by nvidia-smi name, with CUDA's total as vLLM logged it when it did."""
    kind = gpu_kind(log.get("gpu_kind") or log["gpu"])
    inv = parse_spec(f"{log['gpu_count']}x{kind.id}", log.get("interconnect"))  # the fixture's, else the kind's
    total = log.get("gpu_total_gib_logged")
    if total:
        mib = round(total * GIB / MIB) + kind.reserved_mib
        inv = replace(inv, gpus=tuple(replace(g, memory_mib=mib) for g in inv.gpus))
    return inv


def wish(log: dict[str, Any]) -> Wish:
    raw = log.get("wish") or {}
    values = {k: raw[k] for k in WISH_FIELDS if raw.get(k) is not None}
    low = LIMITS["max_pixels"][0]
    if values.get("max_pixels", low) < low:  # a run that lowered min_pixels too: a few tokens per image either way
        values["max_pixels"] = low
    if values.get("quantization") in ("awq", "awq_marlin"):
        values.pop("quantization")  # vLLM detects it; the planner renders the kernel itself
    if log.get("env", {}).get("VLLM_USE_V1") == "0":
        values["engine"] = "V0"  # forced by the run's environment; otherwise the planner derives it
    elif log.get("forced_engine"):
        values["engine"] = log["forced_engine"]  # forced by a flag the planner does not plan (evidence.forced_engine)
    return Wish(**values)


def replay(log: dict[str, Any]) -> Row:
    """The planner's plan for one logged startup, or why it cannot be compared."""
    if log.get("not_comparable"):
        return Row(log, None, log["not_comparable"])
    try:
        m = model(log.get("catalog_model") or log["model"].split(" ")[0])
        inv = inventory(log)
        version = planning_version(log.get("planned_as") or log["vllm_version"])
    except CatalogError as exc:
        return Row(log, None, str(exc))
    if log.get("replay_weights") == "logged":  # a checkpoint the planner cannot size: its logged weights
        return Row(log, evaluate(m, inv, version, replace(wish(log), quantization=None),
                                 loaded_weights=int(log["logged"]["model_loading_gib"] * GIB)))
    return Row(log, evaluate(m, inv, version, wish(log)))


def rows(folder: str | Path) -> list[Row]:
    return [replay(log) for log in load(folder)]


#: The estimates chosen on these logs, and on which (the others are read from vLLM's code or measured): the
#: estimate, its value as the catalog has it, the logs (each with what it showed), and a remark.
def fitted() -> list[tuple[str, str, tuple[tuple[str, str], ...], str]]:
    e = estimates()
    return [
        ("encoder_factor", f"{e['encoder_factor']}", (("tsailiming-byom-l4-tp1-7b-v1", "an image"),
                                                      ("scpwcsdgpu1-readme-a100-80-tp1-7b-v1-oom", "a video")), ""),
        ("nccl_gib.pcie", f"{e['nccl_gib']['pcie']} GiB", (("tsailiming-multigpu-l4-tp2-7b-v1", ""),), ""),
        ("decoder_hidden_copies", f"{int(e['decoder_hidden_copies'])}",
         (("unsloth-notebooks-t4-tp1-7b-bnb4-v0", ""), ("vllm-16570-a100-40g-tp4-72b-v0-oom", "")), ""),
        ("weights_extra_gib", f"{e['weights_extra_gib']} GiB",
         (("tsailiming-byom-l4-tp1-7b-v1", ""), ("scpwcsdgpu1-readme-a100-80-tp1-7b-v1-oom", "")),
         "('Model loading took' 15.63 and 15.67 GiB for 15.45 of parameters)"),
        ("reserve (planner.RESERVE_OF_WEIGHTS)", f"{RESERVE_OF_WEIGHTS * 100:.0f} % of the weights per GPU",
         (("vllm-16570-a100-40g-tp4-72b-v1-oom", ""),), ""),
    ]


def _fitted_on(logs: tuple[tuple[str, str], ...], remark: str) -> str:
    text = ", ".join(log + (f" ({what})" if what else "") for log, what in logs)
    return text + (f" {remark}" if remark else "")


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def markdown(all_rows: list[Row]) -> str:
    comparable = [r for r in all_rows if r.plan]
    out = ["# The planner against real vLLM startup logs", "",
           "Generated by `python -m vlmfleet.calibration tests/fixtures/vllm-logs`; `tests/test_calibration.py` "
           "checks every row. Each public startup log of Qwen2.5-VL (the fixture names its URL, the quoted lines and "
           "where each setting comes from) is replayed through the planner: same checkpoint, GPUs (CUDA's total as the "
           "log shows it), vLLM version and serve arguments. **Available KV** is what the profiler left for the KV "
           "cache per GPU (GiB); the tolerance is max(0.5 GiB, 15 %) of the logged figure. **Verdict** is the "
           "planner's against what vLLM did: started = fits; out of memory or refused = does not fit.", "",
           "| log | vLLM | engine | GPUs | model | logged KV | planned KV | error | within | vLLM | planner | agrees |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparable:
        p = r.plan
        within = {None: "—", True: "yes", False: "**no**"}[r.within]
        shown = r.log["vllm_version"] + (f" (as {r.log['planned_as']})" if r.log.get("planned_as") else "")
        out.append(f"| [{r.log['id']}]({r.log['url']}) | {shown} | {p.engine} | "
                   f"{p.inventory.count}x{p.inventory.kind.id} | {p.model.id} | {_f(r.logged_kv)} | "
                   f"{_f(r.planned_kv)} | {_f(r.error, '{:+.2f}')} | {within} | {r.log['outcome']} | {p.verdict} | "
                   f"{'yes' if r.agrees else '**no**'} |")
    versions = sorted({r.plan.version.version for r in comparable}, key=version_key)
    kinds = sorted({r.plan.inventory.kind.id for r in comparable})
    errors = sorted(abs(r.error) for r in comparable if r.error is not None)
    out += ["", f"{len(comparable)} logs, {len(versions)} vLLM versions ({', '.join(versions)}), {len(kinds)} GPU kinds "
            f"({', '.join(kinds)}); median |error| {_f(errors[len(errors) // 2] if errors else None)} GiB, largest "
            f"{_f(errors[-1] if errors else None)} GiB.", "",
            "## How each row is planned", ""]
    for r in comparable:
        p = r.plan
        m = p.memory
        out.append(f"- **{r.log['id']}**: budget {m.budget / GIB:.2f} = {m.total / GIB:.2f} × "
                   f"{p.resolved.gpu_memory_utilization:.2f}; weights {m.weights / GIB:.2f}"
                   f"{' (taken from the log: ' + r.log['model'] + ')' if r.log.get('replay_weights') == 'logged' else ''} (logged "
                   f"{_f(r.log['logged'].get('model_loading_gib'))}); activation {m.activation / GIB:.2f} (logged "
                   f"{_f(r.log['logged'].get('activation_peak_gib'))}); non-torch charged {m.non_torch / GIB:.2f} "
                   f"(logged {_f(r.log['logged'].get('non_torch_gib'))}); CUDA graphs "
                   f"{'charged ' if p.version.counts_cudagraph_memory else 'not charged, '}{m.cudagraph / GIB:.2f} "
                   f"(logged {_f(r.log['logged'].get('cuda_graph_gib'))}). {p.mm_profile.why if p.mm_profile else ''}."
                   + (f" Replay: {r.log['replay_note']}." if r.log.get("replay_note") else ""))
    out += ["", "## What was fitted on which logs", "",
            "The rows are in-sample: the estimates below were chosen on these logs (the rest of the model is read "
            "from vLLM's code or measured), so the table shows the model is consistent with them, and the rows that "
            "fitted nothing are the fairer test.", "",
            "| estimate (catalog/vllm.yaml) | value | fitted on |", "|---|---|---|"]
    table = fitted()
    out += [f"| `{k}` | {v} | {_fitted_on(logs, remark)} |" for k, v, logs, remark in table]
    held = sorted({r.log["id"] for r in comparable} - {log for _, _, logs, _ in table for log, _ in logs})
    out += ["", "Fitted nothing: " + ", ".join(held) + " (the language-only T4 log shares its setting with the fitted "
            "T4 one, so only its checkpoint differs)."]
    skipped = [r for r in all_rows if not r.plan]
    if skipped:
        out += ["", "## Logs kept but not compared", ""]
        out += [f"- [{r.log['id']}]({r.log['url']}): {r.why}" for r in skipped]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    folder = argv[1] if len(argv) > 1 else "tests/fixtures/vllm-logs"
    sys.stdout.write(markdown(rows(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
