"""Stage 6, health: the server answers /health, lists the served name, completes a text and an image chat, and
exports the version's metrics — within the model's deadline, or the host fails with the unit's journal."""

from __future__ import annotations

import json
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import files, python, server

from ..config import HostConfig
from ..facts import CommandJson
from ..paths import PACKAGE_DIR
from ..planner import Plan
from ..service import health_argv
from . import rollout
from .common import pyinfra_timeout


def health_command(cfg: HostConfig, metrics, deadline: int, quick: bool = False) -> str:
    """The checker's command line (``vlmfleet.service.health_argv``): no secret in it."""
    return shlex.join(health_argv(cfg, metrics, deadline, quick=quick))


def install_health_tool(cfg: HostConfig):
    """vlmfleet-health and its test image (the service stage's releases are checked with it too). Returns the
    operation that installs the checker."""
    paths = cfg.paths
    for folder in (f"{paths.tools_dir}/bin", f"{paths.tools_dir}/share", paths.health_dir):
        files.directory(name=f"Create {folder}", path=folder, mode="755")
    tool = files.put(name="Install vlmfleet-health", src=str(PACKAGE_DIR / "remote/vlmfleet_health.py"),
                     dest=paths.health_bin, mode="755")
    files.put(name="Install the health check's test image", src=str(PACKAGE_DIR / "assets/health-check.png"),
              dest=paths.health_image, mode="644")
    return tool


@deploy("Health")
def health(cfg: HostConfig, plan: Plan, react_to: list) -> None:
    """Check the server end to end. Skipped (no change) when it was already healthy and nothing was (re)started
    in this run; otherwise waits up to the deadline and reports time-to-healthy, latencies and the plan.

    + cfg: the host's configuration (port, served name, ``cfg.deadline_s``)
    + plan: the preflight plan (the version's metric names)
    + react_to: the service stage's start/restart operations
    """
    paths = cfg.paths
    deadline = cfg.deadline_s

    tool = install_health_tool(cfg)

    quick = host.get_fact(CommandJson, command=health_command(cfg, plan.version.metrics, 0, quick=True))
    healthy_before = bool(quick and quick.get("healthy"))
    changes = [tool, *react_to]

    def must_check() -> bool:
        if not rollout.reached():
            return False  # the rollout stopped before this host: it serves its old release
        return not healthy_before or any(op.did_change() for op in changes)

    if healthy_before and not react_to:
        host.noop(f"{cfg.service} is already healthy on port {cfg.api_port}")
    result = paths.health_result
    check = server.shell(
        name="Check the server: /health, /v1/models, chat (text, image), /metrics (within its deadline)",
        commands=[f"{health_command(cfg, plan.version.metrics, deadline)} > {result}.tmp && mv {result}.tmp {result}"],
        _if=must_check,
        # the check bounds itself by its deadline (then a chat, an image, /metrics); this is the backstop
        _timeout=pyinfra_timeout(deadline + 240),
    )

    def report() -> None:
        out = {}
        for path in (result, paths.plan_file, f"{paths.release_dir}/state.json"):
            _, res = host.run_shell_command(f"cat {shlex.quote(path)}", _sudo=True)
            try:
                out[path] = json.loads("\n".join(res.stdout_lines))
            except (ValueError, AttributeError):
                out[path] = {}
        r, p = out[result], out[paths.plan_file]
        active = out[f"{paths.release_dir}/state.json"].get("active") or {}
        rung = f" on startup ladder rung {active['rung']} {active.get('changes')}" if active.get("rung") else ""
        logger.info(f"    [{host.name}] {cfg.service} healthy: {r.get('time_to_healthy_s')}s after start; chat text "
                    f"{r.get('text_latency_s')}s, image {r.get('image_latency_s')}s; plan: {p.get('gpus')}, tp "
                    f"{p.get('tp')}, {p.get('kv_capacity_tokens')} KV tokens; release {active.get('id', '?')}{rung} "
                    f"since {active.get('since', '?')} (record: {paths.release_dir}/history.jsonl)")

    python.call(name="Report the server's health", function=report, _if=check.did_change)
