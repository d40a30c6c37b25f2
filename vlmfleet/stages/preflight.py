"""Stage 1, preflight: the host's data must be sound and its facts must fit the profile's plan, or the host fails
before anything changes."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution

from ..config import HostConfig, Problem
from ..facts import (DockerImage, FreeBytes, GpuQuery, GpuTopology, HostAddresses, JsonFile, NvidiaDriverState,
                     NvidiaPci)
from ..preflight import HostFacts, Verdict, check
from .common import DAEMON_JSON, fail_host


def gather_facts(cfg: HostConfig) -> HostFacts:
    """The facts preflight judges, read once (pyinfra caches each fact per host)."""
    paths = cfg.paths
    dist = host.get_fact(LinuxDistribution) or {}
    meta = dist.get("release_meta") or {}
    manifest = host.get_fact(JsonFile, path=paths.manifest)
    weights_ready = bool(manifest.get("exists") and manifest.get("valid"))
    config_json = None
    if weights_ready:  # the verified checkpoint's own numbers win over the catalog's
        cfg_fact = host.get_fact(JsonFile, path=paths.config_json)
        config_json = cfg_fact.get("data") if cfg_fact.get("valid") else None
    gpu = host.get_fact(GpuQuery) or {}
    addresses = host.get_fact(HostAddresses) if cfg.binds_one_address else None
    drives = bool(cfg.nvidia_driver_branch)  # the driver stage's facts: only when it is on
    return HostFacts(
        os_id=(meta.get("ID") or str(dist.get("name") or "")).lower() or None,
        os_version=meta.get("VERSION_ID"),
        gpu_csv=gpu.get("csv"),
        gpu_error=gpu.get("error"),
        gpu_topo=host.get_fact(GpuTopology) if gpu.get("csv") else None,
        free_model_dir=host.get_fact(FreeBytes, path=cfg.model_dir),
        free_docker=host.get_fact(FreeBytes, path=cfg.docker_data_root),
        weights_ready=weights_ready,
        image_present=bool(host.get_fact(DockerImage, ref=cfg.image_ref)),
        daemon_json=host.get_fact(JsonFile, path=DAEMON_JSON),
        config_json=config_json,
        config_path=f"{host.name}:{paths.config_json}",
        addresses=addresses,
        pci_text=host.get_fact(NvidiaPci) if drives else None,
        driver_state=host.get_fact(NvidiaDriverState) if drives else None,
    )


@deploy("Preflight")
def preflight(cfg: HostConfig | None, problems: list[Problem]) -> Verdict:
    """Check the data (``problems`` from building the configuration), then gather facts (OS, GPUs from nvidia-smi,
    driver, free disk, daemon.json; with ``nvidia_driver_branch`` the PCI bus and the driver's packages), plan the profile on them, and fail the host with one line per problem when
    anything does not fit. Makes no change; returns the verdict (its plan when the host is fit).

    + cfg: the host's configuration, None when its data has problems
    + problems: what is wrong with the data, e.g. from ``vlmfleet.stages.common.host_config()``
    """
    if cfg is None:
        v = Verdict(problems=[p.render(host.name) for p in problems])
    else:
        v = check(cfg, gather_facts(cfg))
    if v.problems:
        # Said now, while planning, so --dry and the confirmation prompt show them; the operation fails the host
        # (before any change) and says them again with the run's results.
        for line in v.problems:
            logger.warning(f"    [{host.name}] preflight: {line}")
        fail_host(name="Check the data and facts against the profile", reasons=v.problems)
    else:
        host.noop(f"preflight passed: {v.summary}")
        if v.driver and v.driver.changes:  # said in every run's output, not only with -v: it may reboot the host
            logger.info(f"    [{host.name}] driver: {v.driver.summary()}")
    return v
