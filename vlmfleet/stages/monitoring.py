"""deploys/monitoring.py: exporters on every host, Prometheus (and Grafana) on the hosts of group ``monitoring``.

What is written comes from vlmfleet.monitoring (pure); this module only orchestrates. Every Prometheus file is
checked by the host's own ``promtool`` before it replaces the one Prometheus runs with, and Prometheus reloads
only when one changed. The scrape targets come from the whole inventory (``--limit`` narrows the hosts changed,
never the targets).
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from .. import fleet, monitoring
from ..config import HostConfig
from ..facts import DockerImage
from .common import bounded_apt_update, bounded_shell, checked_file, config_or_fail

NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"
DCGM_UNIT = "vlmfleet-dcgm-exporter"
GRAFANA_KEY = "/etc/apt/keyrings/grafana.asc"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"


@deploy("Node exporter")
def node_exporter(cfg: HostConfig) -> None:
    """Debian's prometheus-node-exporter on ``node_exporter_port``, enabled and running."""
    bounded_apt_update(cfg, "Update apt's package lists (bounded in time, 3 tries)", cache_time=3600)
    pkg = apt.packages(name="Install Prometheus' node exporter", packages=["prometheus-node-exporter"],
                       no_recommends=True)
    args = files.put(name=f"Listen on port {cfg.node_exporter_port} ({NODE_EXPORTER_DEFAULTS})",
                     dest=NODE_EXPORTER_DEFAULTS, mode="644",
                     src=StringIO(monitoring.node_exporter_defaults(cfg.node_exporter_port)))
    systemd.service(name="Restart the node exporter for its new arguments", service="prometheus-node-exporter.service",
                    restarted=True, _if=any_changed(pkg, args))
    systemd.service(name="Enable and start the node exporter", service="prometheus-node-exporter.service",
                    running=True, enabled=True)


@deploy("DCGM exporter")
def dcgm_exporter(cfg: HostConfig) -> None:
    """NVIDIA's DCGM exporter as a systemd unit running its container with the host's GPUs; on a host without
    the NVIDIA runtime (no GPU: the lab) it is not installed, and the run says so."""
    if not cfg.nvidia_runtime:
        host.noop(f"{host.name} has no GPU runtime (nvidia_runtime = False): the DCGM exporter is not installed "
                  "here (its unit is rendered and checked by tests/test_monitoring.py)")
        return
    image = cfg.dcgm_exporter_image
    if host.get_fact(DockerImage, ref=image):
        host.noop(f"{image} is already pulled")
        pull = None
    else:
        pull = bounded_shell(cfg, "pull_timeout_s", name=f"Pull {image}",
                             command=f"docker pull --quiet {shlex.quote(image)}", what=f"docker pull {image}")
    unit = files.put(name=f"Install {DCGM_UNIT}.service", dest=f"/etc/systemd/system/{DCGM_UNIT}.service",
                     mode="644", src=StringIO(monitoring.dcgm_unit(cfg.dcgm_exporter_image,
                                                                   cfg.dcgm_exporter_port, DCGM_UNIT)))
    systemd.service(name=f"Restart {DCGM_UNIT} for its new unit or image", service=f"{DCGM_UNIT}.service",
                    restarted=True, daemon_reload=True, _if=any_changed(*(op for op in (unit, pull) if op)))
    systemd.service(name=f"Enable and start {DCGM_UNIT}", service=f"{DCGM_UNIT}.service", running=True,
                    enabled=True)


