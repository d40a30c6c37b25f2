"""``vlmfleet bench``: resolve the targets, run the Locust file headless with a hard time bound, write the report.

Targets: ``--url URL`` (repeatable; the model from its ``/v1/models``), or an INVENTORY with ``--host NAME`` (that
host's API), ``--group PROFILE`` (the group's address at its gateway: a host in group ``gateway`` and the port its
``gateway_ports`` data gives the profile) or ``--fleet`` (each group at its gateway, else each of its serving
hosts). The API key file is the targets' ``api_key_file`` data (a path on this machine, relative to the current
folder) unless ``--api-key-file`` names one; only its path is passed to Locust (an environment variable), never
the key. Every target is asked ``GET /v1/models`` first, so that a refused connection or a wrong key is one line
before any load. Exit status: 0 done and the error rate within --max-error-rate; 1 over it, nothing succeeded,
a target that does not answer, or Locust failed or overran its bound; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 10  # Locust's --stop-timeout: requests running when the time is up may finish for this long
STARTUP_GRACE_S = 30  # Locust's own start and exit, within the hard bound
DISCOVERY_TIMEOUT_S = 10


class BenchUsageError(Exception):
    """Bad input (exit 2): the message names the option or file, the value and the fix."""


class BenchError(Exception):
    """The bench could not run or its targets did not answer (exit 1): the message names what, where and the fix."""


@dataclass(frozen=True)
class Target:
    """One address the load goes to.

    + url: its base URL, e.g. ``"http://10.77.0.11:8000"``
    + model: the served model name to send, e.g. ``"qwen2.5-vl-7b-instruct"``; None: ask its /v1/models
    + what: what it is, for messages, e.g. ``"h1"`` or ``"group qwen7b at gateway ops"``
    + key_file: the api_key_file its hosts' data names, None when none
    """

    url: str
    model: str | None
    what: str
    key_file: str | None = None


# ---- options -----------------------------------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds of ``--duration``: ``"60s"``, ``"2m"``, ``"1h"`` or a plain number of seconds (``"90"``); > 0 and at
    most 24 h."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text or "")
    seconds = float(m[1]) * {"s": 1, "m": 60, "h": 3600, None: 1}[m[2]] if m else 0.0
    if not 0 < seconds <= 86400:
        raise BenchUsageError(f"--duration {text!r}: must be a time > 0 and <= 24h such as 60s, 2m or 1h "
                              "(e.g. --duration 60s)")
    return seconds


def _check_range(option: str, value, low, high, example: str) -> None:
    if value is None:
        return
    if not (low <= value <= high):
        raise BenchUsageError(f"{option} {value:g}: must be between {low:g} and {high:g} (e.g. {option} {example})")


def check_options(args: argparse.Namespace) -> None:
    """Range checks of the numbers, and which targets were asked for; a BenchUsageError names the option."""
    _check_range("--users", args.users, 1, 10000, "4")
    _check_range("--spawn-rate", args.spawn_rate, 0.01, 10000, "2")
    _check_range("--requests", args.requests, 1, 10**7, "100")
    _check_range("--max-tokens", args.max_tokens, 1, 10**6, "128")
    _check_range("--image-weight", args.image_weight, 0, 1, "0.5")
    _check_range("--max-error-rate", args.max_error_rate, 0, 1, "0.01")
    _check_range("--timeout", args.timeout, 0.1, 86400, "120")
    chosen = [o for o, v in (("--host", args.host), ("--group", args.group), ("--fleet", args.fleet)) if v]
    if args.url and (args.inventory or chosen):
        raise BenchUsageError("--url and an INVENTORY (--host, --group, --fleet) are two ways to name the targets: "
                              "give one (e.g. `vlmfleet bench --url http://10.77.0.11:8000` or `vlmfleet bench "
                              "inventories/prod.py --group qwen7b`)")
    if not args.url and not args.inventory:
        raise BenchUsageError("no target: give --url URL, or INVENTORY with --host NAME, --group PROFILE or --fleet "
                              "(e.g. vlmfleet bench inventories/prod.py --group qwen7b)")
    if args.inventory and len(chosen) != 1:
        raise BenchUsageError(f"{args.inventory}: give exactly one of --host NAME, --group PROFILE, --fleet"
                              + (f" (not {' and '.join(chosen)})" if chosen else ""))


# ---- targets -----------------------------------------------------------------------------------------------------
def base_url(address: str, port: int) -> str:
    """``http://ADDRESS:PORT``, an IPv6 address bracketed, e.g. ``base_url("10.77.0.11", 8000)``."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


