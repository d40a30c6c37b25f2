"""The fleet as an inventory describes it: who serves which profile where, which hosts monitor and balance.

One place turns a pyinfra inventory into :class:`Member` values, for the deploys (``host.inventory`` at planning
time: deploys/monitoring.py's scrape targets, deploys/gateway.py's backends) and for the control-machine
commands (``vlmfleet status``, ``vlmfleet bench``), which load the inventory file the way the pyinfra CLI does,
group_data/ included.

Roles come from groups: a host with a ``vlm_profile`` (a profile group, or its own data) serves; a host in group
``monitoring`` runs Prometheus (and Grafana); a host in group ``gateway`` runs the load balancer. A host may hold
several roles; a host with none is an error for deploys/vlm.py, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config import BY_KEY, service_name

MONITORING_GROUP = "monitoring"
GATEWAY_GROUP = "gateway"
OPS_GROUPS = (MONITORING_GROUP, GATEWAY_GROUP)


@dataclass(frozen=True)
class Member:
    """One inventory host, as the fleet's other parts see it.

    + name: the inventory name, e.g. ``"h1"`` or ``"gpu-a10-01.example.internal"``
    + address: where to reach it: its ``ssh_hostname`` data, else its name, e.g. ``"10.77.0.11"``
    + groups: its inventory groups, e.g. ``("qwen7b", "lab")``
    + profile: its serving profile, e.g. ``"qwen7b"``; None: it serves nothing
    """

    name: str
    address: str
    groups: tuple[str, ...]
    profile: str | None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def get(self, key: str) -> Any:
        """A vlmfleet data key of this host, its default where the data leaves it unset."""
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        return BY_KEY[key].default

    @property
    def serves(self) -> bool:
        return self.profile is not None

    @property
    def service(self) -> str | None:
        return service_name(self.profile) if self.profile else None

    @property
    def api_port(self) -> int:
        return int(self.get("api_port"))

    @property
    def api_url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    @property
    def balances(self) -> bool:
        return GATEWAY_GROUP in self.groups


def members(hosts: Iterable[Any]) -> list[Member]:
    """Members of pyinfra ``Host`` objects (anything with ``.name``, ``.data`` and ``.groups``), in order."""
    out = []
    for h in hosts:
        data = h.data.dict() if hasattr(h.data, "dict") else dict(h.data)
        groups = tuple(getattr(g, "name", g) for g in (h.groups or ()))
        out.append(Member(h.name, str(data.get("ssh_hostname") or h.name), groups, data.get("vlm_profile") or None,
                          data))
    return out


def by_profile(fleet: Iterable[Member]) -> dict[str, list[Member]]:
    """Serving members by profile, profiles sorted, members in inventory order."""
    out: dict[str, list[Member]] = {}
    for m in fleet:
        if m.serves:
            out.setdefault(m.profile, []).append(m)
    return dict(sorted(out.items()))


def gateway_port(gateway: Member, profile: str) -> int | None:
    """The port ``gateway`` answers ``profile`` on (its ``gateway_ports`` data), None when it has none."""
    port = (gateway.get("gateway_ports") or {}).get(profile)
    return int(port) if port is not None else None


def load(inventory: str, override_data: Mapping[str, Any] | None = None) -> list[Member]:
    """The members of an inventory file, loaded as ``pyinfra INVENTORY ...`` loads it (group_data/ beside it and in
    the current folder, ``--data`` overrides).

    + inventory: e.g. ``"inventories/prod.py"``
    + override_data: e.g. ``{"api_port": 8001}``
    Raises FleetError (a message, no traceback) when the file is missing or cannot be loaded.
    """
    if not Path(inventory).is_file():
        raise FleetError(f"inventory {inventory!r} is not a file; give one like inventories/prod.py")
    import os
    import sys

    from pyinfra.api import Config, State
    from pyinfra.context import ctx_inventory, ctx_state
    import warnings

    with warnings.catch_warnings():  # pyinfra's CLI patches the stdlib for gevent on import, as pyinfra itself runs
        warnings.simplefilter("ignore")
        from pyinfra_cli.inventory import make_inventory

    cwd = os.getcwd()
    if cwd not in sys.path:  # as the pyinfra CLI does: inventories import the project's modules
        sys.path.append(cwd)
    state = State(check_for_changes=False)
    state.cwd = cwd
    with ctx_state.use(state):
        try:
            inv = make_inventory(inventory, override_data=dict(override_data or {}), cwd=cwd)
        except SystemExit as exc:  # e.g. inventories/lab.py with no lab up: its own message
            raise FleetError(str(exc.code) if exc.code not in (None, 0, 1) else f"inventory {inventory!r} exited")
        except Exception as exc:  # an inventory is the user's Python: say which file failed and why
            raise FleetError(f"inventory {inventory!r} failed to load: {exc.__class__.__name__}: {exc}") from exc
        state.init(inv, Config())
        with ctx_inventory.use(inv):
            return members(inv)


def limit(fleet: list[Member], names: Iterable[str]) -> list[Member]:
    """The members named (by inventory name or group, as pyinfra's ``--limit``), in inventory order; all of them
    when ``names`` is empty. Raises FleetError naming what matched nothing.

    + names: e.g. ``["h1", "qwen72b_awq"]``
    """
    names = list(names)
    if not names:
        return list(fleet)
    unknown = [n for n in names if not any(m.name == n or n in m.groups for m in fleet)]
    if unknown:
        known = ", ".join(m.name for m in fleet) or "none"
        raise FleetError(f"--limit {' '.join(unknown)}: no host or group of that name in the inventory (hosts: "
                         f"{known})")
    return [m for m in fleet if m.name in names or any(g in names for g in m.groups)]


class FleetError(Exception):
    """A fleet that cannot be described: the message names the file or host and the fix."""


__all__ = ["Member", "FleetError", "members", "by_profile", "gateway_port", "load", "limit", "MONITORING_GROUP",
           "GATEWAY_GROUP", "OPS_GROUPS"]
