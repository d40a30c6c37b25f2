"""Stage 2, driver (opt-in: ``nvidia_driver_branch``): the NVIDIA driver of the pinned branch from the OS's own
source, held, with the persistence daemon and — on NVSwitch systems — the fabric manager; the reboot into it
happens in the host's rollout batch (``reboot_into_driver``), and nvidia-smi is checked after it.

What to do was decided by preflight (``vlmfleet.driver.plan``, pure); this module only orchestrates.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from .. import driver as drv
from ..config import HostConfig
from ..facts import KeyringFingerprint
from .common import bounded_apt_update, pyinfra_timeout

PERSISTENCED = "nvidia-persistenced.service"
FABRICMANAGER = "nvidia-fabricmanager.service"


def _cuda_repository(cfg: HostConfig, os_id: str, os_version: str, machine: str) -> list:
    """NVIDIA's CUDA repository with its key pinned by fingerprint (Debian); returns the changing operations."""
    apt.packages(name="Install what fetching the CUDA repository's key needs (curl, gpg)",
                 packages=["ca-certificates", "curl", "gnupg"])
    key_url, fingerprint = drv.cuda_key(cfg.nvidia_cuda_repo_key_url, cfg.nvidia_cuda_repo_key_fingerprint,
                                        cfg.nvidia_cuda_repo_url, os_id, os_version, machine)
    url = drv.fill(cfg.nvidia_cuda_repo_url, os_id, os_version, machine)
    if host.get_fact(KeyringFingerprint, path=drv.CUDA_KEYRING) == fingerprint:
        host.noop(f"NVIDIA's CUDA repository key {fingerprint} is already installed")
        key = None
    else:
        key = server.shell(name=f"Fetch NVIDIA's CUDA repository key (pinned {fingerprint})",
                           commands=[drv.key_command(key_url, fingerprint)])
    repo = files.put(name="Add NVIDIA's CUDA repository", dest=drv.CUDA_SOURCES, mode="644",
                     src=StringIO(drv.cuda_source_line(url)))
    return [op for op in (key, repo) if op is not None]


@deploy("Driver")
def driver(cfg: HostConfig, plan: drv.DriverPlan | None, defer: bool = False) -> None:
    """Bring the host to the pinned driver branch, short of the reboot: nouveau blacklisted, the packages
    installed from Ubuntu's archive (precompiled modules, DKMS only without them) or NVIDIA's CUDA repository
    (Debian), held, the persistence daemon and the fabric manager enabled. Whether the host then reboots was
    decided by preflight (``plan.reboot``); ``reboot_into_driver`` does it in the host's batch.

    + cfg: the host's configuration (``cfg.nvidia_driver_branch``, the repository keys)
    + plan: preflight's driver plan, None when ``nvidia_driver_branch`` is unset
    + defer: the host serves and will reboot: its packages install in its batch (``reboot_into_driver``), so a
      rollout that stops before the batch leaves it as it was
    """
    if plan is None:
        host.noop("nvidia_driver_branch is unset: the driver stage changes nothing (the host's driver is its own)")
        return
    for note in plan.notes:
        host.noop(note)
    if not plan.apt_managed:
        return
    meta = (host.get_fact(LinuxDistribution) or {}).get("release_meta") or {}
    os_id, os_version = (meta.get("ID") or "").lower(), meta.get("VERSION_ID") or ""
    if plan.blacklist_nouveau:
        nouveau = files.put(name="Blacklist nouveau (the NVIDIA driver takes the GPUs)", dest=drv.NOUVEAU_CONF,
                            mode="644", src=StringIO(drv.NOUVEAU_BLACKLIST))
        server.shell(name="Rebuild the initramfs without nouveau",
                     commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; "
                               "else echo 'no update-initramfs on this host: nothing to rebuild'; fi"],
                     _if=nouveau.did_change, _timeout=pyinfra_timeout(600))
    else:
        host.noop("no nouveau to blacklist (the kernel has no nouveau module, or it is blacklisted already)")
    if plan.family == "debian" and plan.cuda_source:
        # the host's own source for the repository (preflight's note names it): a second one of ours would make apt
        # refuse both ("Conflicting values set for option Signed-By")
        ours = files.file(name="Remove vlmfleet's CUDA repository source (the host has its own)", path=drv.CUDA_SOURCES,
                          present=False)
        bounded_apt_update(cfg, "Update apt after removing vlmfleet's CUDA repository source", _if=ours.did_change)
    elif plan.install and plan.family == "debian":
        changed = _cuda_repository(cfg, os_id, os_version, plan.arch)
        if changed:
            bounded_apt_update(cfg, "Update apt after adding NVIDIA's CUDA repository", _if=any_changed(*changed))
    if plan.install and defer:
        host.noop(f"NVIDIA driver {plan.branch} installs in this host's rollout batch, just before its reboot: it "
                  "serves, and new driver libraries beside the loaded module would break its next container start")
    else:
        _install(cfg, plan)
        _enable_daemons(cfg, plan)


def _install(cfg: HostConfig, plan: drv.DriverPlan, **when) -> None:
    """The packages (when the plan installs any) and the hold."""
    if plan.install:
        bounded_apt_update(cfg, "Update apt's package lists (bounded in time, 3 tries)", cache_time=3600,
                           **{k: v for k, v in when.items() if k != "_timeout"})
        what = ", ".join(plan.packages.driver) if plan.expect is None else ", ".join(plan.packages.fabric)
        server.shell(name=f"Install NVIDIA driver {plan.branch} ({what} from {plan.packages.source})",
                     commands=[plan.install], **{**when, "_timeout": pyinfra_timeout(max(1800, cfg.apt_timeout_s * 3))})
    else:
        host.noop(f"NVIDIA driver {plan.installed or plan.loaded} (branch {plan.branch}) is already installed")
    if plan.hold:
        server.shell(name="Hold the NVIDIA driver's packages (apt-mark hold: no upgrade moves the kernel module)",
                     commands=[drv.hold_command()], **when)
    else:
        host.noop("the NVIDIA driver's packages are already held")