def served_name(member) -> str:
    """The model name a serving member's clients send: its served_model_name data, else its profile's model."""
    from ..catalog import profile

    return member.get("served_model_name") or profile(member.profile).model_id


def host_target(member) -> Target:
    return Target(base_url(member.address, member.api_port), served_name(member), member.name,
                  member.get("api_key_file"))


def _key_file_of(members) -> str | None:
    files = sorted({m.get("api_key_file") for m in members if m.get("api_key_file")})
    if len(files) > 1:
        raise BenchUsageError(f"the hosts of one group name different api_key_file ({', '.join(files)}): give the "
                              "one to use with --api-key-file")
    return files[0] if files else None


def gateway_target(fleet, profile: str, gateway) -> Target | None:
    """The group ``profile`` at ``gateway`` (a Member in group gateway); None when its gateway_ports has no port."""
    from ..fleet import by_profile, gateway_port

    port = gateway_port(gateway, profile)
    if port is None:
        return None
    servers = by_profile(fleet)[profile]
    return Target(base_url(gateway.address, port), served_name(servers[0]), f"group {profile} at gateway "
                  f"{gateway.name}", _key_file_of(servers))


def inventory_targets(fleet, inventory: str, host: str | None, group: str | None, every: bool) -> list[Target]:
    """The targets an inventory gives for ``--host``, ``--group`` or ``--fleet``.

    + fleet: vlmfleet.fleet.load(inventory)
    + host: e.g. ``"h1"``; group: a profile, e.g. ``"qwen7b"``; every: ``--fleet``
    """
    from ..fleet import by_profile

    groups = by_profile(fleet)
    gateways = [m for m in fleet if m.balances]
    if host is not None:
        named = [m for m in fleet if m.name == host]
        if not named:
            raise BenchUsageError(f"--host {host}: no such host in {inventory} (hosts: "
                                  f"{', '.join(m.name for m in fleet) or 'none'})")
        if not named[0].serves:
            raise BenchUsageError(f"--host {host}: serves no model (no vlm_profile); serving hosts: "
                                  f"{', '.join(m.name for ms in groups.values() for m in ms) or 'none'}")
        return [host_target(named[0])]
    if group is not None:
        if group not in groups:
            raise BenchUsageError(f"--group {group}: no host of {inventory} serves that profile (profiles served: "
                                  f"{', '.join(groups) or 'none'})")
        if not gateways:
            raise BenchUsageError(f"--group {group}: {inventory} has no host in group 'gateway' to reach the group "
                                  "at one address: add one and run deploys/gateway.py (docs/gateway.md), or bench "
                                  f"one replica with --host {groups[group][0].name}")
        target = gateway_target(fleet, group, gateways[0])
        if target is None:
            raise BenchUsageError(f"--group {group}: gateway {gateways[0].name}'s data key 'gateway_ports' gives "
                                  f"no port to {group}: add {group!r}: <port> to gateway_ports "
                                  "(group_data/gateway.py) and run deploys/gateway.py")
        return [target]
    out = []
    for profile, servers in groups.items():
        target = gateway_target(fleet, profile, gateways[0]) if gateways else None
        out.extend([target] if target else [host_target(m) for m in servers])
    if not out:
        raise BenchUsageError(f"--fleet: no host of {inventory} serves a model (a serving host has a vlm_profile)")
    return out


