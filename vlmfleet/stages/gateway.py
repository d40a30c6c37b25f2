"""deploys/gateway.py: HAProxy on the hosts of group ``gateway``, the drain agent on every serving host.

What is written comes from vlmfleet.gateway (pure). The HAProxy configuration is checked by the host's own
``haproxy -c`` before it replaces the running one, and HAProxy reloads (no dropped connection) only when it
changed. The backends come from the whole inventory (``--limit`` narrows the hosts changed, never the replicas).
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from .. import fleet, gateway
from ..config import HostConfig
from ..paths import PACKAGE_DIR
from .common import bounded_apt_update, checked_file, config_or_fail, fail_host


@deploy("Drain agent")
def drain_agent(cfg: HostConfig) -> None:
    """vlmfleet-agent on ``gateway_agent_port``: tells the gateways' HAProxy whether this replica takes new
    requests (``drain`` while a rollout restarts it)."""
    paths = cfg.paths
    files.directory(name=f"Create {paths.tools_dir}/bin", path=f"{paths.tools_dir}/bin", mode="755")
    tool = files.put(name="Install vlmfleet-agent", src=str(PACKAGE_DIR / "remote" / "vlmfleet_agent.py"),
                     dest=paths.agent_bin, mode="755")
    unit = files.put(name=f"Install {gateway.AGENT_UNIT}.service", mode="644",
                     dest=f"/etc/systemd/system/{gateway.AGENT_UNIT}.service",
                     src=StringIO(gateway.agent_unit(paths.agent_bin, paths.agent_state, cfg.gateway_agent_port)))
    # (re)start first when something changed (a first install starts it here), then keep it enabled and running
    systemd.service(name=f"Restart {gateway.AGENT_UNIT} for its new version", service=f"{gateway.AGENT_UNIT}.service",
                    restarted=True, daemon_reload=True, _if=any_changed(tool, unit))
    systemd.service(name=f"Enable and start {gateway.AGENT_UNIT}", service=f"{gateway.AGENT_UNIT}.service",
                    running=True, enabled=True)


@deploy("Gateway")
def haproxy(cfg: HostConfig, backends: list[gateway.Backend]) -> None:
    """Debian's HAProxy with one frontend per serving group; its configuration checked by ``haproxy -c`` on the
    host first, reloaded only when it changed."""
    bounded_apt_update(cfg, "Update apt's package lists (bounded in time, 3 tries)", cache_time=3600)
    apt.packages(name="Install HAProxy", packages=["haproxy"], no_recommends=True)
    groups = ", ".join(f"{b.profile} on :{b.port} ({len(b.servers)} replicas)" for b in backends)
    config = checked_file(name=f"Balance {groups or 'no group'} (checked by haproxy -c)",
                          text=gateway.haproxy_config(backends, stats_port=cfg.gateway_stats_port,
                                                      agent_port=cfg.gateway_agent_port),
                          dest=gateway.CONFIG_FILE, check="haproxy -c -f {path}")
    systemd.service(name="Enable and start HAProxy", service="haproxy.service", running=True, enabled=True)
    systemd.service(name="Reload HAProxy for its new backends (open connections stay)", service="haproxy.service",
                    reloaded=True, _if=config.did_change)


def run_gateway() -> None:
    """deploys/gateway.py: the drain agent on serving hosts, HAProxy on gateway hosts."""
    cfg, bound = config_or_fail()
    if cfg is None:
        return
    members = fleet.members(host.inventory)
    if cfg.vlm_profile:
        drain_agent(cfg, **bound)
    if fleet.GATEWAY_GROUP in host.groups:
        me = next(m for m in members if m.name == host.name)
        try:
            bks = gateway.backends(members, me)
        except gateway.GatewayError as exc:
            fail_host(name="Check every serving group has a gateway port", reasons=[str(exc)], **bound)
            return
        if not bks:
            host.noop(f"{host.name}: no host of the inventory serves a profile yet: HAProxy gets no group")
        haproxy(cfg, bks, **bound)


__all__ = ["run_gateway", "drain_agent", "haproxy"]