@deploy("Prometheus")
def prometheus(cfg: HostConfig, members: list[fleet.Member]) -> None:
    """Debian's Prometheus scraping every target of the inventory, with vlmfleet's alert rules; each file checked
    by promtool on the host before it is put in place, a reload only when one changed."""
    versions = monitoring.fleet_versions(members)
    me = next(m for m in members if m.name == host.name)
    bounded_apt_update(cfg, "Update apt's package lists (bounded in time, 3 tries)", cache_time=3600)
    pkg = apt.packages(name="Install Prometheus", packages=["prometheus"], no_recommends=True)
    files.directory(name=f"Create {monitoring.RULES_DIR}", path=monitoring.RULES_DIR, mode="755")
    rules = checked_file(name="Install vlmfleet's alert rules (checked by promtool check rules)",
                         text=monitoring.alert_rules(monitoring.Thresholds.from_member(me), versions),
                         dest=monitoring.ALERTS_FILE, check="promtool check rules {path}")
    config = checked_file(
        name=f"Write the scrape targets of {len(members)} hosts (checked by promtool check config)",
        text=monitoring.prometheus_config(monitoring.targets(members), scrape_interval_s=cfg.scrape_interval_s,
                                          alertmanagers=cfg.alertmanager_urls),
        dest=monitoring.CONFIG_FILE, check="promtool check config {path}")
    args = files.put(name=f"Listen on port {cfg.prometheus_port}, keep {cfg.prometheus_retention} of samples",
                     dest=PROMETHEUS_DEFAULTS, mode="644",
                     src=StringIO(monitoring.prometheus_defaults(cfg.prometheus_port, cfg.prometheus_retention)))
    systemd.service(name="Restart Prometheus for its new arguments", service="prometheus.service", restarted=True,
                    _if=any_changed(pkg, args))
    systemd.service(name="Enable and start Prometheus", service="prometheus.service", running=True, enabled=True)
    systemd.service(name="Reload Prometheus for its new targets and rules", service="prometheus.service",
                    reloaded=True, _if=lambda: (rules.did_change() or config.did_change())
                    and not (pkg.did_change() or args.did_change()))


@deploy("Grafana")
def grafana(cfg: HostConfig, members: list[fleet.Member]) -> None:
    """Grafana's provisioning (the Prometheus data source and vlmfleet's dashboard), and Grafana itself from
    ``grafana_apt_url`` when ``grafana_install``."""
    versions = monitoring.fleet_versions(members)
    installed = []
    if cfg.grafana_install:
        files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="755")
        key = files.download(name="Fetch Grafana's apt key", src=f"{cfg.grafana_apt_url.rstrip('/')}/gpg.key",
                             dest=GRAFANA_KEY, mode="644")
        repo = files.put(name="Add Grafana's apt repository", dest="/etc/apt/sources.list.d/grafana.list",
                         mode="644", src=StringIO(monitoring.grafana_repo_line(cfg.grafana_apt_url, GRAFANA_KEY)))
        bounded_apt_update(cfg, "Update apt after adding Grafana's repository", _if=any_changed(key, repo))
        installed.append(apt.packages(name="Install Grafana", packages=["grafana"]))
    else:
        host.noop(f"{host.name}: grafana_install = False: Grafana is not installed; its provisioning files are "
                  "written for the Grafana you run")
    changed = [
        files.put(name="Provision the Prometheus data source for Grafana", mode="644",
                  dest=f"{GRAFANA_PROVISIONING}/datasources/vlmfleet.yaml",
                  src=StringIO(monitoring.grafana_datasource(cfg.prometheus_port)), create_remote_dir=True),
        files.put(name="Provision vlmfleet's dashboards folder for Grafana", mode="644",
                  dest=f"{GRAFANA_PROVISIONING}/dashboards/vlmfleet.yaml",
                  src=StringIO(monitoring.grafana_dashboards_provider()), create_remote_dir=True),
        files.put(name="Install the vlmfleet dashboard", mode="644",
                  dest=f"{monitoring.GRAFANA_DASHBOARDS_DIR}/vlmfleet.json",
                  src=StringIO(monitoring.dashboard_json(versions)), create_remote_dir=True),
    ]
    if cfg.grafana_install:
        systemd.service(name="Enable and start Grafana", service="grafana-server.service", running=True,
                        enabled=True)
        systemd.service(name="Restart Grafana for its provisioning", service="grafana-server.service",
                        restarted=True, _if=any_changed(*installed, *changed))


def run_monitoring() -> None:
    """deploys/monitoring.py: the exporters on every host, Prometheus and Grafana on monitoring hosts."""
    cfg, bound = config_or_fail()
    if cfg is None:
        return
    members = fleet.members(host.inventory)
    node_exporter(cfg, **bound)
    if cfg.vlm_profile:
        dcgm_exporter(cfg, **bound)
    if fleet.MONITORING_GROUP in host.groups:
        prometheus(cfg, members, **bound)
        grafana(cfg, members, **bound)


__all__ = ["run_monitoring", "node_exporter", "dcgm_exporter", "prometheus", "grafana"]