def key_file(option: str | None, targets: list[Target]) -> str | None:
    """The key file to use: ``--api-key-file``, else the one the targets' data names (None: send no key). Checked
    here: readable, a non-empty first line. Returned absolute (relative paths are from the current folder)."""
    if option is not None:
        path, where = option, "--api-key-file"
    else:
        named = sorted({t.key_file for t in targets if t.key_file})
        if len(named) > 1:
            raise BenchUsageError(f"the targets name different api_key_file ({', '.join(named)}): bench one group "
                                  "at a time, or give the key with --api-key-file")
        if not named:
            return None
        path, where = named[0], "api_key_file (host data)"
    try:
        with open(path) as fh:
            first = fh.readline().strip()
    except FileNotFoundError:
        raise BenchUsageError(f"{where} {path}: no such file on this machine (from {os.getcwd()}); give the file "
                              "holding the API key with --api-key-file PATH") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise BenchUsageError(f"{where} {path}: not a text file holding the API key on its first line") from None
    except OSError as exc:
        raise BenchUsageError(f"{where} {path}: cannot read it ({exc.strerror or exc})") from None
    if not first:
        raise BenchUsageError(f"{where} {path}: its first line is empty; it must hold the API key")
    return os.path.abspath(path)


def _why(exc: Exception) -> str:
    text = str(exc)
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "no answer in time"),
                         ("Name or service not known", "unknown host name"), ("No route to host", "no route to host"),
                         ("RemoteDisconnected", "connection closed without an answer")):
        if needle in text:
            return said
    return f"{exc.__class__.__name__}: {text[:120]}"


