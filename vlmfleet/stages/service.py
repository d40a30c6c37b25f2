"""Stage 5, service: one systemd unit per host, running vLLM in Docker with the planned flags — installed as a
*release* by vlmfleet-release on the host, in the host's rollout batch.

``prepare`` (every host at once; it interrupts nothing) writes the candidate release into
``/var/lib/vlmfleet/releases/<service>/candidate/``: the unit, the root-only env file, the plan record, the
startup ladder's rungs (each a complete unit) and ``release.json``. ``restart`` (in the host's batch) retires
the unit of a profile the host left, then runs ``vlmfleet-release apply``: install, restart, health check,
ladder, rollback (docs/operations.md). A host whose active release is the candidate, running, with the unit
file as it was installed, is left alone; systemd reloads only when a unit file changed (a reload can detach
running GPU containers: NVIDIA/nvidia-container-toolkit#48).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import StringIO

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, python, server, systemd
from pyinfra.operations.util import any_changed

from ..config import STATE_DIR, HostConfig, service_files
from ..facts import ReleaseStatus, VlmfleetUnits
from ..ladder import startup_ladder
from ..paths import PACKAGE_DIR
from ..planner import Plan
from ..service import plan_record, release_id, release_manifest, release_reasons, render_unit
from . import rollout
from .common import secret_file
from .health import install_health_tool


@dataclass
class Release:
    """The candidate release of one host, as prepared: its id, why it must be applied (empty: it is active)
    and the operations whose change also calls for a restart (env, image pull, weights fetch)."""

    id: str
    reasons: list[str] = field(default_factory=list)
    react_to: list = field(default_factory=list)
    status: dict = field(default_factory=dict)


def describe_record(last: dict | None) -> str:
    """One line for the host's last rollout record, e.g. ``2026-12-02T07:00:00Z by alice@ctl: 3f2a.. -> 9c1b..:
    healthy (rung 2)``."""
    if not last:
        return "no rollout recorded on this host yet"
    rung = f" (rung {last['rung']}: {last.get('changes')})" if last.get("rung") else ""
    return (f"{last.get('when')} by {last.get('who')} ({last.get('action', 'apply')}, run {last.get('run')}): "
            f"{last.get('from')} -> {last.get('to')}: {last.get('result')}{rung}")


def retire_other_units(cfg: HostConfig, **when) -> list:
    """Stop, disable and remove every vlmfleet unit on the host other than this profile's (a profile switch):
    its container goes with it (``docker run --rm``; removed by force if it lingers), and its env, auth, plan
    and health files. The old weights stay in model_dir. Returns the operations that removed something.

    + when: e.g. ``_if=...``: the batch gate (a host the rollout does not reach keeps its old unit)
    """
    ours = cfg.paths.unit_name
    others = [u for u in host.get_fact(VlmfleetUnits) or [] if u != ours]
    ops = []
    for unit in others:
        name = unit.removesuffix(".service")
        ops.append(systemd.service(name=f"Stop and disable {unit} (this host now serves {cfg.vlm_profile})",
                                   service=unit, running=False, enabled=False, **when))
        ops.append(server.shell(name=f"Remove the {name} container if it lingers",
                                commands=[f"docker rm --force {name} >/dev/null 2>&1 || true"], **when))
        for path in service_files(name).values():
            ops.append(files.file(name=f"Remove {path}", path=path, present=False, **when))
    return ops


@deploy("Service")
def prepare(cfg: HostConfig, plan: Plan, react_to: list) -> Release:
    """Write the candidate release (unit, env, plan, ladder, release.json) and install vlmfleet-release. Changes
    nothing that serves. Returns the candidate, with why it must be applied.

    + cfg: the host's configuration (``cfg.paths.candidate_dir``, ``cfg.startup_ladder_steps``, ...)
    + plan: the preflight plan, rendered into the unit's ``vllm serve`` flags
    + react_to: operations of earlier stages whose change restarts the server, e.g. the image pull
    """
    paths = cfg.paths
    cand = paths.candidate_dir
    unit_text = render_unit(cfg, plan)
    rid = release_id(unit_text)
    rungs = startup_ladder(plan, cfg.startup_ladder_steps)

    files.directory(name=f"Create {paths.config_dir}", path=paths.config_dir, mode="755")
    files.directory(name=f"Create {paths.secrets_dir} (root only)", path=paths.secrets_dir, mode="700",
                    user="root", group="root")
    files.directory(name=f"Create {paths.state_dir}", path=paths.state_dir, mode="755")
    files.put(name="Install vlmfleet-release", src=str(PACKAGE_DIR / "remote/vlmfleet_release.py"),
              dest=paths.release_bin, mode="755")
    install_health_tool(cfg)  # vlmfleet-release checks each start with it
    for folder in (paths.release_dir, cand):
        files.directory(name=f"Create {folder} (root only)", path=folder, mode="700", user="root", group="root")

    if cfg.api_key_file:
        env = secret_file(name="Stage the server's API key (VLLM_API_KEY, 0600)", src=cfg.api_key_file,
                          dest=f"{cand}/env", line_format="VLLM_API_KEY={secret}")
    else:
        env = files.put(name="Stage the server's env file (no API key: loopback or api_allow_unauthenticated)",
                        dest=f"{cand}/env", mode="600",
                        src=StringIO("# api_key_file is unset: this server accepts requests without a key\n"))
        files.file(name="Remove the health check's credentials (no API key)", path=paths.auth_file, present=False)
    files.put(name="Stage the vLLM unit", src=StringIO(unit_text), dest=f"{cand}/vllm.service", mode="644")
    files.put(name="Stage the plan record", src=StringIO(plan_record(cfg, plan)), dest=f"{cand}/plan.json",
              mode="644")
    for r in rungs:
        files.put(name=f"Stage startup ladder rung {r.rung}", src=StringIO(render_unit(cfg, r.plan)),
                  dest=f"{cand}/rung-{r.rung}.service", mode="644")
        files.put(name=f"Stage the plan of ladder rung {r.rung}", src=StringIO(plan_record(cfg, r.plan)),
                  dest=f"{cand}/rung-{r.rung}.plan.json", mode="644")
    files.put(name="Stage release.json (what the release is, where it goes)",
              src=StringIO(release_manifest(cfg, plan, unit_text, rungs)), dest=f"{cand}/release.json", mode="644")

    status = host.get_fact(ReleaseStatus, release_bin=paths.release_bin, release_dir=paths.release_dir,
                           lock_file=paths.lock_file, unit_path=paths.unit_path) or {}
    logger.info(f"    [{host.name}] last rollout: {describe_record(status.get('last'))}")
    reasons, record_plan = release_reasons(cfg, plan, status, rungs, unit_text)
    if record_plan is not None:
        # the plan record follows a planner update without a restart
        files.put(name=f"Record the plan in {STATE_DIR}/vllm-<profile>.plan.json (restarts nothing)",
                  src=StringIO(plan_record(cfg, record_plan)), dest=paths.plan_file, mode="644")
    if not (host.get_fact(SystemdStatus) or {}).get(paths.unit_name, False):
        reasons.append(f"{paths.unit_name} is not running")
    return Release(rid, reasons, [env, *react_to], status)


@deploy("Rollout")
def restart(cfg: HostConfig, release: Release, batch: int) -> list:
    """In the host's batch: retire a profile the host left, then apply the release (``vlmfleet-release apply``:
    restart, health check, startup ladder, rollback). Returns the apply operation (for the health stage), or
    nothing when the release is already active and running.

    + release: what ``prepare`` returned
    + batch: the host's batch (0 = the first); its operations run only when every earlier batch is healthy
    """
    gate = rollout.may_restart(batch)
    if release.reasons:
        when = [gate]
        because = "; ".join(release.reasons)
    elif any(op is not None for op in release.react_to):
        when = [any_changed(*release.react_to), gate]
        because = "restarts only if the env file, the image or the weights change in this run"
    else:
        host.noop(f"release {release.id} is already active and running")
        return []
    retired = retire_other_units(cfg, _if=when)
    deadline = cfg.deadline_s
    attempts = cfg.startup_ladder_steps + 2  # as planned, each rung, the rollback
    bound = attempts * (deadline + cfg.stop_timeout_s + 120) + 60 + 2 * cfg.gateway_drain_s
    apply = python.call(name="Roll out the release (restart, health check, ladder, rollback)",
                        function=rollout.apply_release(cfg, batch, bound), _if=when, _timeout=bound + 60)
    logger.info(f"    [{host.name}] rollout batch {batch + 1}: {because}")
    return [*retired, apply]
