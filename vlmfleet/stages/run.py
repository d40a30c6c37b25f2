"""Run the stages a host's data selects, in order; preflight always runs first (it changes nothing).

The configuration is built once per host here and handed to each stage with the preflight plan; what a stage
changed that a later stage must react to comes back as its return value.
"""

from __future__ import annotations

from pyinfra import host

from ..config import BY_KEY, STAGES
from .common import fail_host, host_config


def run_stages(only: list[str] | None = None) -> None:
    """Run ``only`` (or the host's ``vlm_stages``) in the canonical order, preflight first.

    + only: e.g. ``["service"]`` (deploys/service.py); None: the host's ``vlm_stages``
    """
    from .base import base
    from .health import health
    from .image import image
    from .preflight import preflight
    from .service import service
    from .weights import weights

    cfg, problems = host_config()
    # every command of every stage is bounded (pyinfra's _timeout, a deploy-wide argument): a host that hangs fails
    # alone, naming the operation; the pull, the fetch, apt and the health check set their own, longer bounds
    bound = {"_timeout": cfg.command_timeout_s if cfg else BY_KEY["command_timeout_s"].default}
    verdict = preflight(cfg, problems, **bound)
    if cfg is None or not verdict.ok:
        return  # the host fails at the preflight gate; nothing after it is planned
    wanted = set(only or cfg.vlm_stages)
    restart_for: list = []
    started: list = []
    if "base" in wanted:
        started += base(cfg, **bound)  # a dockerd restart restarts the vLLM container: the health stage checks it
    if "weights" in wanted:
        restart_for += weights(cfg, verdict.plan, **bound)
    if "image" in wanted:
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
    if "service" in wanted:
        started += service(cfg, verdict.plan, restart_for, **bound)
    if "health" in wanted:
        health(cfg, verdict.plan, started, **bound)


__all__ = ["run_stages", "STAGES"]
