"""Run the stages a host's data selects, in order; preflight always runs first (it changes nothing)."""

from __future__ import annotations

from ..settings import STAGES
from .common import host_settings


def stage_functions():
    from .base import base
    from .health import health
    from .image import image
    from .preflight import preflight
    from .service import service
    from .weights import weights

    return {"preflight": preflight, "base": base, "weights": weights, "image": image, "service": service,
            "health": health}


def run_stages(only: list[str] | None = None) -> None:
    """Run ``only`` (or the host's ``vlm_stages``) in the canonical order, preflight first."""
    wanted = only or host_settings().get("vlm_stages") or list(STAGES)
    funcs = stage_functions()
    funcs["preflight"]()
    for stage in STAGES[1:]:
        if stage in wanted and stage in funcs:
            funcs[stage]()
