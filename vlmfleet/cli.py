"""The ``vlmfleet`` command. Subcommands: ``lab`` (up, status, down, ssh)."""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
    except KeyboardInterrupt:
        print(f"vlmfleet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
