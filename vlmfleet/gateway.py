"""What a gateway host's HAProxy gets: one address per serving group, generated from the inventory — pure Python,
no pyinfra (deploys/gateway.py writes it; the tests check it with the real ``haproxy -c``).

Each group (profile) gets a frontend on its ``gateway_ports`` port, balanced by least connections over the group's
replicas. HAProxy checks each replica's ``/health`` every 2 s (down after 2 failures), asks its drain agent
(vlmfleet-agent, ``gateway_agent_port``) every second whether it takes new requests, and retries a request whose
replica refused the connection or closed without answering on another replica. A rollout writes ``drain`` for
the agent before it restarts a replica, waits ``gateway_drain_s``, and writes ``ready`` after the health check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .fleet import Member, by_profile, gateway_port
from .paths import render

MARKER = "Managed by vlmfleet (gateway)"
CONFIG_FILE = "/etc/haproxy/haproxy.cfg"
AGENT_UNIT = "vlmfleet-agent"


@dataclass(frozen=True)
class Server:
    name: str  # inventory name, e.g. "h1"
    address: str  # e.g. "10.77.0.11"
    port: int  # its api_port


@dataclass(frozen=True)
class Backend:
    """One group behind the gateway: its profile, the gateway's port for it and its replicas."""

    profile: str
    port: int
    servers: tuple[Server, ...]


class GatewayError(ValueError):
    """The inventory cannot be balanced as it stands: the message names the host, the key and the fix."""


def backends(fleet: Iterable[Member], gateway: Member) -> list[Backend]:
    """The groups ``gateway`` balances: every profile some host serves, with the port ``gateway_ports`` gives it.

    + fleet: every member of the inventory (vlmfleet.fleet.members)
    + gateway: the gateway host, e.g. the member ``ops``
    Raises GatewayError for a profile without a port.
    """
    out = []
    for profile, servers in by_profile(fleet).items():
        port = gateway_port(gateway, profile)
        if port is None:
            raise GatewayError(
                f"{gateway.name}: data key 'gateway_ports' gives no port to profile {profile} (served by "
                f"{', '.join(s.name for s in servers)}) — fix: add {profile!r}: <port> to gateway_ports in "
                "group_data/gateway.py")
        out.append(Backend(profile, port, tuple(Server(s.name, s.address, s.api_port) for s in servers)))
    return out


def haproxy_config(bks: Iterable[Backend], *, stats_port: int, agent_port: int, timeout_s: int = 600) -> str:
    """``/etc/haproxy/haproxy.cfg`` for Debian's HAProxy 2.6.

    + stats_port: e.g. 8404: /stats (HAProxy's page) and /metrics (its Prometheus exporter)
    + agent_port: e.g. 9101: where each replica's vlmfleet-agent answers
    + timeout_s: how long a client or replica may be silent mid-request, e.g. 600
    """
    return render("gateway/haproxy.cfg.j2", trim=True, marker=MARKER, backends=list(bks), stats_port=stats_port,
                  agent_port=agent_port, timeout_s=timeout_s)


def agent_unit(agent_bin: str, state: str, port: int) -> str:
    """The drain agent's systemd unit on a serving host.

    + agent_bin: e.g. ``/opt/vlmfleet/bin/vlmfleet-agent``
    + state: e.g. ``/run/vlmfleet/gateway-agent``
    """
    return render("gateway/vlmfleet-agent.service.j2", marker=MARKER, agent_bin=agent_bin, state=state, port=port)


def has_gateway(fleet: Iterable[Member]) -> bool:
    """Whether the inventory puts any host in group ``gateway`` (then replicas run the drain agent)."""
    return any(m.balances for m in fleet)


__all__ = ["Backend", "Server", "GatewayError", "backends", "haproxy_config", "agent_unit", "has_gateway",
           "CONFIG_FILE", "AGENT_UNIT"]