def served_models(target: Target, key: str | None) -> list[str]:
    """The model ids ``GET /v1/models`` lists at the target; a BenchError names the URL, what went wrong and the
    fix."""
    import requests

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = requests.get(f"{target.url}/v1/models", headers=headers, timeout=DISCOVERY_TIMEOUT_S)
    except requests.RequestException as exc:
        raise BenchError(f"{target.what}: {target.url}/v1/models: {_why(exc)} — is the server up and reachable "
                         "from here? (check `vlmfleet status INVENTORY`)") from None
    if resp.status_code == 401:
        raise BenchError(f"{target.what}: {target.url} answered 401 Unauthorized "
                         + ("to the key from the key file — wrong key? give the right one with --api-key-file"
                            if key else "— it needs an API key: give its file with --api-key-file"))
    if resp.status_code != 200:
        raise BenchError(f"{target.what}: {target.url}/v1/models answered HTTP {resp.status_code} "
                         f"({resp.text[:120]!r}): is this a vLLM OpenAI-compatible server?")
    try:
        return [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise BenchError(f"{target.what}: {target.url}/v1/models is not an OpenAI model list") from None


def with_models(targets: list[Target], key: str | None, model: str | None) -> list[Target]:
    """Each target with the model to send (``--model``, its data's, else the first its /v1/models lists), checked
    against what it serves."""
    out = []
    for t in targets:
        listed = served_models(t, key)
        want = model or t.model or (listed[0] if listed else None)
        if want not in listed:
            raise BenchError(f"{t.what}: {t.url} serves {', '.join(listed) or 'no model'}, not {want!r}"
                             + (": give the served name with --model" if want else ""))
        out.append(Target(t.url, want, t.what, t.key_file))
    return out


# ---- running -----------------------------------------------------------------------------------------------------
def locust_command(first_url: str, users: int, spawn_rate: float, duration_s: float) -> list[str]:
    """``python -m locust`` headless with the packaged Locust file, from this Python's environment."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "-u", str(users), "-r", f"{spawn_rate:g}", "-t", f"{max(1, round(duration_s))}s",
            "--stop-timeout", str(STOP_TIMEOUT_S), "--host", first_url, "--loglevel", "WARNING"]


def run_locust(cmd: list[str], env: dict, bound_s: float, log_path: Path) -> tuple[int | None, float]:
    """Run Locust with its output in ``log_path``; killed (its whole process group) when it runs past ``bound_s``.
    Returns (exit status, None when killed; seconds it ran)."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=bound_s), time.monotonic() - t0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.monotonic() - t0
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def out_dir(option: str | None) -> Path:
    """The report folder: ``--out``, else ``bench-<UTC timestamp>``; created; refused when it holds a report."""
    path = Path(option or time.strftime("bench-%Y%m%dT%H%M%SZ", time.gmtime()))
    if (path / "requests.csv").exists():
        raise BenchUsageError(f"--out {path}: holds a report already (requests.csv); give a new folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchUsageError(f"--out {path}: cannot create it ({exc.strerror or exc})") from None
    return path


def _needs(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BenchUsageError(f"vlmfleet bench needs {module}: pip install 'vlmfleet[bench]'")


def resolve(args: argparse.Namespace) -> list[Target]:
    """The targets the options name (models not yet checked)."""
    if args.url:
        for u in args.url:
            if not re.fullmatch(r"https?://[^\s/]+/?", u):
                raise BenchUsageError(f"--url {u!r}: must be a base URL such as http://10.77.0.11:8000 (no path)")
        return [Target(u.rstrip("/"), args.model, "--url") for u in args.url]
    from ..fleet import FleetError, load

    try:
        fleet = load(args.inventory)
    except FleetError as exc:
        raise BenchUsageError(str(exc)) from None
    return inventory_targets(fleet, args.inventory, args.host, args.group, args.fleet)


def bench(args: argparse.Namespace) -> int:
    """The whole command; returns the exit status, raises BenchUsageError / BenchError."""
    from .workload import WorkloadError, parse_sizes

    check_options(args)
    duration = parse_duration(args.duration)
    try:
        sizes = parse_sizes(args.image_sizes)
    except WorkloadError as exc:
        raise BenchUsageError(str(exc)) from None
    _needs("locust")
    _needs("matplotlib")
    targets = resolve(args)
    users = args.users if args.users is not None else max(4, len(targets))
    if users < len(targets):
        raise BenchUsageError(f"--users {users}: fewer than the {len(targets)} targets; give --users "
                              f"{len(targets)} or more so that each target gets a user")
    kfile = key_file(args.api_key_file, targets)
    key = open(kfile).readline().strip() if kfile else None
    targets = with_models(targets, key, args.model)
    folder = out_dir(args.out)
    settings = {"targets": [{"url": t.url, "model": t.model} for t in targets], "image_sizes": sizes,
                "image_weight": args.image_weight, "max_tokens": args.max_tokens, "requests": args.requests,
                "timeout_s": args.timeout, "requests_csv": str((folder / "requests.csv").resolve())}
    (folder / "settings.json").write_text(json.dumps({**settings, "duration_s": duration, "users": users,
                                                      "targets_what": [t.what for t in targets]}, indent=1) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "VLMFLEET_BENCH_KEY_FILE"}
    env["VLMFLEET_BENCH_CONFIG"] = str((folder / "settings.json").resolve())
    if kfile:
        env["VLMFLEET_BENCH_KEY_FILE"] = kfile
    print(f"vlmfleet bench: {users} users for {duration:g}s"
          + (f" or {args.requests} requests" if args.requests else "") + " against "
          + ", ".join(f"{t.what} ({t.url}, {t.model})" for t in targets), flush=True)
    bound = duration + STOP_TIMEOUT_S + STARTUP_GRACE_S
    cmd = locust_command(targets[0].url, users, args.spawn_rate or users, duration)
    status, _ran = run_locust(cmd, env, bound, folder / "locust.log")
    return finish(folder, status, bound, args.max_error_rate)


def _tail(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def finish(folder: Path, status: int | None, bound: float, max_error_rate: float) -> int:
    """Write summary.csv and plot.png from requests.csv, print the table, judge the run."""
    from . import report

    rows = report.read_rows(folder / "requests.csv")
    if not rows:
        why = f"Locust ran past its bound of {bound:.0f}s and was killed" if status is None else \
            f"Locust exited {status}: {_tail(folder / 'locust.log')}"
        raise BenchError(f"no request was recorded ({why}); see {folder / 'locust.log'}")
    table = report.summary(rows)
    report.write_summary(folder / "summary.csv", table)
    report.plot(folder / "plot.png", rows, table, title=f"vlmfleet bench {folder.name}")
    sys.stdout.write(report.text_table(table))
    print(f"report: {folder}/summary.csv, {folder}/requests.csv, {folder}/plot.png")
    overall = table[0]
    first_error = next((r["error"] for r in rows if not r["ok"]), "")
    if status is None:
        print(f"vlmfleet bench: error: Locust ran past its bound of {bound:.0f}s and was killed; the report holds "
              "what it recorded", file=sys.stderr)
        return 1
    if overall["ok"] == 0:
        print(f"vlmfleet bench: error: no request succeeded of {overall['requests']} (first error: {first_error})",
              file=sys.stderr)
        return 1
    if overall["error_rate"] > max_error_rate:
        print(f"vlmfleet bench: error: error rate {overall['error_rate']:.3g} > --max-error-rate "
              f"{max_error_rate:g}: {overall['errors']} of {overall['requests']} requests failed (first: "
              f"{first_error})", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``vlmfleet bench``'s options (the CLI registers the subcommand with these)."""
    p.add_argument("inventory", nargs="?", metavar="INVENTORY", help="e.g. inventories/prod.py (with --host, "
                   "--group or --fleet)")
    p.add_argument("--url", action="append", default=[], metavar="URL",
                   help="a server's base URL, e.g. http://10.77.0.11:8000 (repeatable; instead of INVENTORY)")
    p.add_argument("--host", metavar="NAME", help="one serving host of INVENTORY, e.g. h1")
    p.add_argument("--group", metavar="PROFILE", help="one group through its gateway, e.g. qwen7b")
    p.add_argument("--fleet", action="store_true", help="every group (through its gateway, else every host)")
    p.add_argument("--model", help="the served model name to send (default: the host's data, or what "
                   "/v1/models lists first)")
    p.add_argument("--api-key-file", metavar="PATH", help="file whose first line is the API key (default: the "
                   "hosts' api_key_file data)")
    p.add_argument("--duration", default="60s", help="how long the load runs, e.g. 60s, 2m (default: 60s)")
    p.add_argument("--requests", type=int, metavar="N", help="stop after N requests (default: only --duration)")
    p.add_argument("--users", type=int, metavar="N", help="concurrent users (default: 4, or one per target)")
    p.add_argument("--spawn-rate", type=float, metavar="PER_S", help="users started per second (default: all "
                   "within a second)")
    p.add_argument("--image-sizes", default="448x448,1280x720", metavar="WxH,...",
                   help="sizes of the image requests' PNGs, in turn (default: 448x448,1280x720)")
    p.add_argument("--image-weight", type=float, default=0.5, metavar="FRACTION",
                   help="share of requests with an image, 0..1 (default: 0.5)")
    p.add_argument("--max-tokens", type=int, default=128, metavar="N",
                   help="output tokens per answer (sent with ignore_eos; default: 128)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds one request may take "
                   "(default: 120)")
    p.add_argument("--max-error-rate", type=float, default=0.0, metavar="FRACTION",
                   help="exit 1 above this share of failed requests (default: 0, any error fails)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: bench-<UTC time>)")


__all__ = ["Target", "BenchError", "BenchUsageError", "add_arguments", "bench", "parse_duration",
           "inventory_targets", "key_file", "locust_command", "finish"]
