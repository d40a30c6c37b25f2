"""The ``vlmfleet`` command. Subcommands: ``plan`` (VRAM planner and flags), ``lab`` (up, status, down, ssh)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .lab import LabConfig, LabError


def _lab(args: argparse.Namespace) -> int:
    from .lab import lab

    cfg = LabConfig.from_env()
    if args.action == "up":
        lab.up(cfg, args.hosts)
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


def _inventory(args: argparse.Namespace):
    import subprocess

    from .gpus import NVIDIA_SMI_QUERY, NVIDIA_SMI_TOPO, InventoryError, parse_nvidia_smi, parse_spec

    try:
        if args.nvidia_smi_csv:
            topo = open(args.nvidia_smi_topo).read() if args.nvidia_smi_topo else None
            return parse_nvidia_smi(open(args.nvidia_smi_csv).read(), topo, args.interconnect)
        if args.gpus == "local":
            q = subprocess.run(NVIDIA_SMI_QUERY.split(), capture_output=True, text=True)
            if q.returncode != 0:
                raise UsageError(f"--gpus local: `{NVIDIA_SMI_QUERY}` failed: {(q.stderr or q.stdout).strip()}")
            t = subprocess.run(NVIDIA_SMI_TOPO.split(), capture_output=True, text=True)
            return parse_nvidia_smi(q.stdout, t.stdout if t.returncode == 0 else None, args.interconnect)
        if not args.gpus:
            raise UsageError("give --gpus COUNTxKIND (e.g. 4xT4), --gpus local, or --nvidia-smi-csv FILE")
        return parse_spec(args.gpus, args.interconnect)
    except (InventoryError, OSError) as exc:
        raise UsageError(str(exc)) from exc


def _plan(args: argparse.Namespace) -> int:
    from . import report
    from .catalog import CatalogError, load_config_json, model, model_with_config, vllm_version
    from .planner import Wish, plan
    from .seed import seed_rows

    try:
        version = vllm_version(args.vllm)
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
        inv = _inventory(args)
        if args.from_command:
            from .seed import parse_command

            parsed = parse_command(args.from_command, version)
            m, wish = parsed.model, parsed.wish
            for f in parsed.findings:
                print(f"command: {f}", file=sys.stderr)
        else:
            m = model(args.model)
            max_len = None
            if args.max_model_len is not None:
                max_len = -1 if args.max_model_len == "auto" else int(args.max_model_len)
            wish = Wish(max_model_len=max_len, max_num_seqs=args.max_num_seqs,
                        max_num_batched_tokens=args.max_num_batched_tokens, limit_images=args.limit_images,
                        limit_videos=args.limit_videos, max_pixels=args.max_pixels,
                        gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_dtype=args.kv_cache_dtype,
                        tp=args.tp, dtype=args.dtype, quantization=args.quantization, enforce_eager=args.enforce_eager)
        if args.config:
            m = model_with_config(m, load_config_json(args.config), args.config)
        p = plan(m, inv, version, wish)
    except (CatalogError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    out = {"table": report.text, "md": report.markdown, "json": report.as_json,
           "csv": lambda x: report.csv_rows([x])}[args.format](p)
    sys.stdout.write(out)
    if args.plot:
        report.plot(p, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0 if p.verdict == "fits" else 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    plan_p = sub.add_parser(
        "plan", help="per-GPU memory plan, verdict and vllm serve flags for a model on a GPU inventory",
        description="Exit status: 0 fits, 4 does not fit or invalid, 2 bad input.")
    plan_p.add_argument("--model", default="qwen2.5-vl-7b-instruct",
                        help="catalog id or hub repo id (default: qwen2.5-vl-7b-instruct)")
    plan_p.add_argument("--gpus", help="COUNTxKIND, e.g. 4xT4, 8xA100-40; or `local` to read this machine's nvidia-smi")
    plan_p.add_argument("--nvidia-smi-csv", metavar="FILE", help="saved output of the preflight nvidia-smi query")
    plan_p.add_argument("--nvidia-smi-topo", metavar="FILE", help="saved output of `nvidia-smi topo -m`")
    plan_p.add_argument("--interconnect", choices=["nvlink", "pcie", "pcie_no_p2p"], help="override the GPU link class")
    plan_p.add_argument("--vllm", default="0.33.0", help="vLLM version of the image (default: 0.33.0; the seed's is 0.8.2)")
    plan_p.add_argument("--config", metavar="CONFIG_JSON", help="the checkpoint's config.json (its numbers win over the catalog)")
    plan_p.add_argument("--max-model-len", help="tokens, or auto (0.33)")
    plan_p.add_argument("--max-num-seqs", type=int)
    plan_p.add_argument("--max-num-batched-tokens", type=int)
    plan_p.add_argument("--limit-images", type=int, help="images per prompt")
    plan_p.add_argument("--limit-videos", type=int, help="videos per prompt")
    plan_p.add_argument("--max-pixels", type=int, help="largest image kept by the processor (default 12845056)")
    plan_p.add_argument("--gpu-memory-utilization", type=float)
    plan_p.add_argument("--kv-cache-dtype", default="auto")
    plan_p.add_argument("--tp", type=int, help="tensor parallel size (default: every GPU)")
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
    up_p.add_argument("--hosts", type=int, default=3, metavar="N", help="number of hosts (default: 3)")
    lab_sub.add_parser("status", help="show hosts and helper daemons; exit 3 when not fully up")
    down_p = lab_sub.add_parser("down", help="remove hosts, network and daemons (the cache stays)")
    down_p.add_argument("--purge", action="store_true", help="also delete the cached rootfs, packages, registry")
    ssh_p = lab_sub.add_parser("ssh", help="ssh into a lab host, e.g. `vlmfleet lab ssh h1 uptime`")
    ssh_p.add_argument("host")
    ssh_p.add_argument("command", nargs=argparse.REMAINDER)
    lab_p.set_defaults(func=_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"vlmfleet {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"vlmfleet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlmfleet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
