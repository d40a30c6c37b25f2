"""The ``vlmfleet`` command. Subcommands: ``plan`` (VRAM planner and flags), ``lab`` (up, status, down, ssh)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from .lab import LabConfig, LabError


def _lab(args: argparse.Namespace) -> int:
    try:
        from .lab import lab
    except ImportError as exc:
        raise LabError(f"the lab needs its optional dependencies ({exc}); install them with "
                       "`pip install -e '.[lab]'`") from exc

    cfg = LabConfig.from_env()
    if args.action == "up":
        lab.up(cfg, args.hosts, ops=not args.no_ops)
    elif args.action == "down":
        lab.down(cfg, purge=args.purge)
    elif args.action == "status":
        report, healthy = lab.status(cfg)
        print(report)
        return 0 if healthy else 3
    elif args.action == "ssh":
        if not cfg.ssh_config.exists():
            raise LabError("no lab is running; start it with `vlmfleet lab up`")
        os.execvp("ssh", ["ssh", "-F", str(cfg.ssh_config), args.host, *args.command])
    return 0


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse; with ``one_line_errors`` (``plan``), a usage error is one stderr line and exit 2, no usage dump."""

    def __init__(self, *args, one_line_errors: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.one_line_errors = one_line_errors

    def error(self, message: str):
        if not self.one_line_errors:
            super().error(message)
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _read(option: str, path: str) -> str:
    """The text of the file an option names, or a UsageError naming the option, the path and why."""
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path}: is a folder, not a file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not a text file") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None


def _inventory(args: argparse.Namespace):
    import subprocess

    from .gpus import NVIDIA_SMI_QUERY, NVIDIA_SMI_TOPO, InventoryError, parse_nvidia_smi, parse_spec

    try:
        if args.nvidia_smi_csv:
            topo = _read("--nvidia-smi-topo", args.nvidia_smi_topo) if args.nvidia_smi_topo else None
            return parse_nvidia_smi(_read("--nvidia-smi-csv", args.nvidia_smi_csv), topo, args.interconnect)
        if args.gpus == "local":
            try:
                q = subprocess.run(NVIDIA_SMI_QUERY.split(), capture_output=True, text=True)
                t = subprocess.run(NVIDIA_SMI_TOPO.split(), capture_output=True, text=True)
            except OSError as exc:
                raise UsageError(f"--gpus local: cannot run nvidia-smi ({exc.strerror or exc})") from None
            if q.returncode != 0:
                raise UsageError(f"--gpus local: `{NVIDIA_SMI_QUERY}` failed: {(q.stderr or q.stdout).strip()}")
            return parse_nvidia_smi(q.stdout, t.stdout if t.returncode == 0 else None, args.interconnect)
        if not args.gpus:
            raise UsageError("give --gpus COUNTxKIND (e.g. 4xT4), --gpus local, or --nvidia-smi-csv FILE")
        return parse_spec(args.gpus, args.interconnect)
    except (InventoryError, OSError) as exc:
        raise UsageError(str(exc)) from exc


#: plan's whole-number options: Wish field -> (option, what it must be, example value); ranges: planner.LIMITS
WHOLE_OPTIONS = {
    "tp": ("--tp", "a whole number", "2"),
    "max_num_seqs": ("--max-num-seqs", "a whole number", "16"),
    "max_num_batched_tokens": ("--max-num-batched-tokens", "a whole number of tokens", "8192"),
    "limit_images": ("--limit-images", "a whole number", "5"),
    "limit_videos": ("--limit-videos", "a whole number", "0"),
    "max_pixels": ("--max-pixels", "a whole number of pixels", "1003520"),
}


def _shown(value: str) -> str:
    """A value as an error message quotes it: numbers as typed, anything else in quotes."""
    return value if re.fullmatch(r"[-+]?\d+(\.\d+)?", value) else repr(value)


def _whole(value: str | None, field: str) -> int | None:
    from .planner import LIMITS

    if value is None:
        return None
    option, what, example = WHOLE_OPTIONS[field]
    low, high = LIMITS[field]
    if re.fullmatch(r"\s*[-+]?\d+\s*", value) and low <= int(value) <= high:
        return int(value)
    span = f">= {low}" if re.fullmatch(r"\s*[-+]?\d+\s*", value) is None or int(value) < low else f"<= {high}"
    raise UsageError(f"{option} {_shown(value)}: must be {what} {span} (e.g. {option} {example})")


def _max_model_len(value: str | None) -> int | None:
    if value is None:
        return None
    if value.strip() == "auto":
        return -1
    if re.fullmatch(r"\s*\+?\d+\s*", value) and int(value) >= 1:
        return int(value)
    raise UsageError(f"--max-model-len {_shown(value)}: must be a whole number of tokens >= 1, or auto")


