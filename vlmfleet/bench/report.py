"""The bench report from the per-request rows — pure Python (matplotlib only for the plot), no Locust.

Groups: ``all``, then each kind (``text``, ``image``), then each image size (``image 448x448``). Per group:
requests, errors and the error rate; percentiles p50/p90/p95/p99 of the time to first token and of the end-to-end
latency over the successful requests (linear interpolation between the two nearest ranks, as numpy's default
and statistics.quantiles(method="inclusive")); output tokens; output tokens per second = the group's tokens over
the whole run's wall time (first request's start to last request's end, so that the groups' rates add up to the
run's); the mean decode rate of one request = mean over its successful requests of (tokens - 1) / (e2e - ttft).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable

from .workload import COLUMNS

PERCENTILES = (50, 90, 95, 99)
SUMMARY_COLUMNS = ("group", "requests", "ok", "errors", "error_rate",
                   *(f"ttft_p{p}_s" for p in PERCENTILES), *(f"e2e_p{p}_s" for p in PERCENTILES),
                   "output_tokens", "output_tokens_per_s", "mean_decode_tokens_per_s", "wall_s")


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a requests.csv with numbers as numbers (ttft_s / e2e_s None where empty); [] when the file is
    missing (nothing was recorded)."""
    try:
        with open(path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    except FileNotFoundError:
        return []
    num = lambda v: float(v) if v not in ("", None) else None  # noqa: E731
    return [{**r, "time": float(r["time"]), "ok": r["ok"] == "1", "status": int(r["status"] or 0),
             "ttft_s": num(r["ttft_s"]), "e2e_s": num(r["e2e_s"]), "output_tokens": int(r["output_tokens"] or 0)}
            for r in raw]


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile by linear interpolation between nearest ranks; None for no values.

    + p: 0..100, e.g. ``percentile([1, 2, 3, 4], 50) == 2.5``, ``percentile([1, 2, 3, 4], 90) == 3.7``
    """
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def wall_time(rows: list[dict]) -> float:
    """Seconds from the first request's start to the last one's end (0 for no rows)."""
    if not rows:
        return 0.0
    start = min(r["time"] for r in rows)
    return max(r["time"] + (r["e2e_s"] or 0.0) for r in rows) - start


def groups(rows: list[dict]) -> dict[str, list[dict]]:
    """``{"all": rows, "text": [...], "image": [...], "image 448x448": [...]}``, kinds and sizes in order of
    appearance, groups without rows left out (``all`` always there)."""
    out: dict[str, list[dict]] = {"all": list(rows)}
    for r in rows:
        out.setdefault(r["kind"], []).append(r)
    for r in rows:
        if r["image"]:
            out.setdefault(f"image {r['image']}", []).append(r)
    return out


def summarize(rows: list[dict], wall_s: float) -> dict:
    """One group's summary row (SUMMARY_COLUMNS but ``group``).

    + rows: the group's requests (read_rows)
    + wall_s: the whole run's wall time (wall_time of all rows), e.g. 12.5
    """
    ok = [r for r in rows if r["ok"]]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    e2e = [r["e2e_s"] for r in ok if r["e2e_s"] is not None]
    tokens = sum(r["output_tokens"] for r in ok)
    rates = [(r["output_tokens"] - 1) / (r["e2e_s"] - r["ttft_s"]) for r in ok
             if r["output_tokens"] >= 2 and r["ttft_s"] is not None and r["e2e_s"] is not None
             and r["e2e_s"] > r["ttft_s"]]
    out = {"requests": len(rows), "ok": len(ok), "errors": len(rows) - len(ok),
           "error_rate": (len(rows) - len(ok)) / len(rows) if rows else 0.0}
    out.update({f"ttft_p{p}_s": percentile(ttft, p) for p in PERCENTILES})
    out.update({f"e2e_p{p}_s": percentile(e2e, p) for p in PERCENTILES})
    out.update({"output_tokens": tokens, "output_tokens_per_s": tokens / wall_s if wall_s > 0 else None,
                "mean_decode_tokens_per_s": sum(rates) / len(rates) if rates else None, "wall_s": wall_s})
    return out


def summary(rows: list[dict]) -> list[dict]:
    """Every group's summary row, ``all`` first."""
    wall = wall_time(rows)
    return [{"group": name, **summarize(members, wall)} for name, members in groups(rows).items()]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_summary(path: str | Path, table: list[dict]) -> None:
    """summary.csv: SUMMARY_COLUMNS, one row per group; an empty cell where there is no value."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SUMMARY_COLUMNS)
        for r in table:
            w.writerow([_cell(r[c]) for c in SUMMARY_COLUMNS])


def text_table(table: list[dict]) -> str:
    """The summary as the terminal shows it, times in milliseconds, e.g.::

        GROUP           REQS  ERR  TTFT p50/p95/p99 ms   E2E p50/p95/p99 ms   TOK/S  DECODE TOK/S
        all               30    0  12 / 40 / 41          2610 / 2650 / 2660    49.1  49.9
    """
    def ms(r, what):
        vals = [r[f"{what}_p{p}_s"] for p in (50, 95, 99)]
        return " / ".join("-" if v is None else f"{v * 1000:.0f}" for v in vals)

    head = f"{'GROUP':<20} {'REQS':>5} {'ERR':>4}  {'TTFT p50/p95/p99 ms':<22} {'E2E p50/p95/p99 ms':<24} " \
           f"{'TOK/S':>7}  DECODE TOK/S"
    lines = [head]
    for r in table:
        rate = "-" if r["output_tokens_per_s"] is None else f"{r['output_tokens_per_s']:.1f}"
        decode = "-" if r["mean_decode_tokens_per_s"] is None else f"{r['mean_decode_tokens_per_s']:.1f}"
        lines.append(f"{r['group']:<20} {r['requests']:>5} {r['errors']:>4}  {ms(r, 'ttft'):<22} "
                     f"{ms(r, 'e2e'):<24} {rate:>7}  {decode}")
    return "\n".join(lines) + "\n"


def plot(path: str | Path, rows: list[dict], table: list[dict], title: str = "vlmfleet bench") -> None:
    """plot.png: (1) TTFT and end-to-end latency of each successful request over the run, by kind and size, errors
    marked; (2) p50/p90/p95/p99 of both per group; (3) output tokens per second over the run (1 s bins, tokens
    spread evenly over each request's decode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.5))
    start = min((r["time"] for r in rows), default=0.0)
    labels = [g for g in groups(rows) if g == "text" or g.startswith("image ")]
    for i, g in enumerate(labels):
        mine = [r for r in rows if r["ok"] and _label(r) == g]
        ax1.scatter([r["time"] - start for r in mine], [r["e2e_s"] for r in mine], marker="o", s=18, color=f"C{i}",
                    label=f"{g} end-to-end")
        timed = [r for r in mine if r["ttft_s"] is not None]
        ax1.scatter([r["time"] - start for r in timed], [r["ttft_s"] for r in timed], marker="x", s=18,
                    color=f"C{i}", label=f"{g} TTFT")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        ax1.scatter([r["time"] - start for r in bad], [r["e2e_s"] or 0 for r in bad], marker="s", s=24,
                    color="red", label=f"errors ({len(bad)})")
    ax1.set(xlabel="request start (s into the run)", ylabel="seconds", title="latency per request")
    ax1.legend(fontsize=7)

    names = [r["group"] for r in table]
    width = 0.8 / (2 * len(PERCENTILES))
    for i, (what, p) in enumerate([(w, p) for w in ("ttft", "e2e") for p in PERCENTILES]):
        vals = [r[f"{what}_p{p}_s"] or 0 for r in table]
        ax2.bar([x + (i - len(PERCENTILES) + 0.5) * width for x in range(len(names))], vals, width,
                label=f"{'TTFT' if what == 'ttft' else 'e2e'} p{p}", color=f"C{i}")
    ax2.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax2.set(ylabel="seconds", title="percentiles per group (successful requests)")
    ax2.legend(fontsize=7, ncol=2)

    bins = throughput_bins(rows)
    ax3.stairs(bins, range(len(bins) + 1), fill=True, alpha=0.6)
    ax3.set_ylim(bottom=0)
    ax3.set(xlabel="seconds into the run", ylabel="output tokens / s", title="throughput (1 s bins)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _label(r: dict) -> str:
    return f"image {r['image']}" if r["image"] else "text"


def throughput_bins(rows: list[dict], bin_s: float = 1.0) -> list[float]:
    """Output tokens per second in ``bin_s`` bins from the run's start, each successful request's tokens spread
    evenly from its first token to its end. E.g. one request at 0 s, ttft 0, e2e 2 s, 10 tokens: ``[5.0, 5.0]``."""
    ok = [r for r in rows if r["ok"] and r["e2e_s"] is not None]
    if not ok:
        return []
    start = min(r["time"] for r in rows)
    n = max(1, math.ceil(wall_time(rows) / bin_s))
    bins = [0.0] * n
    for r in ok:
        a = r["time"] - start + (r["ttft_s"] or 0.0)
        b = r["time"] - start + r["e2e_s"]
        if b <= a:
            bins[min(n - 1, int(a / bin_s))] += r["output_tokens"]
            continue
        per_s = r["output_tokens"] / (b - a)
        for i in range(int(a / bin_s), min(n, math.ceil(b / bin_s))):
            overlap = min(b, (i + 1) * bin_s) - max(a, i * bin_s)
            bins[i] += per_s * max(0.0, overlap)
    return [v / bin_s for v in bins]


__all__ = ["COLUMNS", "SUMMARY_COLUMNS", "read_rows", "percentile", "wall_time", "groups", "summarize", "summary",
           "write_summary", "text_table", "plot", "throughput_bins"]
