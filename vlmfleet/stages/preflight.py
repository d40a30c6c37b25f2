"""Stage 1, preflight: the host's facts must fit the profile's plan, or the host fails before anything changes."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from .common import fail_host, verdict


@deploy("Preflight")
def preflight() -> None:
    """Gather facts (OS, GPUs from nvidia-smi, driver, free disk, daemon.json), plan the profile on them, and fail
    the host with one line per problem when anything does not fit. Makes no change."""
    v = verdict()
    if v.problems:
        fail_host(name="Check facts against the profile", reasons=v.problems)
    else:
        host.noop(f"preflight passed: {v.summary}")