def _utilization(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        u = float(value)
    except ValueError:
        u = math.nan
    if math.isfinite(u) and 0 < u <= 1:
        return u
    raise UsageError(f"--gpu-memory-utilization {_shown(value)}: must be a fraction in (0, 1] "
                     "(e.g. --gpu-memory-utilization 0.90)")


def _wish(args: argparse.Namespace):
    """The planner Wish of plan's options, every number range-checked (a UsageError names the option)."""
    from .planner import Wish

    numbers = {k: _whole(getattr(args, k), k) for k in WHOLE_OPTIONS}
    return Wish(max_model_len=_max_model_len(args.max_model_len),
                gpu_memory_utilization=_utilization(args.gpu_memory_utilization), kv_cache_dtype=args.kv_cache_dtype,
                dtype=args.dtype, quantization=args.quantization, enforce_eager=args.enforce_eager, **numbers)


def _with_config(m, path: str):
    """``m`` with the numbers of the config.json at ``path``; a UsageError names --config, the path and why."""
    from dataclasses import fields
    from pathlib import Path

    from .catalog import CatalogError, model_with_config

    where = f"--config {path}"
    p = Path(path)
    if p.is_dir():
        inside = p / "config.json"
        raise UsageError(f"{where}: is a folder; pass " + (str(inside) if inside.is_file() else "the config.json file"))
    if not p.exists():
        raise UsageError(f"config.json not found at {path} (--config); pass the downloaded checkpoint's config.json")
    try:
        config = json.loads(_read("--config", path))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{where}: holds a JSON {type(config).__name__}, not the object a config.json is")
    try:
        out = model_with_config(m, config, path)
    except CatalogError as exc:
        raise UsageError(f"{where}: {str(exc).removeprefix(f'{path}: ')}") from None
    except (ValueError, TypeError, AttributeError, KeyError, ArithmeticError) as exc:
        raise UsageError(f"{where}: not a usable Qwen2.5-VL config.json ({type(exc).__name__}: {exc})") from None
    bad = [f"{part}.{f.name} {getattr(arch, f.name)}" for part, arch in (("text", out.text), ("vision", out.vision))
           for f in fields(arch) if type(getattr(arch, f.name)) is int and getattr(arch, f.name) < 1]
    if bad:
        raise UsageError(f"{where}: {', '.join(bad)}: every size must be >= 1")
    return out


def _plot_target(path: str) -> str:
    """Check before planning that --plot can write ``path``: matplotlib installed, the folder there and writable."""
    try:
        import matplotlib  # noqa: F401 (the package itself: a cached submodule would hide its absence)
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(f"--plot {path}: needs matplotlib: pip install 'vlmfleet[plot]'") from None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--plot {path}: is a folder; give a file name such as {os.path.join(path, 'plan.png')}")
    if not os.path.isdir(folder):
        raise UsageError(f"--plot {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--plot {path}: folder {folder} is not writable")
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise UsageError(f"--plot {path}: matplotlib cannot write .{ext} (use one of: {', '.join(sorted(formats))})")
    return path


def _plan(args: argparse.Namespace) -> int:
    from . import report
    from .catalog import CatalogError, model, planning_version
    from .planner import plan
    from .seed import parse_command, plan_command, seed_rows

    wish = _wish(args)
    try:
        version = planning_version(args.vllm)
    except CatalogError as exc:
        raise UsageError(str(exc)) from None
    if args.seed_table:
        rows = seed_rows(version)
        if args.format == "md":
            sys.stdout.write(report.seed_markdown(rows))
        elif args.format == "json":
            sys.stdout.write(json.dumps([r.plan.to_dict() | {"seed": r.seed.id, "seed_findings": [str(f) for f in r.parsed.findings]} for r in rows], indent=2) + "\n")
        elif args.format == "csv":
            sys.stdout.write(report.csv_rows([r.plan for r in rows]))
        else:
            sys.stdout.write(report.seed_text(rows))
        return 0
    plot = _plot_target(args.plot) if args.plot else None
    inv = _inventory(args)
    parsed = None
    if args.from_command:
        try:
            parsed = parse_command(args.from_command, version)
        except ValueError as exc:  # CatalogError (an unknown model) included
            raise UsageError(f"--from-command: {exc}") from None
        m = parsed.model
    else:
        try:
            m = model(args.model)
        except CatalogError as exc:
            raise UsageError(str(exc)) from None
    if args.config:
        m = _with_config(m, args.config)
    p = plan_command(parsed, inv, version, m) if parsed else plan(m, inv, version, wish)
    for f in parsed.findings if parsed else ():
        print(f"command: {f}", file=sys.stderr)
    out = {"table": report.text, "md": report.markdown, "json": report.as_json,
           "csv": lambda x: report.csv_rows([x])}[args.format](p)
    sys.stdout.write(out)
    if plot:
        try:
            report.plot(p, plot)
        except OSError as exc:
            raise UsageError(f"--plot {plot}: cannot write it ({exc.strerror or exc})") from None
        except SystemExit as exc:  # report.plot's "needs matplotlib"
            raise UsageError(f"--plot {plot}: {exc}") from None
        print(f"plot written to {plot}", file=sys.stderr)
    return 0 if p.verdict == "fits" else 4


def _status_data(items: list[str]) -> dict:
    """``--data KEY=VALUE`` options as pyinfra reads them (``32`` an int, ``true`` a bool, JSON, else text)."""
    from pyinfra_cli.util import parse_cli_arg

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--data {item!r}: must be KEY=VALUE (e.g. --data vllm_max_num_seqs=32)")
        out[key.strip()] = parse_cli_arg(value)
    return out


def _status(args: argparse.Namespace) -> int:
    """``vlmfleet status INVENTORY``: per serving host, unit, release, drift, health, load and GPU memory."""
    from . import fleet
    from .status import as_json, exit_status, table
    from .status_collect import collect_all

    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a number of seconds > 0 (e.g. --timeout 20)")
    try:
        members = fleet.limit(fleet.load(args.inventory, _status_data(args.data)), args.limit)
    except fleet.FleetError as exc:
        raise UsageError(str(exc)) from None
    serving = [m for m in members if m.serves]
    if not serving:
        raise UsageError(f"{args.inventory}: no host that serves a model"
                         + (f" among --limit {' '.join(args.limit)}" if args.limit else "")
                         + " (a serving host has a vlm_profile: put it in a profile group)")
    rows = collect_all(serving, args.timeout, args.tunnel)
    sys.stdout.write(as_json(rows) if args.json else table(rows))
    return exit_status(rows)


def _bench(args: argparse.Namespace) -> int:
    """``vlmfleet bench``: a bounded Locust load test of one host, a group's gateway or the fleet (vlmfleet.bench)."""
    from .bench.run import BenchError, BenchUsageError, bench

    try:
        return bench(args)
    except BenchUsageError as exc:
        raise UsageError(str(exc)) from None
    except BenchError as exc:
        print(f"vlmfleet bench: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlmfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan_p = sub.add_parser(
        "plan", help="per-GPU memory plan, verdict and vllm serve flags for a model on a GPU inventory",
        one_line_errors=True,
        description="Per-GPU memory plan, verdict and vllm serve flags. Exit status: 0 fits; 2 bad input (one "
                    "line on stderr naming the option, or the --from-command flag, and the value); 3 internal "
                    "error (please report); 4 does not fit, or invalid (vLLM would refuse it, e.g. a "
                    "--from-command flag that this vLLM version does not have).")
    plan_p.add_argument("--model", default="qwen2.5-vl-7b-instruct",
                        help="catalog id or hub repo id (default: qwen2.5-vl-7b-instruct)")
    plan_p.add_argument("--gpus", help="COUNTxKIND, e.g. 4xT4, 8xA100-40; or `local` to read this machine's nvidia-smi")
    plan_p.add_argument("--nvidia-smi-csv", metavar="FILE", help="saved output of the preflight nvidia-smi query")
    plan_p.add_argument("--nvidia-smi-topo", metavar="FILE", help="saved output of `nvidia-smi topo -m`")
    plan_p.add_argument("--interconnect", choices=["nvlink", "pcie", "pcie_no_p2p"], help="override the GPU link class")
    plan_p.add_argument("--vllm", default="0.33.0", help="vLLM version of the image (default: 0.33.0; the seed's is 0.8.2)")
    plan_p.add_argument("--config", metavar="CONFIG_JSON", help="the checkpoint's config.json (its numbers win over the catalog)")
    # numbers are read as text and range-checked by _wish, so that an error names the option and the value
    plan_p.add_argument("--max-model-len", metavar="N", help="tokens (>= 1), or auto (0.33)")
    plan_p.add_argument("--max-num-seqs", metavar="N", help=">= 1")
    plan_p.add_argument("--max-num-batched-tokens", metavar="N", help=">= 1 (and >= --max-num-seqs)")
    plan_p.add_argument("--limit-images", metavar="N", help="images per prompt (>= 0)")
    plan_p.add_argument("--limit-videos", metavar="N", help="videos per prompt (>= 0)")
    plan_p.add_argument("--max-pixels", metavar="N", help="largest image kept by the processor (default 12845056)")
    plan_p.add_argument("--gpu-memory-utilization", metavar="FRACTION", help="in (0, 1]")
    plan_p.add_argument("--kv-cache-dtype", default="auto")
    plan_p.add_argument("--tp", metavar="N", help="tensor parallel size, >= 1 (default: every GPU)")
    plan_p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16"])
    plan_p.add_argument("--quantization", help="what to pass as --quantization (default: let vLLM detect it)")
    plan_p.add_argument("--enforce-eager", action="store_true")
    plan_p.add_argument("--from-command", metavar="'vllm serve ...'", help="plan an existing vllm serve command line")
    plan_p.add_argument("--seed-table", action="store_true", help="evaluate every deployment command of the seed document")
    plan_p.add_argument("--format", choices=["table", "md", "csv", "json"], default="table")
    plan_p.add_argument("--plot", metavar="FILE.png", help="draw the breakdown and KV capacity (needs matplotlib)")
    plan_p.set_defaults(func=_plan)

    lab_p = sub.add_parser("lab", help="local test hosts (systemd-nspawn) for proving deploys over SSH")
    lab_sub = lab_p.add_subparsers(dest="action", required=True)
    up_p = lab_sub.add_parser("up", help="bring up N hosts (default 3); running hosts are kept")
    up_p.add_argument("--hosts", type=int, default=3, metavar="N", help="number of GPU hosts (default: 3)")
    up_p.add_argument("--no-ops", action="store_true", help="without the operations host `ops` (Prometheus, "
                      "the gateway)")
    lab_sub.add_parser("status", help="show hosts and helper daemons; exit 3 when not fully up")
    down_p = lab_sub.add_parser("down", help="remove hosts, network and daemons (the cache stays)")
    down_p.add_argument("--purge", action="store_true", help="also delete the cached rootfs, packages, registry")
    ssh_p = lab_sub.add_parser("ssh", help="ssh into a lab host, e.g. `vlmfleet lab ssh h1 uptime`")
    ssh_p.add_argument("host")
    ssh_p.add_argument("command", nargs=argparse.REMAINDER)
    lab_p.set_defaults(func=_lab)

    status_p = sub.add_parser(
        "status", help="per serving host: unit, release, drift, health, requests, KV cache, GPU memory",
        one_line_errors=True,
        description="Reads every serving host of INVENTORY over SSH (a few commands) and HTTP (/health, "
                    "/version, /metrics; through an SSH tunnel when the API port is not reachable). Exit status: "
                    "0 every host active, healthy and running what its data wants; 1 a host unreachable, its "
                    "unit not active, or not healthy; 2 bad input (inventory missing, lab not up); 3 every host "
                    "healthy but one drifted (or its drift could not be told). See docs/status.md.")
    status_p.add_argument("inventory", metavar="INVENTORY", help="e.g. inventories/prod.py")
    status_p.add_argument("--json", action="store_true", help="a JSON list of objects instead of the table")
    status_p.add_argument("--limit", nargs="+", default=[], metavar="NAME", help="hosts or groups to read")
    status_p.add_argument("--timeout", type=float, default=20.0, metavar="S",
                          help="seconds for each host (default: 20); hosts are read in parallel")
    status_p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                          help="override host data as `pyinfra --data` does: judge drift against it")
    status_p.add_argument("--tunnel", choices=["auto", "always", "never"], default="auto",
                          help="HTTP through an SSH tunnel: auto (when the port does not answer), always, never")
    status_p.set_defaults(func=_status)

    from .bench.run import add_arguments as bench_arguments

    bench_p = sub.add_parser(
        "bench", help="load test: TTFT and latency percentiles, tokens/s and errors as CSV and a PNG plot",
        one_line_errors=True,
        description="Streams text and image chat completions (Locust, headless) at one host, a group's gateway or "
                    "the fleet for a bounded time and request count, then writes requests.csv, summary.csv and "
                    "plot.png. Exit status: 0 done within --max-error-rate; 1 over it, nothing succeeded, a target "
                    "that does not answer, or Locust failed; 2 bad input. See docs/bench.md.")
    bench_arguments(bench_p)
    bench_p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "plan":
            print(f"vlmfleet plan: error: unrecognized arguments: {' '.join(extra)} (see vlmfleet plan --help)",
                  file=sys.stderr)
            return 2
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except LabError as exc:
        print(f"vlmfleet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"vlmfleet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlmfleet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # plan promises 0/2/3/4 and never a traceback; other subcommands keep theirs
        if args.command != "plan":
            raise
        print(f"vlmfleet plan: internal error: {type(exc).__name__}: {_one_line(exc)} (please report)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
