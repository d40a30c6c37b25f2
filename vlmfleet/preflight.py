"""Preflight: judge one host's facts against its configuration and profile, before anything changes.

Pure Python: a checked :class:`~vlmfleet.config.HostConfig` and the facts in (as plain values), a verdict out —
the problems (one line each, naming the host, the key or fact, and a fix) and, when the host is fit, the plan
every later stage renders from.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from .catalog import CatalogError, model, profiles, vllm_version
from .config import DATA_KEY_OF_WISH, HostConfig
from .driver import DriverError, DriverPlan, os_family, parse_pci, parse_state
from .driver import plan as driver_plan
from .gpus import Inventory, InventoryError, parse_nvidia_smi, parse_pci_gpus
from .planner import Plan, corrected_wish
from .profiles import plan_profile

SUPPORTED_OS = {("debian", "12"), ("debian", "13"), ("ubuntu", "22.04"), ("ubuntu", "24.04")}


@dataclass
class HostFacts:
    """What preflight needs to know about a host (gathered by pyinfra facts)."""

    os_id: str | None  # "debian"
    os_version: str | None  # "12"
    gpu_csv: str | None  # NVIDIA_SMI_QUERY output; None: no nvidia-smi, or it failed (gpu_error says how)
    gpu_topo: str | None = None
    gpu_error: str | None = None  # nvidia-smi's own message when it ran and failed
    free_model_dir: int | None = None  # bytes
    free_docker: int | None = None  # bytes
    weights_ready: bool = False  # verified weights already on the host
    image_present: bool = False
    daemon_json: dict | None = None  # JsonFile fact of /etc/docker/daemon.json
    config_json: dict | None = None  # the verified checkpoint's config.json, when the weights are there
    config_path: str = ""
    addresses: list[str] | None = None  # the host's IP addresses (gathered when api_bind names one)
    pci_text: str | None = None  # NvidiaPci (gathered when nvidia_driver_branch is set)
    driver_state: str | None = None  # NvidiaDriverState (gathered when nvidia_driver_branch is set)


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    plan: Plan | None = None
    inventory: Inventory | None = None
    summary: str = ""
    weights_ready: bool = False  # verified weights of the profile are on the host
    image_present: bool = False  # the image the unit runs is on the host
    driver: DriverPlan | None = None  # the driver stage's plan, when nvidia_driver_branch is set

    @property
    def ok(self) -> bool:
        return not self.problems and self.plan is not None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def select_gpus(inv: Inventory, devices) -> Inventory:
    if devices == "all":
        return inv
    chosen = tuple(g for g in inv.gpus if g.index in devices)
    missing = sorted(set(devices) - {g.index for g in inv.gpus})
    if missing:
        raise InventoryError(f"names GPUs {missing} the host does not have (it has {[g.index for g in inv.gpus]})")
    return replace(inv, gpus=chosen)


def profile_for_model(model_id: str) -> str | None:
    """The profile that serves a catalog model (``qwen2.5-vl-7b-instruct-awq`` -> ``qwen7b_awq``)."""
    return next((p.id for p in profiles().values() if p.model_id == model_id), None)


def fix_text(changes: dict) -> str:
    """Planner changes in data keys: ``vllm_tensor_parallel_size = 2 and vllm_max_model_len = 16384``."""
    parts = []
    for wish_key, value in changes.items():
        if wish_key == "model":
            pid = profile_for_model(str(value))
            parts.append(f"vlm_profile = {pid!r}" if pid else f"a profile serving {value}")
        elif value is None:
            parts.append(f"remove {DATA_KEY_OF_WISH.get(wish_key, wish_key)}")
        else:
            parts.append(f"{DATA_KEY_OF_WISH.get(wish_key, wish_key)} = {value!r}")
    return " and ".join(parts)


def fitting_profile(cfg: HostConfig, inv: Inventory, version) -> str | None:
    """The largest catalog profile that fits this host as it is (for a "does not fit" with no smaller fix)."""
    by_size = sorted(profiles().values(), key=lambda pr: -model(pr.model_id).params_b)
    for pr in by_size:
        if pr.id != cfg.vlm_profile and plan_profile(pr.id, inv, version).verdict == "fits":
            return pr.id
    return None


def _plan_problems(host: str, cfg: HostConfig, inv: Inventory, p: Plan) -> list[str]:
    head = f"{host}: profile {cfg.vlm_profile} on {inv.describe()} with vLLM {p.version.version}"
    if p.proposal:
        fix = f"{fix_text(p.proposal.changes)} ({p.proposal.reason})"
    elif cfg.wish_overrides and plan_profile(cfg.vlm_profile, inv, p.version).verdict == "fits":
        keys = [DATA_KEY_OF_WISH[k] for k in cfg.wish_overrides]
        fix = " and ".join(f"remove {k}" for k in keys) + f" (profile {cfg.vlm_profile} as shipped fits this host)"
    else:
        other = fitting_profile(cfg, inv, p.version)
        fix = (f"vlm_profile = {other!r} (the largest profile that fits this host), or a host with more GPU memory"
               if other else "a host with more GPU memory: no profile fits this one")
    if p.errors:
        out = []
        corrected = corrected_wish(p)[1] if not p.proposal else {}
        for e in p.errors:
            key = DATA_KEY_OF_WISH.get(e.key)
            where = f"data key {key!r}{cfg.where(key)}" if key else e.key
            own = {"driver": f"upgrade the NVIDIA driver to >= {p.version.min_driver} (nvidia_driver_branch = "
                             f"{p.version.min_driver.split('.')[0]!r} lets the driver stage do it), or vllm_version = "
                             "'0.8.2' with its image"}.get(e.key)
            if own is None and corrected and "as shipped fits" not in fix:
                own = f"{fix_text(corrected)} (makes it valid; it still does not fit this host: {fix})"
            out.append(f"{head} is invalid: {where}: {e.message} — fix: {own or fix}")
        return out
    reasons = "; ".join(n for n in p.notes if "KV" in n or "exceed" in n) or "the KV cache cannot hold one request"
    return [f"{head} does not fit: {reasons} — fix: {fix}"]


DOCKER_DEFAULT_ROOT = "/var/lib/docker"


def _data_root_problems(cfg: HostConfig, in_daemon_json) -> list[str]:
    """docker_data_root must be where dockerd keeps images: the disk check measures it. dockerd's own choice is
    docker_daemon_options' data-root (written by the base stage), else daemon.json's, else /var/lib/docker."""
    wanted = cfg.docker_daemon_options.get("data-root")
    actual = str(wanted or in_daemon_json or DOCKER_DEFAULT_ROOT).rstrip("/")
    if actual == cfg.docker_data_root.rstrip("/"):
        return []
    where = cfg.where("docker_data_root")
    if in_daemon_json and not wanted:
        fix = f"docker_data_root = {str(in_daemon_json)!r}"
        said = f"/etc/docker/daemon.json keeps images in {in_daemon_json}"
    else:
        fix = (f"docker_daemon_options = {{'data-root': {cfg.docker_data_root!r}}} (moves Docker's storage there), "
               f"or docker_data_root = {DOCKER_DEFAULT_ROOT!r}")
        said = f"dockerd keeps images in {actual} (daemon.json sets no data-root)"
    return [f"{cfg.host}: data key 'docker_data_root' = {cfg.docker_data_root!r}{where}: {said}, so the disk check "
            f"would measure the wrong place — fix: {fix}"]


def check(cfg: HostConfig, facts: HostFacts) -> Verdict:
    """Every reason this host cannot take its profile, each one line: "<host>: <what> — fix: <how>"."""
    host = cfg.host
    v = Verdict(weights_ready=facts.weights_ready, image_present=facts.image_present)
    dj = facts.daemon_json or {}
    if dj.get("exists") and not dj.get("valid"):
        v.problems.append(f"{host}: /etc/docker/daemon.json is not valid JSON ({dj.get('error')}) — fix: repair it; "
                          "vlmfleet merges its keys into that file and never overwrites one it cannot read")
    v.problems += _data_root_problems(cfg, (dj.get("data") or {}).get("data-root"))
    own_addresses = {ipaddress.ip_address(a) for a in facts.addresses or [] if _is_ip(a)}
    if facts.addresses is not None and cfg.binds_one_address and \
            ipaddress.ip_address(cfg.api_bind) not in own_addresses:
        own = [a for a in facts.addresses if _is_ip(a) and not ipaddress.ip_address(a).is_loopback][:4]
        v.problems.append(f"{host}: data key 'api_bind' = {cfg.api_bind!r}{cfg.where('api_bind')}: is not an "
                          f"address of this host (it has {', '.join(own) or 'only loopback'}): vLLM could not "
                          f"bind — fix: api_bind = '0.0.0.0' (every address)"
                          + (f" or api_bind = {own[0]!r}" if own else ""))
    if (facts.os_id, facts.os_version) not in SUPPORTED_OS:
        v.problems.append(f"{host}: OS {facts.os_id} {facts.os_version} is not supported — fix: use Debian 12/13 "
                          "or Ubuntu 22.04/24.04")

    if cfg.nvidia_driver_branch and os_family(facts.os_id) and not v.problems:
        try:
            v.driver = driver_plan(host, cfg.nvidia_driver_branch, os_family(facts.os_id),
                                   parse_state(facts.driver_state), parse_pci(facts.pci_text), facts.gpu_csv,
                                   facts.gpu_error, modules=cfg.nvidia_driver_modules,
                                   flavour=cfg.nvidia_kernel_flavour, os_version=facts.os_version or "",
                                   fabricmanager=cfg.nvidia_fabricmanager, cuda_repo_url=cfg.nvidia_cuda_repo_url)
        except DriverError as exc:
            v.problems.append(str(exc))
            return v
    if v.driver and facts.gpu_csv is None:
        # the driver stage installs (or reboots into) the branch: plan on what the PCI bus shows, with the
        # catalog's memory sizes; nvidia-smi's numbers replace them on the next run
        try:
            inv = parse_pci_gpus(parse_pci(facts.pci_text), cfg.gpu_interconnect)
        except InventoryError as exc:
            v.problems.append(f"{host}: GPUs: {exc}")
            return v
        return _plan_host(cfg, facts, v, inv)
    if facts.gpu_csv is None:
        branch = _branch_for(cfg)
        if facts.gpu_error:
            v.problems.append(f"{host}: nvidia-smi failed, the NVIDIA driver is not loaded or not working "
                              f"({facts.gpu_error.strip().splitlines()[0][:200]}) — fix: install or load the "
                              "driver (reboot after installing it) until `nvidia-smi` lists the GPUs, or set "
                              f"nvidia_driver_branch = {branch!r} (the driver stage installs it and reboots)")
        else:
            v.problems.append(f"{host}: no NVIDIA driver (nvidia-smi is not installed) — fix: set "
                              f"nvidia_driver_branch = {branch!r} (the driver stage installs it and reboots), or "
                              "install the NVIDIA driver on the host yourself")
        return v
    try:
        inv = parse_nvidia_smi(facts.gpu_csv, facts.gpu_topo, cfg.gpu_interconnect)
    except InventoryError as exc:
        v.problems.append(f"{host}: GPUs: {exc} — fix: check `nvidia-smi` on the host")
        return v
    if v.driver and v.driver.reboot:  # the driver it reports is the one the stage replaces
        inv = replace(inv, gpus=tuple(replace(g, driver=None) for g in inv.gpus))
    try:
        inv = select_gpus(inv, list(cfg.gpu_devices) if cfg.gpu_devices != "all" else "all")
    except InventoryError as exc:
        have = [g.index for g in inv.gpus]
        v.problems.append(f"{host}: data key 'gpu_devices' = {list(cfg.gpu_devices)!r}{cfg.where('gpu_devices')}: "
                          f"{exc} — fix: gpu_devices = {have!r} (or 'all')")
        return v
    return _plan_host(cfg, facts, v, inv)


def _branch_for(cfg: HostConfig) -> str:
    """The driver branch the host's image needs, e.g. ``"580"`` for vLLM 0.33 (for messages naming the key)."""
    return (vllm_version(cfg.vllm_version).min_driver or "580").split(".")[0]