def _enable_daemons(cfg: HostConfig, plan: drv.DriverPlan, **when) -> None:
    """The persistence daemon (vlmfleet's unit) and the fabric manager enabled; started only when no reboot
    follows (before it no module answers)."""
    running = None if plan.reboot else True
    gate = list(when.pop("_if", None) or [])
    if plan.persistenced:
        unit = files.put(name="Run the NVIDIA persistence daemon in persistence mode, from boot", mode="644",
                         dest=drv.PERSISTENCED_UNIT, src=StringIO(drv.persistenced_unit()), _if=gate or None,
                         **when)
        systemd.daemon_reload(name="Reload systemd for the persistence daemon's unit", _if=[*gate, unit.did_change],
                              **when)
        systemd.service(name="Enable the NVIDIA persistence daemon", service=PERSISTENCED, enabled=True,
                        running=running, _if=gate or None, **when)
        if running:
            systemd.service(name="Restart the NVIDIA persistence daemon for its new unit", service=PERSISTENCED,
                            restarted=True, _if=[*gate, unit.did_change], **when)
    if plan.fabricmanager:
        systemd.service(name=f"Enable the NVIDIA fabric manager ({plan.nvswitches} NVSwitches)",
                        service=FABRICMANAGER, enabled=True, running=running, _if=gate or None, **when)


def reboot_into_driver(cfg: HostConfig, plan: drv.DriverPlan, batch: int, install: bool = False, server_plan=None,
                       **when) -> list:
    """In the host's rollout batch: reboot when the plan says the loaded module is missing or not the installed
    one (pyinfra's reboot, bounded by ``nvidia_reboot_timeout_s``), then check nvidia-smi answers with the
    branch for every GPU and the daemons run. Until that check passes the host counts as failed, so a host
    that does not come back stops the rollout before the next batch. Returns the reboot (the health stage checks
    the server after it).

    + plan: preflight's driver plan; nothing happens unless ``plan.reboot``
    + batch: the host's batch (0 = the first)
    + install: the packages were deferred to the batch (``driver(defer=True)``): install and hold them first
    + server_plan: the host's planner result when its server ran before the reboot: the server must be healthy
      again (vlmfleet-health, within its deadline) before the batch counts as done, so a driver the model cannot
      serve on stops the rollout before the next batch reboots
    + when: e.g. ``_if=[rollout.may_restart(k)]`` and the stage's ``_timeout``
    """
    from pyinfra.operations import python

    from .. import rollout as ro
    from . import rollout

    if not plan.reboot:
        host.noop(f"no reboot: the loaded NVIDIA driver is {plan.loaded}, the installed one")
        return []
    target = plan.expect or f"branch {plan.branch}"
    if install:
        _install(cfg, plan, **when)
        _enable_daemons(cfg, plan, **when)
    python.call(name="Note the reboot (the rollout stops if the host does not come back)", **when,
                function=rollout.record(ro.FAILED, f"rebooted into NVIDIA driver {target} and did not come back "
                                        "with it", batch))
    if rollout.drain_args(cfg):  # the inventory has a gateway: drain this replica first, as a restart does
        from ..gateway import AGENT_UNIT

        server.shell(name="Drain this replica from the gateways before the reboot", **when,
                     commands=[drv.drain_command(cfg.paths.agent_state, f"{AGENT_UNIT}.service", cfg.gateway_drain_s)])
    bounded = {k: v for k, v in when.items() if k != "_timeout"}
    # pyinfra's wait counts tries (reboot_timeout / interval), each a connect of up to CONNECT_TIMEOUT (10 s)
    # plus the interval: tries of at most 15 s, as many as fit in nvidia_reboot_timeout_s
    interval = 5
    reboot = server.reboot(name=f"Reboot into NVIDIA driver {target} ({plan.reboot})", delay=10, interval=interval,
                           reboot_timeout=max(interval, cfg.nvidia_reboot_timeout_s * interval // (interval + 10)),
                           _timeout=cfg.nvidia_reboot_timeout_s + 120, **bounded)
    server.shell(name=f"Check nvidia-smi answers with driver {target} for {plan.gpus} GPUs",
                 commands=[drv.check_command(plan.branch, plan.gpus, plan.expect)], **when)
    for unit, on in ((PERSISTENCED, plan.persistenced), (FABRICMANAGER, plan.fabricmanager)):
        if on:  # a check, not a start: a daemon that failed at boot fails the host, with its last words
            server.shell(name=f"Check {unit} runs after the reboot", commands=[drv.active_command(unit)], **when)
    if server_plan is not None:
        from .health import health_command

        server.shell(name=f"Check {cfg.service} serves again after the reboot (within its deadline)", **bounded,
                     commands=[health_command(cfg, server_plan.version.metrics, cfg.deadline_s) + " >/dev/null"],
                     _timeout=pyinfra_timeout(cfg.deadline_s + 240))
    python.call(name="Note the host is back with its driver", **when,
                function=rollout.record(ro.UPDATED, f"rebooted into NVIDIA driver {target}", batch))
    return [reboot]


__all__ = ["driver", "reboot_into_driver"]
