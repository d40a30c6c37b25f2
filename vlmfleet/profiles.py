"""Serving profiles (catalog/profiles.yaml) turned into plans, one at a time or as the whole accepted matrix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from .catalog import CatalogError, VllmVersion, gpu_kinds, model, model_with_config, profile, profiles
from .gpus import Inventory, parse_spec
from .planner import Plan, Wish, plan

WISH_KEYS = {f.name for f in fields(Wish)}
MATRIX_COUNTS = (1, 2, 4, 8)


def profile_wish(profile_id: str, overrides: dict | None = None) -> Wish:
    """The profile's wish with ``overrides`` (group/host data) applied; unknown keys are an error."""
    p = profile(profile_id)
    values = {**p.wish, **(overrides or {})}
    unknown = sorted(set(values) - WISH_KEYS)
    if unknown:
        raise CatalogError(f"unknown planner keys {', '.join(unknown)}; known: {', '.join(sorted(WISH_KEYS))}")
    return Wish(**values)


def plan_profile(profile_id: str, inv: Inventory, version: VllmVersion, overrides: dict | None = None,
                 config: dict | None = None, config_source: str = "config.json") -> Plan:
    """Plan a profile on an inventory; ``config`` (a downloaded config.json) wins over the catalog's numbers."""
    m = model(profile(profile_id).model_id)
    if config:
        m = model_with_config(m, config, config_source)
    return plan(m, inv, version, profile_wish(profile_id, overrides))


def accepted(version: VllmVersion) -> Iterator[tuple[str, str, Plan]]:
    """Every (profile, GPU spec) the planner accepts for ``version``: the plan itself when it fits, else the
    plan of its proposal when that fits. This is what the parser tier feeds to the real vLLM parser."""
    for pid in profiles():
        for kind in gpu_kinds():
            for n in MATRIX_COUNTS:
                spec = f"{n}x{kind}"
                p = plan_profile(pid, parse_spec(spec), version)
                final = p if p.verdict == "fits" else (p.proposal.plan if p.proposal else None)
                if final is not None and final.verdict == "fits":
                    yield pid, spec, final