def _plan_host(cfg: HostConfig, facts: HostFacts, v: Verdict, inv: Inventory) -> Verdict:
    """Plan the profile on the host's GPUs, then check its disks; the verdict is complete after this."""
    host = cfg.host
    v.inventory = inv

    try:
        p = plan_profile(cfg.vlm_profile, inv, vllm_version(cfg.vllm_version),
                         cfg.wish_overrides, facts.config_json, facts.config_path)
    except CatalogError as exc:
        v.problems.append(f"{host}: profile {cfg.vlm_profile}: {exc} — fix: re-fetch the weights (weights stage)")
        return v
    if p.verdict != "fits":
        v.problems += _plan_problems(host, cfg, inv, p)
    else:
        v.plan = p

    m = cfg.model
    weights_gb = cfg.weights_disk_gb or m.disk_gb * 1.05
    need_weights = 0 if facts.weights_ready else int(weights_gb * 1e9)
    need_image = 0 if facts.image_present else int(cfg.image_disk_gb * 1e9)
    if facts.free_model_dir is not None and facts.free_model_dir < need_weights:
        v.problems.append(f"{host}: {cfg.model_dir} has {facts.free_model_dir / 1e9:.1f} GB free, the weights of "
                          f"{m.id} need {need_weights / 1e9:.1f} GB — fix: free disk there, or set model_dir to a "
                          "folder on a larger disk")
    if facts.free_docker is not None and facts.free_docker < need_image:
        v.problems.append(f"{host}: {cfg.docker_data_root} has {facts.free_docker / 1e9:.1f} GB free, the image "
                          f"needs {need_image / 1e9:.0f} GB — fix: free disk there, or set docker_data_root to a "
                          "folder on a larger disk")
    if v.plan and not v.problems:
        v.summary = (f"{inv.describe()}, {p.model.id} tp {p.tp} on vLLM {p.version.version}: fits, "
                     f"{p.kv_capacity_tokens} KV tokens ({p.concurrency:.1f} x {p.max_model_len})")
        if v.driver:
            v.summary += f"; {v.driver.summary()}"
    return v
