"""Run the stages a host's data selects, in order; preflight always runs first (it changes nothing).

The configuration is built once per host here and handed to each stage with the preflight plan; what a stage
changed that a later stage must react to comes back as its return value.
"""

from __future__ import annotations

from pyinfra import host

from ..config import BY_KEY, STAGES
from . import rollout
from .common import config_or_fail, fail_host, host_config, host_roles


def serves_nothing(cfg) -> bool:
    """A monitoring or gateway host without a profile: the serving deploys leave it alone, saying so."""
    if cfg is None or cfg.vlm_profile:
        return False
    host.noop(f"{host.name} serves no model (groups {', '.join(host_roles())}): nothing to serve here; "
              "deploys/monitoring.py and deploys/gateway.py set this host up")
    return True


def run_stages(only: list[str] | None = None) -> None:
    """Run ``only`` (or the host's ``vlm_stages``) in the canonical order, preflight first.

    + only: e.g. ``["service"]`` (deploys/service.py); None: the host's ``vlm_stages``
    """
    from pyinfra.facts.systemd import SystemdStatus

    from .base import base, restart_docker
    from .driver import driver, reboot_into_driver
    from .health import health
    from .image import image
    from .preflight import preflight
    from .service import prepare, restart
    from .weights import weights

    cfg, problems = host_config()
    if serves_nothing(cfg):
        return
    # every command of every stage is bounded (pyinfra's _timeout, a deploy-wide argument): a host that hangs fails
    # alone, naming the operation; the pull, the fetch, apt and the health check set their own, longer bounds
    bound = {"_timeout": cfg.command_timeout_s if cfg else BY_KEY["command_timeout_s"].default}
    verdict = preflight(cfg, problems, **bound)
    if cfg is None or not verdict.ok:
        return  # the host fails at the preflight gate; nothing after it is planned
    wanted = set(only or cfg.vlm_stages)
    if not wanted - {"preflight"}:
        return
    plan_batches, mine = rollout.my_batches(cfg)
    rollout.register(cfg, mine if "service" in wanted else None)
    rollout.take_lock(cfg, name="Take the host's rollout lock (one rollout at a time)", **bound)
    restart_for: list = []
    started: list = []
    # a dockerd restart restarts the vLLM container: on a host that serves it waits for the host's batch, with the
    # image pull (which may need the new daemon.json: a mirror, a registry); elsewhere it happens here
    # the driver before everything else; its reboot waits for the host's batch (a reboot stops the server)
    rebooting = "driver" in wanted and verdict.driver is not None and bool(verdict.driver.reboot)
    has_server = ("service" in wanted or rebooting) and bool(
        (host.get_fact(SystemdStatus) or {}).get(cfg.paths.unit_name))
    serving = "service" in wanted and has_server
    daemon: list = []
    # a host whose server runs gets the new driver in its batch, not before the rollout (deploys/driver.py alone too)
    defer = rebooting and has_server
    if "driver" in wanted:
        driver(cfg, verdict.driver, defer=defer, **bound)
    if "base" in wanted:
        if serving:
            daemon = base(cfg, hold_restart=True, **bound)
        else:
            started += base(cfg, **bound)  # the health stage checks the server after the restart
    if "weights" in wanted:
        restart_for += weights(cfg, verdict.plan, **bound)
    if "image" in wanted and not daemon:
        restart_for += image(cfg, **bound)
    missing = [what for what, there, stage in (("verified weights", verdict.weights_ready, "weights"),
                                               ("image", verdict.image_present, "image"))
               if not there and stage not in wanted]
    if "service" in wanted and missing:
        # e.g. deploys/service.py after a profile switch: retiring the old unit would leave nothing serving
        fail_host(name="Check the service has what it runs", reasons=[
            f"{host.name}: the service stage would start {cfg.service} without its {' and '.join(missing)} on the "
            f"host (stages run: {', '.join(s for s in STAGES if s in wanted)}) — fix: run deploys/vlm.py first (or "
            "add the weights and image stages to vlm_stages)"], **bound)
        return
    if "service" in wanted or rebooting:
        release = prepare(cfg, verdict.plan, restart_for + daemon, **bound) if "service" in wanted else None
        # the restarts, batch by batch: see vlmfleet/stages/rollout.py for how the order is built
        # the server's own health after the reboot, where the running release is this run's (a new release is
        # checked by its own rollout, with its own settings, right after)
        check_after = has_server and (release is None or not release.reasons)
        for k in host.loop(range(len(plan_batches))):
            rollout.batch_gate(k, len(plan_batches), tuple(plan_batches[k]), name=f"Begin rollout batch {k + 1}")
            if k == mine and rebooting:
                started += reboot_into_driver(cfg, verdict.driver, k, install=defer, _if=[rollout.may_restart(k)],
                                              server_plan=verdict.plan if check_after else None, **bound)
            if k == mine and release is not None:
                if daemon:
                    gate = [rollout.may_restart(k)]
                    release.react_to.append(restart_docker(daemon[0], _if=gate, **bound))
                    if "image" in wanted:
                        release.react_to += image(cfg, _if=gate, **bound)
                started += restart(cfg, release, k, **bound)
    if "health" in wanted:
        health(cfg, verdict.plan, started, **bound)
    rollout.release_lock(cfg, name="Release the host's rollout lock", **bound)


def run_rollback() -> None:
    """``deploys/rollback.py``: each host back to the release before the one it runs, checked healthy, in the
    same batches and under the same lock as a rollout (``vlmfleet-release rollback``)."""
    from pyinfra.operations import python

    cfg, bound = config_or_fail()
    if cfg is None or serves_nothing(cfg):
        return
    plan_batches, mine = rollout.my_batches(cfg)
    rollout.register(cfg, mine)
    rollout.take_lock(cfg, name="Take the host's rollout lock (one rollout at a time)", **bound)
    limit = 2 * (cfg.deadline_s + cfg.stop_timeout_s + 120) + 60 + 2 * cfg.gateway_drain_s
    for k in host.loop(range(len(plan_batches))):
        rollout.batch_gate(k, len(plan_batches), tuple(plan_batches[k]), name=f"Begin rollout batch {k + 1}")
        if k == mine:
            python.call(name="Roll back to the release before this one (restart, health check)",
                        function=rollout.apply_release(cfg, k, limit, action="rollback"),
                        _if=[rollout.may_restart(k)], _timeout=limit + 60)
    rollout.release_lock(cfg, name="Release the host's rollout lock", **bound)


__all__ = ["run_stages", "run_rollback", "STAGES"]
