"""Stage 6, health: the server answers /health, lists the served name, completes a text and an image chat, and
exports the version's metrics — within the model's deadline, or the host fails with the unit's journal."""

from __future__ import annotations

import json
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import files, python, server

from ..facts import CommandJson
from ..paths import PACKAGE_DIR
from ..preflight import deadline_s
from ..service import service_for
from .common import fit_host, recorded_changes

HEALTH_BIN = "/opt/vlmfleet/bin/vlmfleet-health"
HEALTH_IMAGE = "/opt/vlmfleet/share/health-check.png"
RESULTS = "/var/lib/vlmfleet/health"


def health_command(svc, s, metrics, deadline, quick=False) -> str:
    """The checker's command line: no secret in it (the key is read from the root-only auth file)."""
    args = [HEALTH_BIN, "--url", f"http://127.0.0.1:{svc.port}", "--served", svc.served_name, "--unit", svc.unit,
            "--deadline", str(deadline)]
    if s.get("api_key_file"):
        args += ["--auth-file", svc.auth_file]
    if quick:
        args.append("--quick")
    else:
        args += ["--image", HEALTH_IMAGE, "--metrics", ",".join(metrics)]
    return shlex.join(args)


@deploy("Health")
def health() -> None:
    """Check the server end to end. Skipped (no change) when it was already healthy and nothing was changed in
    this run; otherwise waits up to the deadline and reports time-to-healthy and completion latencies."""
    fit = fit_host("health")
    if fit is None:
        return
    s, p = fit
    svc = service_for(s, p)
    deadline = deadline_s(s, p.model.id)

    files.directory(name="Create /opt/vlmfleet/bin", path="/opt/vlmfleet/bin", mode="755")
    files.directory(name="Create /opt/vlmfleet/share", path="/opt/vlmfleet/share", mode="755")
    files.directory(name=f"Create {RESULTS}", path=RESULTS, mode="755")
    tool = files.put(name="Install vlmfleet-health", src=str(PACKAGE_DIR / "remote/vlmfleet_health.py"),
                     dest=HEALTH_BIN, mode="755")
    files.put(name="Install the health check's test image", src=str(PACKAGE_DIR / "assets/health-check.png"),
              dest=HEALTH_IMAGE, mode="644")

    quick = host.get_fact(CommandJson, command=health_command(svc, s, p.version.metrics, 0, quick=True))
    healthy_before = bool(quick and quick.get("healthy"))
    changes = [tool, *recorded_changes("service")]
    result = f"{RESULTS}/{svc.name}.json"

    def must_check() -> bool:
        return not healthy_before or any(op.did_change() for op in changes)

    if healthy_before and not changes[1:]:
        host.noop(f"{svc.name} is already healthy on port {svc.port}")
    check = server.shell(
        name=f"Check {svc.name}: /health, /v1/models, chat (text, image), /metrics (deadline {deadline}s)",
        commands=[f"{health_command(svc, s, p.version.metrics, deadline)} > {result}.tmp && mv {result}.tmp {result}"],
        _if=must_check,
    )

    def report() -> None:
        ok, out = host.run_shell_command(f"cat {result}", _sudo=True)
        try:
            r = json.loads("\n".join(out.stdout_lines))
        except (ValueError, AttributeError):
            r = {}
        logger.info(f"    [{host.name}] {svc.name} healthy: {r.get('time_to_healthy_s')}s after start; chat text "
                    f"{r.get('text_latency_s')}s, image {r.get('image_latency_s')}s")

    python.call(name=f"Report {svc.name} health", function=report, _if=check.did_change)
