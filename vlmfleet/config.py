"""One host's configuration: every data key with its one default, checked once, immutable; every remote path.

Pure Python (no pyinfra). pyinfra merges a host's data (``--data`` > host data > group data); ``build()`` turns
that merged dict into a :class:`HostConfig` or a list of :class:`Problem` — one per bad value, each naming the
host, the key, the value, why, and a fix that names a real key with a value that passes. Stages read nothing
else: ``cfg.api_port``, ``cfg.image_ref``, ``cfg.paths.unit_path``.

The schema below (``SETTINGS``) is the only place a default lives. ``group_data/all.py`` is the operator's file
for fleet-wide choices; ``docs/data-keys.md`` is generated from this module (``python -m vlmfleet.docs``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from . import daemon_options
from .catalog import CatalogError, Model, model, profile, profiles, vllm_version, vllm_versions
from .planner import LIMITS
from .rollout import DEFAULT_BATCHES, batch_problem

STAGES = ("preflight", "driver", "base", "weights", "image", "service", "health")

#: data keys pyinfra (or the operator's own deploys) own: never reported as unknown
FOREIGN = re.compile(r"^(_|ssh_|winrm_|docker_ssh|chroot_|local_)")

# ---- the Docker reference grammar (distribution/reference) -----------------------------------------------
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
IMAGE_REF = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$")
REGISTRY_HOST = re.compile(rf"^{_DOMAIN}$")
DIGEST = re.compile(rf"^{_DIGEST}$")


# ---- problems --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fix:
    """A change that makes a problem go away: ``set`` these keys to these values, ``unset`` those keys.

    + text: what the operator reads, e.g. ``api_port = 8000``; derived from set/unset when empty
    """

    set: Mapping[str, Any] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    text: str = ""

    def render(self) -> str:
        if self.text:
            return self.text
        parts = [f"{k} = {v!r}" for k, v in self.set.items()] + [f"remove {k}" for k in self.unset]
        return " and ".join(parts)

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in data.items() if k not in self.unset}
        out.update(self.set)
        return out


@dataclass(frozen=True)
class Problem:
    """One bad value: ``h1: data key 'api_port' = 22 (host data): is this host's SSH port — fix: api_port = 8000``."""

    key: str
    value: Any
    why: str
    fix: Fix
    source: str = ""

    def render(self, host: str) -> str:
        where = f" ({self.source})" if self.source else ""
        value = "is unset" if self.value is None else f"= {shown(self.key, self.value)}"
        return f"{host}: data key {self.key!r} {value}{where}: {_redact(self.why)} — fix: {_redact(self.fix.render())}"


_SECRETISH = re.compile(r"key|token|secret|pass|auth|cred", re.I)
_USERINFO = re.compile(r"(://)[^/@\s'\"]+@")


def _redact(text: str) -> str:
    """Credentials in URLs (``https://user:pw@host``) become ``https://***@host``."""
    return _USERINFO.sub(r"\1***@", text)


def shown(key: str, value: Any) -> str:
    """A value as a problem line shows it: never a secret. An unknown key that looks like one (``api_key``,
    ``hf_token``) shows as '<hidden>'; credentials in URLs are masked."""
    if key not in BY_KEY and _SECRETISH.search(key) and not key.endswith(("_file", "_dir")):
        return "'<hidden>'"
    return _redact(repr(value))


class Bad(Exception):
    """Raised by a check: ``why`` it is wrong and, when one can be derived from the value, a ``fixed`` value."""

    def __init__(self, why: str, fixed: Any = None):
        super().__init__(why)
        self.why = why
        self.fixed = fixed


# ---- value checks (each raises Bad) ----------------------------------------------------------------------
def _at_least(low: int | float, high: int | float, what: str = "") -> Callable[[Any], None]:
    def check(v: Any) -> None:
        if not low <= v <= high:
            raise Bad(f"must be between {low} and {high}{what}")
    return check


def _duration(v: str) -> None:
    if not re.fullmatch(r"[0-9]+(ms|s|m|h|d|w|y)", v):
        raise Bad("must be a Prometheus duration like 15d, 12h or 90m")


def _host_ports(v: list) -> None:
    for item in v:
        host, _, port = str(item).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in host:
            raise Bad(f"{item!r} is not host:port (e.g. alertmanager.example.internal:9093)")


#: a port per profile at a gateway host: the two shipped groups first, the other catalog profiles after them
DEFAULT_GATEWAY_PORTS = {"qwen7b": 8000, "qwen72b_awq": 8001, "qwen3b": 8002, "qwen7b_awq": 8003, "qwen32b": 8004,
                         "qwen32b_awq": 8005, "qwen72b": 8006}


def _gateway_ports(v: dict) -> None:
    known = _profile_choices()
    for prof, port in v.items():
        if prof not in known:
            raise Bad(f"{prof!r} is not a profile (profiles: {', '.join(known)})")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise Bad(f"the port of {prof} must be a TCP port (1-65535), not {port!r}")
    ports = [p for p in v.values()]
    dup = sorted({p for p in ports if ports.count(p) > 1})
    if dup:
        raise Bad(f"gives port {dup[0]} to more than one profile: each profile needs its own port")


def _batches(v: Any) -> None:
    why = batch_problem(v)
    if why:
        raise Bad(why, fixed=list(DEFAULT_BATCHES))


def _wish_range(field: str) -> Callable[[Any], None]:
    """The range the planner accepts for one wish field (planner.LIMITS: one table for data, CLI, planner)."""
    low, high = LIMITS[field]
    return _at_least(low, high)


def _max_model_len(v: int) -> None:
    low, high = LIMITS["max_model_len"]
    if v != -1 and not low <= v <= high:
        raise Bad(f"must be a number of tokens between {low} and {high} (or -1 for auto on vLLM 0.33)")


def _fraction(v: float) -> None:
    if not 0.05 <= v <= 1.0:
        raise Bad("must be a fraction of GPU memory between 0.05 and 1.0")


def _port(v: int) -> None:
    if not 1 <= v <= 65535:
        raise Bad("must be a TCP port (1-65535)")


_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@/-]*")
#: folders a data path may be inside of but never be: "/var/lib" is fine for docker_data_root's parent
_SHARED_FOLDERS = {"/", "/var", "/var/lib", "/opt", "/srv", "/home", "/root", "/tmp", "/var/tmp", "/usr/local", "/mnt",
                   "/media", "/data"}
#: trees no data path may be in: the OS's own, and vlmfleet's fixed folders (CONFIG_DIR, STATE_DIR)
_SYSTEM_TREES = ("/etc", "/usr", "/boot", "/proc", "/sys", "/dev", "/run", "/bin", "/sbin", "/lib", "/lib64")


def _host_path(v: str) -> None:
    if not v.startswith("/"):
        raise Bad("must be an absolute path")
    if not _SAFE_PATH.fullmatch(v) or "//" in v:
        raise Bad("may hold only letters, digits and . _ + @ - / (it is written into the unit and shell commands)")
    if any(part == ".." for part in v.split("/")):
        raise Bad("must not contain '..'")
    p = v.rstrip("/") or "/"
    if p in _SHARED_FOLDERS or any((p + "/").startswith(f"{tree}/") for tree in (*_SYSTEM_TREES, STATE_DIR)) \
            and not p.startswith("/usr/local/"):
        raise Bad("must be a folder of its own, not a system folder or one of vlmfleet's own "
                  f"({CONFIG_DIR}, {STATE_DIR})")


def _url(v: str) -> None:
    if re.search(r"\s", v):
        raise Bad("must be a URL without spaces")
    u = urlparse(v)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise Bad("must be an http(s) URL with a host, e.g. https://hf-mirror.com",
                  fixed=f"https://{v}" if "://" not in v and v else None)
    if "@" in u.netloc:
        raise Bad("must not carry credentials: they would show in process lists and logs (a hub token goes in "
                  "hf_token_file)", fixed=f"{u.scheme}://{u.netloc.rpartition('@')[2]}{u.path}")
    if u.query or u.fragment:
        raise Bad("must not carry a query or fragment", fixed=f"{u.scheme}://{u.netloc}{u.path}")


def _bind(v: str) -> None:
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise Bad("must be an IP address this host has, e.g. 0.0.0.0 (all), 127.0.0.1 (this host only)") from None
    if ip.is_multicast or str(ip) == "255.255.255.255" or (ip.is_reserved and not ip.is_unspecified and not ip.is_loopback):
        raise Bad("must be an address of this host (not multicast, broadcast or reserved), e.g. 0.0.0.0 (all)")


def _image(v: str) -> None:
    if not v:
        raise Bad("must name an image, e.g. vllm/vllm-openai:v0.33.0")
    if not IMAGE_REF.fullmatch(v) or len(v.split("@")[0].split(":")[0]) > 255:
        raise Bad("is not a Docker image reference ([registry/]name[:tag][@sha256:...], lower-case name)",
                  fixed=v.lower() if IMAGE_REF.fullmatch(v.lower()) else None)


def _digest(v: str) -> None:
    if not DIGEST.fullmatch(v):
        raise Bad("must be sha256:<64 lower-case hex digits>, as `docker buildx imagetools inspect` prints it",
                  fixed=v.lower() if DIGEST.fullmatch(v.lower()) else None)


def _registry(v: str) -> None:
    if "://" in v:
        host = urlparse(v).netloc
        raise Bad("must be a registry host name (no scheme): the unit runs <mirror>/<image>",
                  fixed=host if REGISTRY_HOST.fullmatch(host) else None)
    if not REGISTRY_HOST.fullmatch(v):
        raise Bad("must be a registry host name like docker.m.daocloud.io or 10.0.0.5:5000",
                  fixed=v.strip().strip("/") if REGISTRY_HOST.fullmatch(v.strip().strip("/")) else None)


def _mirror_urls(v: list) -> None:
    for i, u in enumerate(v):
        if not isinstance(u, str):
            raise Bad(f"item {i} must be a URL string")
        try:
            _url(u)
        except Bad as exc:
            raise Bad(f"item {u!r} {exc.why} (dockerd wants https://host)", fixed=_repaired_urls(v)) from None


def _repaired_urls(v: list) -> list | None:
    """The mirror list with each bad URL repaired where that is obvious (a scheme added), else left out."""
    out = []
    for x in v:
        for candidate in (x, f"https://{x}" if isinstance(x, str) and x and "://" not in x else None):
            try:
                if isinstance(candidate, str):
                    _url(candidate)
                    out.append(candidate)
                    break
            except Bad:
                continue
    return out if out != v else None


def _insecure(v: list) -> None:
    for u in v:
        if not isinstance(u, str):
            raise Bad(f"item {u!r} must be a string host:port or CIDR")
        try:
            ipaddress.ip_network(u, strict=False)
            continue
        except ValueError:
            pass
        if not REGISTRY_HOST.fullmatch(u):
            fixed = [urlparse(x).netloc if isinstance(x, str) and "://" in x else x for x in v]
            raise Bad(f"item {u!r} must be a registry host:port (no scheme) or a CIDR",
                      fixed=fixed if fixed != v else None)


def _name(v: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", v):
        raise Bad("must be a non-empty name of letters, digits and . _ : / - (what clients send as \"model\")")


def _revision(v: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", v) or ".." in v:
        raise Bad("must be a branch, tag or commit (letters, digits, . _ / -)")


def _version(v: str) -> None:
    if not re.fullmatch(r"\d+(\.\d+)+([a-z]+\d*)?", v):
        raise Bad("must be a release number like 1.17.0")


def _gpu_devices(v: Any) -> None:
    if v == "all":
        return
    if not isinstance(v, list) or not v or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise Bad('must be "all" or a non-empty list of GPU indices like [0, 1]')
    if any(i < 0 for i in v):
        raise Bad("GPU indices are >= 0", fixed=sorted({i for i in v if i >= 0}) or "all")
    if len(set(v)) != len(v):
        raise Bad("names a GPU twice", fixed=sorted(set(v)))


def _stages(v: list) -> None:
    if not v:
        raise Bad("must name at least one stage (an empty list would run nothing, or everything)",
                  fixed=list(STAGES))
    bad = [s for s in v if s not in STAGES]
    if bad:
        raise Bad(f"names unknown stages {bad}; known: {', '.join(STAGES)}", fixed=[s for s in v if s in STAGES] or list(STAGES))
    if len(set(v)) != len(v):
        raise Bad("names a stage twice", fixed=[s for s in STAGES if s in v])


#: daemon.json keys vlmfleet manages through its own data keys
_DAEMON_OWNED = {"registry-mirrors": "docker_registry_mirrors", "insecure-registries": "docker_insecure_registries"}


def _daemon_options(v: dict) -> None:
    bad = [k for k in v if not isinstance(k, str)]
    if bad:
        raise Bad(f"keys must be strings, got {bad}")
    try:
        json.dumps(v)
    except (TypeError, ValueError) as exc:
        raise Bad(f"must be JSON-serialisable ({exc})") from None
    for key, own in _DAEMON_OWNED.items():
        if key in v:
            raise Bad(f"sets {key!r}, which vlmfleet manages through the data key {own}",
                      fixed={k: x for k, x in v.items() if k != key})
    runtimes = v.get("runtimes")
    if runtimes is not None:
        if not isinstance(runtimes, dict) or not all(isinstance(r, dict) for r in runtimes.values()):
            raise Bad("'runtimes' must map names to objects like {\"path\": ...}: a string would replace the NVIDIA "
                      "runtime", fixed={k: x for k, x in v.items() if k != "runtimes"})
        if "nvidia" in runtimes:
            raise Bad("'runtimes.nvidia' is installed by nvidia-ctk (nvidia_runtime); do not set it here",
                      fixed={k: x for k, x in v.items() if k != "runtimes"})
    for key, why in daemon_options.problems(v):
        raise Bad(f"{key!r} {why}", fixed={k: x for k, x in v.items() if k != key})


def _driver_branch(v: str) -> None:
    if not re.fullmatch(r"[1-9]\d{2}", str(v)):
        raise Bad("must be a driver branch: three digits such as '580'",
                  fixed=str(v).split(".")[0] if re.fullmatch(r"[1-9]\d{2}(\.\d+)*", str(v)) else None)


def _flavour(v: str) -> None:
    if not re.fullmatch(r"auto|[a-z0-9][a-z0-9.+-]*", v):
        raise Bad("must be 'auto' or a kernel flavour such as 'generic' or 'aws'", fixed="auto")


def _repo_url(v: str) -> None:
    if v == "auto":
        return
    unknown = set(re.findall(r"{([^}]*)}", v)) - {"distro", "arch"}
    if unknown:
        raise Bad(f"names {', '.join('{' + u + '}' for u in sorted(unknown))}: only {{distro}} and {{arch}} are "
                  "filled in")
    _url(v.replace("{distro}", "debian12").replace("{arch}", "x86_64"))


def _fingerprint(v: str) -> None:
    if v == "auto":
        return
    if not re.fullmatch(r"[0-9A-F]{40}", v):
        compact = re.sub(r"\s", "", v).upper()
        raise Bad("must be 'auto' or a full OpenPGP fingerprint: 40 hex digits, upper case, no spaces",
                  fixed=compact if re.fullmatch(r"[0-9A-F]{40}", compact) else "auto")


def _auto_or_bool(v: Any) -> None:
    if v != "auto" and not isinstance(v, bool):
        raise Bad("must be 'auto', true or false", fixed="auto")


# ---- the schema ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One data key.

    + kind: str | int | float | bool | list | dict | any, "?" appended when None (unset) is allowed
    + example: a value that passes every check, shown in docs/data-keys.md for a key that is unset by default
    """

    key: str
    default: Any
    kind: str
    doc: str
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None
    example: Any = None
    dangerous: bool = False



def _profile_choices() -> tuple[str, ...]:
    return tuple(profiles())


def _version_choices() -> tuple[str, ...]:
    return tuple(vllm_versions())


SETTINGS: tuple[Setting, ...] = (
    # -- what to serve
    Setting("vlm_profile", None, "str?", "serving profile from vlmfleet/catalog/profiles.yaml; set per group "
            "(group_data/qwen7b.py: qwen7b, group_data/qwen72b_awq.py: qwen72b_awq)", example="qwen7b",
            choices=_profile_choices()),
    Setting("served_model_name", None, "str?", "name clients send as \"model\"; default: the profile's model id",
            check=_name, example="qwen2.5-vl-7b-instruct"),
    Setting("vllm_max_model_len", None, "int?", "override the profile's max_model_len (tokens; -1: the largest "
            "that fits, vLLM 0.33 only)", check=_max_model_len, example=32768),
    Setting("vllm_max_num_seqs", None, "int?", "override the profile's max_num_seqs (concurrent sequences)",
            check=_wish_range("max_num_seqs")),
    Setting("vllm_max_num_batched_tokens", None, "int?", "override the profile's max_num_batched_tokens "
            "(>= max_num_seqs)", check=_wish_range("max_num_batched_tokens")),
    Setting("vllm_limit_images", None, "int?", "override images per prompt (0: none)",
            check=_wish_range("limit_images")),
    Setting("vllm_limit_videos", None, "int?", "override videos per prompt (0: none)",
            check=_wish_range("limit_videos")),
    Setting("vllm_max_pixels", None, "int?", "override the largest image kept (pixels; 784 per token, at least "
            "3136)", check=_wish_range("max_pixels")),
    Setting("vllm_gpu_memory_utilization", None, "float?", "override the GPU memory fraction", check=_fraction,
            example=0.9),
    Setting("vllm_kv_cache_dtype", None, "str?", "override the KV cache dtype (auto, fp8, ...; the version's "
            "list in vlmfleet/catalog/vllm.yaml)", example="auto"),
    Setting("vllm_tensor_parallel_size", None, "int?", "override tp (default: every GPU in gpu_devices)",
            check=_wish_range("tp")),
    Setting("vllm_dtype", None, "str?", "override dtype", choices=("auto", "float16", "bfloat16"), example="auto"),
    Setting("vllm_quantization", None, "str?", "pass --quantization (default: let vLLM detect it; only for AWQ "
            "checkpoints)", choices=("awq", "awq_marlin"), example="awq_marlin"),
    Setting("vllm_enforce_eager", None, "bool?", "override --enforce-eager", example=False),
    # -- the image
    Setting("vllm_version", "0.33.0", "str", "vLLM version the image runs (vlmfleet/catalog/vllm.yaml): decides "
            "flag syntax, defaults, the minimum driver", choices=_version_choices()),
    Setting("vllm_image", "vllm/vllm-openai:v0.33.0", "str", "image to pull and run; the seed's is "
            "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328", check=_image),
    Setting("vllm_image_digest", None, "str?", "pin: pull and run image@sha256:...", check=_digest,
            example="sha256:" + "0" * 64),
    Setting("image_registry_mirror", None, "str?", "pull Docker Hub images through this registry host "
            "(e.g. docker.m.daocloud.io); the unit runs the mirrored reference", check=_registry,
            example="docker.m.daocloud.io"),
    Setting("image_disk_gb", 30, "float", "free disk the image needs under docker_data_root (vLLM images: "
            "20-28 GB)", check=_at_least(0.1, 10000)),
    # -- the service
    Setting("api_port", 8000, "int", "port vLLM listens on (host network); not the SSH port", check=_port),
    Setting("api_bind", "0.0.0.0", "str", "address vLLM binds (an IP address)", check=_bind),
    Setting("api_key_file", None, "str?", "file ON THE CONTROL MACHINE holding the API key; uploaded to "
            "/etc/vlmfleet/secrets/<service>.env (0600) as VLLM_API_KEY, never in argv or the unit. Required when "
            "api_bind is not loopback", example="secrets/api-key"),
    Setting("api_allow_unauthenticated", False, "bool", "DANGEROUS: serve without an API key on a non-loopback "
            "address (anyone who reaches the port can use the GPUs); only for a network you fully control",
            dangerous=True),
    Setting("gpu_devices", "all", "any", 'GPUs given to the container: "all" or indices like [0, 1]',
            check=_gpu_devices),
    Setting("gpu_interconnect", None, "str?", "override the GPU link class for NCCL settings",
            choices=("nvlink", "pcie", "pcie_no_p2p"), example="pcie"),
    Setting("health_deadline_s", None, "int?", "seconds to wait for a healthy server after a (re)start; default "
            "per model size: 900 up to 32B, 1800 for 72B", check=_at_least(30, 86400), example=900),
    # -- weights
    Setting("model_dir", "/srv/models", "str", "where weights live on the host (mounted read-only into the "
            "container under /models)", check=_host_path),
    Setting("weights_source", "huggingface", "str", "where weights come from",
            choices=("huggingface", "modelscope", "git-lfs")),
    Setting("weights_revision", "main", "str", "branch, tag or commit to fetch", check=_revision),
    Setting("hf_endpoint", "https://huggingface.co", "str", "Hugging Face endpoint or mirror "
            "(HF_ENDPOINT, e.g. https://hf-mirror.com)", check=_url),
    Setting("modelscope_endpoint", "https://www.modelscope.cn", "str", "ModelScope endpoint", check=_url),
    Setting("git_lfs_url", "https://www.modelscope.cn", "str", "base URL for git-lfs clones: <url>/<repo>.git",
            check=_url),
    Setting("hf_token_file", None, "str?", "file ON THE CONTROL MACHINE holding a hub token; uploaded to "
            "/etc/vlmfleet/secrets/hub-token (0600), read by the fetch tool, never in argv",
            example="secrets/hf-token"),
    Setting("weights_disk_gb", None, "float?", "free disk the weights need under model_dir; default: the "
            "catalog's size on disk + 5%", check=_at_least(0.1, 10000), example=20.0),
    Setting("weights_verify", "full", "str", "full: re-hash every file on each run (a corrupted file is "
            "re-fetched); size: compare sizes only", choices=("full", "size")),
    Setting("tools_dir", "/opt/vlmfleet", "str", "the deploy's own folder on hosts: the pinned virtualenv, "
            "vlmfleet-fetch, vlmfleet-health", check=_host_path),
    Setting("pip_index_url", "https://pypi.org/simple", "str", "Python package index for the weights tools "
            "(e.g. https://mirrors.aliyun.com/pypi/simple)", check=_url),
    Setting("huggingface_hub_version", "1.17.0", "str", "pinned huggingface_hub; 1.17.0 is the last release that "
            "resumes an interrupted download (from 1.18 each process writes its own temporary file)",
            check=_version),
    Setting("modelscope_version", "1.40.2", "str", "pinned modelscope", check=_version),
    # -- base
    Setting("docker_package", "docker-ce", "str", "docker-ce from Docker's apt repository, or the distro's "
            "docker.io", choices=("docker-ce", "docker.io")),
    Setting("apt_timeout_s", 600, "int", "seconds one `apt-get update` may take before it is killed and tried "
            "again (3 tries; apt has been seen to hang with no traffic)", check=_at_least(10, 86400)),
    Setting("command_timeout_s", 900, "int", "seconds any one command of the deploy may take (package installs, "
            "docker and systemctl calls, facts); a host that hangs fails alone, naming the operation, and the "
            "others go on. The pull, the weights fetch, apt-get update and the health check have their own",
            check=_at_least(10, 86400)),
    Setting("pull_timeout_s", 3600, "int", "seconds `docker pull` of the vLLM image may take before it is killed "
            "(a registry that stops sending hangs it for ever)", check=_at_least(10, 86400)),
    Setting("fetch_timeout_s", 21600, "int", "seconds the weights fetch may take before it is killed (it resumes "
            "on the next run; nothing unverified is served)", check=_at_least(10, 7 * 86400)),
    Setting("docker_apt_url", "https://download.docker.com/linux/debian", "str", "Docker's apt repository "
            "(or a mirror of it)", check=_url),
    Setting("docker_data_root", "/var/lib/docker", "str", "where images are stored (checked for free disk)",
            check=_host_path),
    Setting("docker_registry_mirrors", [], "list", "daemon.json registry-mirrors, URLs like https://mirror.example "
            "(merged, never clobbered)", check=_mirror_urls),
    Setting("docker_insecure_registries", [], "list", "daemon.json insecure-registries, host:port or CIDR "
            "(merged)", check=_insecure),
    Setting("docker_daemon_options", {}, "dict", "further daemon.json keys to merge in (not the keys vlmfleet "
            "manages: registry-mirrors, insecure-registries, runtimes.nvidia; a data-root must equal docker_data_root)", check=_daemon_options),
    Setting("nvidia_runtime", True, "bool", "install the NVIDIA container toolkit and give containers GPUs "
            "(--gpus); off only where no GPU exists (the lab)"),
    Setting("nvidia_toolkit_apt_url", "https://nvidia.github.io/libnvidia-container/stable/deb", "str",
            "NVIDIA container toolkit apt repository", check=_url),
    # -- the NVIDIA driver (the driver stage, docs/driver.md): off unless nvidia_driver_branch is set
    Setting("nvidia_driver_branch", None, "str?", "NVIDIA driver branch the driver stage installs, pins (apt-mark "
            "hold) and reboots into, e.g. '580'; unset: the stage changes nothing and preflight needs a working "
            "driver. At least the image's minimum (0.33 images: 580, the 0.8.2 image: 550)", example="580",
            check=_driver_branch),
    Setting("nvidia_driver_modules", "auto", "str", "kernel modules of the driver: 'proprietary' or 'open' "
            "(NVIDIA's open GPU kernel modules, Turing and newer); a host with the other kind installed is switched "
            "(and reboots); auto: the kind installed already, else proprietary",
            choices=("auto", "proprietary", "open")),
    Setting("nvidia_kernel_flavour", "auto", "str", "Ubuntu kernel flavour of the precompiled modules "
            "(linux-modules-nvidia-<branch>-server-<flavour>), e.g. 'generic', 'aws', 'generic-hwe-24.04'; auto: "
            "from the running kernel and the installed kernel metapackage", check=_flavour),
    Setting("nvidia_cuda_repo_url", "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/{arch}/",
            "str", "NVIDIA's CUDA apt repository, the driver's source on Debian ({distro}: debian12, debian13; "
            "{arch}: x86_64, sbsa); a site mirror can stand in", check=_repo_url),
    Setting("nvidia_cuda_repo_key_url", "auto", "str", "the CUDA repository's signing key (ASCII armoured); auto: "
            "the repository's own (3bf863cc.pub; 8793F200.pub on Debian 13, which NVIDIA signs with a new key)",
            check=_repo_url),
    Setting("nvidia_cuda_repo_key_fingerprint", "auto", "str", "the pinned fingerprint of that key: a key with any "
            "other is refused; auto: NVIDIA's (EB693B3035CD5710E231E123A4B469963BF863CC; Debian 13: "
            "02182E60104FCDC26EAE1B8597A5D4CB8793F200)", check=_fingerprint),
    Setting("nvidia_fabricmanager", "auto", "any", "install and run NVIDIA's fabric manager of the driver's branch: "
            "auto (on NVSwitch systems, e.g. HGX H100 8-GPU, found from the PCI devices), true or false",
            check=_auto_or_bool),
    Setting("nvidia_reboot_timeout_s", 900, "int", "seconds a reboot into a new driver may take until SSH answers "
            "again (a bare-metal GPU server's firmware takes minutes)", check=_at_least(60, 7200)),
    # -- the run
    Setting("vlm_stages", list(STAGES), "list", "stages deploys/vlm.py runs, in order (e.g. --data "
            "vlm_stages=preflight,health)", check=_stages),
    # -- safe rollouts (docs/operations.md)
    Setting("rollout_batches", list(DEFAULT_BATCHES), "list", "servers restart in batches, each a count or a "
            "percentage of the hosts serving the same profile in this run; the last entry repeats. A batch "
            "restarts only when every host before it is healthy again; the first failure stops the rollout",
            check=_batches),
    Setting("rollout_break_lock", False, "bool", "DANGEROUS: take a host's rollout lock that another run holds "
            "(only when that run is dead: interrupted, its machine gone); the lock says who and since when",
            dangerous=True),
    Setting("startup_ladder_steps", 3, "int", "when vLLM runs out of memory at startup (its own messages in the "
            "journal), try up to this many rungs of lower memory (utilisation -0.05, max_model_len x3/4, fp8 KV) "
            "before rolling back; 0: roll back at once", check=_at_least(0, 3)),
    Setting("stop_timeout_s", 60, "int", "seconds a stopping server gets to finish in-flight requests "
            "(docker stop --time) before it is killed", check=_at_least(1, 3600)),
    # -- monitoring (deploys/monitoring.py; docs/monitoring.md)
    Setting("node_exporter_port", 9100, "int", "port of Prometheus' node exporter on every host (Debian's "
            "prometheus-node-exporter)", check=_port),
    Setting("dcgm_exporter_image", "nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04", "str", "NVIDIA's "
            "DCGM exporter image, run on every host with nvidia_runtime (GPU memory, temperature, utilisation)",
            check=_image),
    Setting("dcgm_exporter_port", 9400, "int", "port of the DCGM exporter on GPU hosts", check=_port),
    Setting("prometheus_port", 9090, "int", "port of Prometheus on monitoring hosts", check=_port),
    Setting("prometheus_retention", "15d", "str", "how long Prometheus keeps samples (--storage.tsdb.retention"
            ".time)", check=_duration),
    Setting("scrape_interval_s", 15, "int", "seconds between scrapes of every target", check=_at_least(1, 3600)),
    Setting("alertmanager_urls", [], "list", "Alertmanagers Prometheus sends alerts to, host:port (none: alerts "
            "show in Prometheus only)", check=_host_ports),
    Setting("grafana_install", True, "bool", "install Grafana from grafana_apt_url on monitoring hosts (its "
            "provisioning files are written either way)"),
    Setting("grafana_apt_url", "https://apt.grafana.com", "str", "Grafana's apt repository (or a mirror of it)",
            check=_url),
    Setting("alert_requests_waiting", 10, "int", "alert when a server keeps more requests than this waiting for "
            "5 minutes", check=_at_least(0, 100000)),
    Setting("alert_kv_cache_usage", 0.9, "float", "alert when a server's KV cache stays fuller than this fraction "
            "for 5 minutes", check=_at_least(0.05, 1.0)),
    Setting("alert_ttft_p95_s", 5.0, "float", "alert when a group's 95th percentile time to first token stays "
            "above this many seconds for 10 minutes", check=_at_least(0.01, 3600)),
    Setting("alert_gpu_memory_used", 0.98, "float", "alert when a GPU's memory stays fuller than this fraction "
            "for 5 minutes (vLLM itself takes its gpu_memory_utilization)", check=_at_least(0.05, 1.0)),
    Setting("alert_gpu_temp_c", 85, "int", "alert when a GPU stays hotter than this (degrees C) for 5 minutes",
            check=_at_least(30, 120)),
    # -- the gateway (deploys/gateway.py; docs/gateway.md)
    Setting("gateway_ports", dict(DEFAULT_GATEWAY_PORTS), "dict", "port each profile's replicas answer on at a "
            "gateway host (HAProxy): {profile: port}", check=_gateway_ports),
    Setting("gateway_stats_port", 8404, "int", "port of HAProxy's stats page and Prometheus metrics (/metrics) "
            "on gateway hosts", check=_port),
    Setting("gateway_agent_port", 9101, "int", "port of the drain agent on serving hosts: HAProxy asks it whether "
            "the replica takes new requests (a rollout drains it before the restart)", check=_port),
    Setting("gateway_drain_s", 5, "int", "seconds a replica behind a gateway takes no new requests before its "
            "restart (in-flight ones then get stop_timeout_s); 0: no drain", check=_at_least(0, 600)),
)

BY_KEY = {s.key: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    """Every key's default (fresh copies of lists and dicts)."""
    return {s.key: json.loads(json.dumps(s.default)) for s in SETTINGS}


# ---- the configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemotePaths:
    """Every path vlmfleet owns on a host, derived in one place from the configuration and the profile.

    + tools_dir: ``/opt/vlmfleet`` — venv/, bin/vlmfleet-fetch, bin/vlmfleet-health, share/health-check.png
    + secrets_dir: ``/etc/vlmfleet/secrets`` (root, 0700) — <service>.env, <service>.auth, hub-token
    + state_dir: ``/var/lib/vlmfleet`` — <service>.plan.json (what the planner decided), health/<service>.json
    + weights: ``/srv/models/Qwen2.5-VL-7B-Instruct``, mounted read-only at ``/models/Qwen2.5-VL-7B-Instruct``
    + release_dir: ``/var/lib/vlmfleet/releases/vllm-qwen7b`` (0700) — candidate/, good/, previous/, state.json,
      history.jsonl (vlmfleet-release; docs/operations.md)
    + lock_file: ``/var/lib/vlmfleet/rollout.lock`` — who holds the host's rollout lock, since when
    + agent_bin / agent_state: ``/opt/vlmfleet/bin/vlmfleet-agent`` answers a gateway's HAProxy with the word in
      ``/run/vlmfleet/gateway-agent`` (``ready``, or ``drain`` while a rollout restarts the server)
    """

    tools_dir: str
    venv: str
    python: str
    fetch_bin: str
    health_bin: str
    health_image: str
    config_dir: str
    secrets_dir: str
    token_file: str
    env_file: str
    auth_file: str
    state_dir: str
    plan_file: str
    health_dir: str
    health_result: str
    unit_name: str
    unit_path: str
    weights: str
    manifest: str
    config_json: str
    container_weights: str
    release_bin: str
    release_dir: str
    candidate_dir: str
    lock_file: str
    agent_bin: str
    agent_state: str


#: written by vlmfleet-fetch into the checkpoint folder once every file is verified
MANIFEST = ".vlmfleet-verified.json"
CONFIG_DIR = "/etc/vlmfleet"
STATE_DIR = "/var/lib/vlmfleet"
UNIT_DIR = "/etc/systemd/system"
CONTAINER_MODELS = "/models"
#: the first line of every unit vlmfleet writes: how the service stage finds its own units on a host
UNIT_MARKER = "# Managed by vlmfleet"


def service_name(profile_id: str) -> str:
    """``qwen72b_awq`` -> ``vllm-qwen72b-awq`` (unit and container name)."""
    return f"vllm-{profile_id.replace('_', '-')}"


HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")


def is_docker_hub(ref: str) -> bool:
    first = ref.split("/", 1)[0]
    return "/" not in ref or first in HUB_NAMES or ("." not in first and ":" not in first and first != "localhost")


@dataclass(frozen=True)
class HostConfig:
    """A host's checked configuration: read-only attributes named like the data keys (``cfg.api_port``)."""

    host: str
    values: Mapping[str, Any]
    #: where each data key came from (``--data``, ``group qwen7b``, ...), for messages about the host's facts
    sources: Mapping[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """`` (--data)`` or empty: the source of a key, as problem lines show it."""
        return f" ({self.sources[key]})" if self.sources.get(key) else ""

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(f"HostConfig has no setting {key!r}") from None

    # -- derived values
    @property
    def model(self) -> Model:
        return model(profile(self.vlm_profile).model_id)

    @property
    def service(self) -> str:
        return service_name(self.vlm_profile)

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model.id

    @property
    def image_ref(self) -> str:
        """What the host pulls and runs: through image_registry_mirror for Docker Hub images, @digest when pinned.
        ``vllm/vllm-openai:v0.33.0`` + mirror ``docker.m.daocloud.io`` -> ``docker.m.daocloud.io/vllm/...``."""
        ref = self.vllm_image
        if self.image_registry_mirror and is_docker_hub(ref):
            first, _, rest = ref.partition("/")
            ref = f"{self.image_registry_mirror.rstrip('/')}/{rest if first in HUB_NAMES else ref}"
        if self.vllm_image_digest:
            ref = f"{ref.split('@')[0]}@{self.vllm_image_digest}"
        return ref

    @property
    def deadline_s(self) -> int:
        """Seconds the health stage waits after a (re)start: health_deadline_s, or by model size."""
        if self.health_deadline_s:
            return int(self.health_deadline_s)
        return 1800 if self.model.params_b > 40 else 900

    @property
    def binds_one_address(self) -> bool:
        """vLLM binds one address of the host (not every address, not loopback): it must be one the host has."""
        bind = ipaddress.ip_address(self.api_bind)
        return not (bind.is_unspecified or bind.is_loopback)

    @property
    def wish_overrides(self) -> dict[str, Any]:
        """The planner overrides this host's data asks for (only those set)."""
        return wish_overrides(self.values)

    @property
    def paths(self) -> RemotePaths:
        return remote_paths(self.tools_dir, self.model_dir, self.service, self.model.repo_dir)

    def endpoint(self) -> str:
        return {"huggingface": self.hf_endpoint, "modelscope": self.modelscope_endpoint,
                "git-lfs": self.git_lfs_url}[self.weights_source]


SECRETS_DIR = f"{CONFIG_DIR}/secrets"
HEALTH_DIR = f"{STATE_DIR}/health"
#: the daemon.json keys vlmfleet merged last time (the base stage takes out what it no longer wants)
DAEMON_JSON_RECORD = f"{STATE_DIR}/daemon-json-keys.json"
#: where the SSH user uploads a secret before root moves it into place (root-owned parent: no planted symlink)
UPLOAD_DIR = f"{STATE_DIR}/upload"
#: one folder per served profile: the candidate, the known-good and the previous release, state and history
RELEASES_DIR = f"{STATE_DIR}/releases"
#: one rollout at a time acts on a host
ROLLOUT_LOCK = f"{STATE_DIR}/rollout.lock"
#: what the drain agent tells a gateway (tmpfs: after a reboot it is gone, and the agent says ready)
AGENT_STATE = "/run/vlmfleet/gateway-agent"


def service_files(service: str) -> dict[str, str]:
    """The files that belong to one served profile, e.g. ``vllm-qwen7b``: its unit, env and auth files, plan
    record and health result (what a profile switch removes)."""
    return {"unit_path": f"{UNIT_DIR}/{service}.service", "env_file": f"{SECRETS_DIR}/{service}.env",
            "auth_file": f"{SECRETS_DIR}/{service}.auth", "plan_file": f"{STATE_DIR}/{service}.plan.json",
            "health_result": f"{HEALTH_DIR}/{service}.json"}


def remote_paths(tools_dir: str, model_dir: str, service: str, repo_dir: str) -> RemotePaths:
    tools = tools_dir.rstrip("/")
    weights = f"{model_dir.rstrip('/')}/{repo_dir}"
    return RemotePaths(
        tools_dir=tools, venv=f"{tools}/venv", python=f"{tools}/venv/bin/python",
        fetch_bin=f"{tools}/bin/vlmfleet-fetch", health_bin=f"{tools}/bin/vlmfleet-health",
        release_bin=f"{tools}/bin/vlmfleet-release", release_dir=f"{RELEASES_DIR}/{service}",
        candidate_dir=f"{RELEASES_DIR}/{service}/candidate", lock_file=ROLLOUT_LOCK,
        agent_bin=f"{tools}/bin/vlmfleet-agent", agent_state=AGENT_STATE,
        health_image=f"{tools}/share/health-check.png",
        config_dir=CONFIG_DIR, secrets_dir=SECRETS_DIR, token_file=f"{SECRETS_DIR}/hub-token",
        state_dir=STATE_DIR, health_dir=HEALTH_DIR, unit_name=f"{service}.service",
        weights=weights, manifest=f"{weights}/{MANIFEST}", config_json=f"{weights}/config.json",
        container_weights=f"{CONTAINER_MODELS}/{repo_dir}", **service_files(service),
    )


WISH_KEYS = {
    "vllm_max_model_len": "max_model_len", "vllm_max_num_seqs": "max_num_seqs",
    "vllm_max_num_batched_tokens": "max_num_batched_tokens", "vllm_limit_images": "limit_images",
    "vllm_limit_videos": "limit_videos", "vllm_max_pixels": "max_pixels",
    "vllm_gpu_memory_utilization": "gpu_memory_utilization", "vllm_kv_cache_dtype": "kv_cache_dtype",
    "vllm_tensor_parallel_size": "tp", "vllm_dtype": "dtype", "vllm_quantization": "quantization",
    "vllm_enforce_eager": "enforce_eager",
}
DATA_KEY_OF_WISH = {wish: key for key, wish in WISH_KEYS.items()}


def wish_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """Planner wish fields the data sets (``{"vllm_max_model_len": 16384}`` -> ``{"max_model_len": 16384}``)."""
    return {wish: values[key] for key, wish in WISH_KEYS.items() if values.get(key) is not None}


# ---- building --------------------------------------------------------------------------------------------
def normalize(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the command-line forms of ``--data``: ``vlm_stages=image,service`` and ``gpu_devices=0,1`` arrive
    as strings (``vlm_stages=`` as an empty one), ``nvidia_driver_branch=580`` as a number."""
    out = dict(data)
    stages = out.get("vlm_stages")
    if isinstance(stages, str):
        out["vlm_stages"] = [s.strip() for s in stages.split(",") if s.strip()]
    devices = out.get("gpu_devices")
    if isinstance(devices, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", devices):
        out["gpu_devices"] = [int(x) for x in devices.split(",")]
    batches = out.get("rollout_batches")
    if isinstance(batches, str):  # --data rollout_batches=1,25%,100%
        out["rollout_batches"] = [int(x) if x.strip().isdigit() else x.strip() for x in batches.split(",")
                                  if x.strip()]
    branch = out.get("nvidia_driver_branch")
    if isinstance(branch, int) and not isinstance(branch, bool):  # --data nvidia_driver_branch=580, or 580 in a file
        out["nvidia_driver_branch"] = str(branch)
    if isinstance(out.get("gpu_devices"), int) and not isinstance(out.get("gpu_devices"), bool):
        out["gpu_devices"] = [out["gpu_devices"]]
    return out


_KIND_OK = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}


def _coerce(s: Setting, v: Any) -> Any:
    """A value that passes for a wrongly typed one, when there is an obvious one ("8000" -> 8000)."""
    kind = s.kind.rstrip("?")
    try:
        if kind == "int" and isinstance(v, (str, float)) and not isinstance(v, bool) and float(v) == int(float(v)):
            return int(float(v))
        if kind == "float" and isinstance(v, str):
            return float(v)
        if kind == "bool" and isinstance(v, str) and v.lower() in ("yes", "no", "on", "off", "1", "0"):
            return v.lower() in ("yes", "on", "1")
        if kind == "bool" and isinstance(v, int) and v in (0, 1):
            return bool(v)
        if kind == "list" and isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
    except (ValueError, OverflowError):
        return None
    return None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(v: Any) -> bool:
    """A newline, tab or other control character anywhere in a value (it would break the unit or a command)."""
    if isinstance(v, str):
        return bool(_CONTROL.search(v))
    if isinstance(v, list):
        return any(_has_control(x) for x in v)
    if isinstance(v, dict):
        return any(_has_control(k) or _has_control(x) for k, x in v.items())
    return False


def _why(s: Setting, v: Any) -> tuple[str, Any] | None:
    """What is wrong with one value on its own: (why, a repaired value or None), or None when it passes."""
    kind = s.kind.rstrip("?")
    if v is None:
        return None if s.kind.endswith("?") else ("must be set", None)
    if not _KIND_OK[kind](v):
        return f"must be {'a number' if kind == 'float' else kind}, not {type(v).__name__}", _coerce(s, v)
    if _has_control(v):
        return "must not contain a newline or other control character (it would break the unit file)", None
    if s.choices and v not in s.choices:
        return f"is not one of {', '.join(map(str, s.choices))}", _closest(str(v), [str(c) for c in s.choices])
    if s.check:
        try:
            s.check(v)
        except Bad as exc:
            return exc.why, exc.fixed
    return None


def _check_value(s: Setting, v: Any) -> tuple[str, Fix] | None:
    """Type, choices and the key's own check: the problem's why and a fix that passes on its own, or None.
    The fix is the repaired value when one follows from the value itself ("8000" -> 8000, a scheme dropped);
    otherwise removing the key when it may be unset (its default applies), else the default."""
    found = _why(s, v)
    if found is None:
        return None
    why, fixed = found
    if fixed is not None and _why(s, fixed) is None:
        return why, Fix({s.key: fixed})
    if s.kind.endswith("?"):
        return why, Fix(unset=(s.key,), text=f"remove {s.key} ({_unset_means(s)})")
    return why, Fix({s.key: s.default})


def _unset_means(s: Setting) -> str:
    """What an unset optional key means, for a fix that removes it."""
    if s.key in WISH_KEYS:
        return "the profile's value applies"
    return {"served_model_name": "clients send the profile's model id", "vllm_image_digest": "the tag is pulled",
            "image_registry_mirror": "images come from their own registry",
            "health_deadline_s": "the deadline follows the model's size",
            "weights_disk_gb": "the catalog's size is checked", "gpu_interconnect": "nvidia-smi topo decides",
            "hf_token_file": "no token is sent", "api_key_file": "the server takes no key",
            "vlm_profile": "the host's profile group decides"}.get(s.key, "its default applies")


def _closest(word: str, choices: list[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return m[0] if m else None


def _secret_file(key: str, path: str) -> tuple[str, Fix] | None:
    """A secret file named in data must exist on the control machine and hold a first line."""
    unset = Fix(unset=(key,), text=f"write the secret into {path} (one line, mode 0600), or remove {key}")
    try:
        p = Path(path).expanduser()
    except RuntimeError as exc:  # ~nosuchuser/...
        return f"cannot be resolved ({exc})", unset
    try:
        if p.exists() and not p.is_file():
            return "is a folder, not a file", Fix(unset=(key,), text=f"point {key} at a one-line secret file "
                                                                      f"(not a folder), or remove {key}")
        if not p.is_file():
            return "does not exist on this (control) machine", unset
        first = p.read_text().splitlines()[0].strip() if p.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        return f"cannot be read ({exc.__class__.__name__}: {exc})", unset
    if not first:
        return "is empty: the secret goes on its first line", unset
    return None


def image_version_mismatch(image: str, version: str) -> str | None:
    """The image tag names a vLLM version other than vllm_version (e.g. ...:v0.8.2 with 0.33.0)."""
    tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
    m = re.search(r"(?<![\d.])v?(\d+\.\d+\.\d+)", tag)
    if m and m.group(1) != version:
        return m.group(1)
    return None


def build(host: str, data: Mapping[str, Any], *, sources: Mapping[str, str] | None = None, ssh_port: int = 22,
          profile_groups: Mapping[str, str] | None = None, check_files: bool = True, verify_fixes: bool = True,
          beneath: Mapping[str, Any] | None = None,
          roles: tuple[str, ...] = ()) -> tuple[HostConfig | None, list[Problem]]:
    """The host's configuration, or every problem with its data.

    + data: pyinfra's merged host data, e.g. ``host.data.dict()``; keys pyinfra owns (``ssh_*``, ``_sudo``) pass
    + sources: where each key came from, e.g. ``{"api_port": "group_data/qwen7b.py"}`` (shown in problems)
    + ssh_port: the port pyinfra reaches the host on (api_port must differ)
    + profile_groups: the host's groups that select a profile, e.g. ``{"qwen7b": "qwen7b"}`` (exactly one allowed)
    + check_files: check api_key_file / hf_token_file on this (control) machine
    + beneath: the host's data without ``--data`` (host > group > all): a bad override's fix can be to drop it
    + roles: the host's groups that give it a job besides serving, e.g. ``("monitoring", "gateway")``; such a host
      may serve nothing
    """
    data = normalize(data)
    sources = sources or {}
    problems: list[Problem] = []

    def bad(key: str, why: str, fix: Fix) -> None:
        problems.append(Problem(key, data.get(key), why, fix, sources.get(key, "")))

    for key in sorted(data):
        if key in BY_KEY or FOREIGN.match(key):
            continue
        near = _closest(key, list(BY_KEY))
        bad(key, "is not a vlmfleet setting" + (f" (did you mean {near}?)" if near else ""),
            Fix(unset=(key,), text=f"remove {key}" + (f"; if you meant {near}, set that instead ({BY_KEY[near].doc[:60]}"
                                                       "...)" if near else " (docs/data-keys.md lists every key)")))
    for s in SETTINGS:
        if s.key in data:
            found = _check_value(s, data[s.key])
            if found:
                bad(s.key, *found)
    if not problems:  # cross-checks build on sound values
        values = {**defaults(), **{k: v for k, v in data.items() if k in BY_KEY}}
        _cross_checks(values, data, bad, ssh_port, profile_groups or {}, check_files, roles)
    if problems:
        if verify_fixes:
            problems = [_verified(p, data, sources, ssh_port, profile_groups, check_files, beneath, roles)
                        for p in problems]
        return None, problems
    frozen = {k: (tuple(v) if isinstance(v, list) else MappingProxyType(dict(v)) if isinstance(v, dict) else v)
              for k, v in values.items()}
    return HostConfig(host, MappingProxyType(frozen), MappingProxyType(dict(sources))), []


def _verified(p: Problem, data: dict[str, Any], sources, ssh_port, profile_groups, check_files,
              beneath, roles=()) -> Problem:
    """The problem with a fix that really clears it. A bad ``--data`` override whose key has a sound value
    beneath (host or group data) is fixed by dropping the override; a fix whose value trips a rule between keys
    is replaced by removing the key (its default then applies) when the key may be unset."""
    def clears(fix: Fix) -> bool:
        _, left = build("?", fix.apply(data), sources=sources, ssh_port=ssh_port, profile_groups=profile_groups,
                        check_files=check_files, verify_fixes=False, roles=roles)
        return not any(q.key in (p.key, *fix.set, *fix.unset) for q in left)

    if p.source == "--data" and beneath is not None and p.key in BY_KEY:
        if p.key in beneath:
            fix = Fix({p.key: beneath[p.key]}, text=f"drop the --data {p.key}=... override (the host's data "
                      f"gives {p.key} = {beneath[p.key]!r})")
        else:
            fix = Fix(unset=(p.key,), text=f"drop the --data {p.key}=... override ({_unset_means(BY_KEY[p.key])})"
                      if BY_KEY[p.key].kind.endswith("?") else f"drop the --data {p.key}=... override (default "
                      f"{BY_KEY[p.key].default!r})")
        if clears(fix):
            return Problem(p.key, p.value, p.why, fix, p.source)
    if p.fix.text or p.key not in BY_KEY:
        return p
    if not clears(p.fix) and BY_KEY[p.key].kind.endswith("?"):
        return Problem(p.key, p.value, p.why, Fix(unset=(p.key,), text=f"remove {p.key} "
                       f"({_unset_means(BY_KEY[p.key])})"), p.source)
    return p


def _cross_checks(v: dict[str, Any], data: Mapping[str, Any], bad, ssh_port: int, profile_groups: Mapping[str, str],
                  check_files: bool, roles: tuple[str, ...] = ()) -> None:
    """Rules between keys; ``bad(key, why, fix)`` records each."""
    # -- the ports of the host's other jobs
    taken = {ssh_port: "its SSH port"} if ssh_port else {}
    if v["vlm_profile"]:
        taken[v["api_port"]] = "api_port"
        taken.setdefault(v["node_exporter_port"], "node_exporter_port")
    if "monitoring" in roles:
        if v["prometheus_port"] in taken:
            bad("prometheus_port", f"is {taken[v['prometheus_port']]} on this host", Fix({"prometheus_port": 9090
                if 9090 not in taken else 9091}))
        taken.setdefault(v["prometheus_port"], "prometheus_port")
    if v["vlm_profile"] and v["gateway_agent_port"] in taken:
        bad("gateway_agent_port", f"is {taken[v['gateway_agent_port']]} on this host: the drain agent could not "
            "listen", Fix({"gateway_agent_port": 9101 if 9101 not in taken else 9102}))
    if "gateway" in roles:
        if v["gateway_stats_port"] in taken:
            bad("gateway_stats_port", f"is {taken[v['gateway_stats_port']]} on this host: HAProxy could not bind it",
                Fix({"gateway_stats_port": 8404 if 8404 not in taken else 8405}))
        for prof, port in sorted(v["gateway_ports"].items()):
            if port in taken or port == v["gateway_stats_port"]:
                bad("gateway_ports", f"gives {prof} port {port}, which is "
                    f"{taken.get(port, 'gateway_stats_port')} on this host",
                    Fix(text=f"give {prof} a free port in gateway_ports, e.g. {max([*taken, *v['gateway_ports'].values(), 8000]) + 1}"))
    if not v["vlm_profile"] and roles and not profile_groups:
        return  # a monitoring or gateway host that serves nothing: the serving rules do not apply
    # -- a host serves one profile
    chosen = sorted(set(profile_groups.values()))
    if len(chosen) > 1:
        groups = ", ".join(f"{g} ({p})" for g, p in sorted(profile_groups.items()))
        bad("vlm_profile", f"the host is in {len(profile_groups)} profile groups: {groups}; one would win silently",
            Fix(text=f"keep the host in one of {', '.join(sorted(profile_groups))} in the inventory"))
    if not v["vlm_profile"]:
        bad("vlm_profile", "is unset: the host serves no model",
            Fix({"vlm_profile": "qwen7b"}, text="put the host in a profile group (qwen7b, qwen72b_awq) in the "
                "inventory, or set vlm_profile = 'qwen7b' in its host data"))
        return
    m = model(profile(v["vlm_profile"]).model_id)
    wish = {**profile(v["vlm_profile"]).wish, **wish_overrides(v)}
    version = vllm_version(v["vllm_version"])

    # -- the image and its version
    other = image_version_mismatch(v["vllm_image"], version.version)
    if other and other in vllm_versions():
        bad("vllm_image", f"runs vLLM {other} but vllm_version is {version.version}",
            Fix({"vllm_version": other}))
    elif other:
        bad("vllm_image", f"runs vLLM {other}, which vlmfleet has no flag table for (known: "
            f"{', '.join(vllm_versions())})", Fix({"vllm_image": BY_KEY["vllm_image"].default,
                                                   "vllm_version": BY_KEY["vllm_version"].default}))
    branch = v["nvidia_driver_branch"]
    needed = version.min_driver.split(".")[0] if version.min_driver else None
    if branch and needed and int(branch) < int(needed):
        bad("nvidia_driver_branch", f"'{branch}' is older than vLLM {version.version}'s image needs (driver >= "
            f"{version.min_driver}, CUDA {version.cuda})", Fix({"nvidia_driver_branch": needed}))
    if "@" in v["vllm_image"] and v["vllm_image_digest"]:
        bad("vllm_image", "carries a digest and vllm_image_digest pins another: pin in one place",
            Fix({"vllm_image": v["vllm_image"].split("@")[0]}))

    # -- the scheduler limits vLLM refuses
    seqs, batched = wish.get("max_num_seqs"), wish.get("max_num_batched_tokens")
    if seqs and batched and batched < seqs:
        key = "vllm_max_num_batched_tokens" if v["vllm_max_num_batched_tokens"] is not None else "vllm_max_num_seqs"
        bad(key, f"max_num_batched_tokens {batched} < max_num_seqs {seqs}: vLLM refuses to start",
            Fix({"vllm_max_num_batched_tokens": max(seqs, 2048)}) if key == "vllm_max_num_batched_tokens"
            else Fix({"vllm_max_num_seqs": batched}))
    max_len = wish.get("max_model_len")
    if max_len == -1 and not version.memory.max_model_len_auto:
        bad("vllm_max_model_len", f"-1 (auto) needs vLLM 0.14 or later; vllm_version is {version.version}",
            Fix({"vllm_max_model_len": 8192}))
    elif max_len and max_len > m.text.max_position_embeddings:
        bad("vllm_max_model_len", f"exceeds {m.id}'s max_position_embeddings {m.text.max_position_embeddings}",
            Fix({"vllm_max_model_len": 32768}))
    if v["vllm_kv_cache_dtype"] is not None and v["vllm_kv_cache_dtype"] not in version.kv_cache_dtypes:
        bad("vllm_kv_cache_dtype", f"is not a KV cache dtype of vLLM {version.version} (choices: "
            f"{', '.join(version.kv_cache_dtypes)})", Fix({"vllm_kv_cache_dtype": "auto"}))
    if v["vllm_quantization"] and m.quantization != "awq":
        bad("vllm_quantization", f"{m.hf} is not a quantized checkpoint ({m.torch_dtype}): vLLM fails to load it",
            Fix(unset=("vllm_quantization",), text="remove vllm_quantization (or pick an AWQ profile, e.g. "
                "vlm_profile = 'qwen7b_awq')"))
    devices = v["gpu_devices"]
    tp = v["vllm_tensor_parallel_size"]
    if isinstance(devices, list) and tp and tp > len(devices):
        bad("vllm_tensor_parallel_size", f"{tp} GPUs, but gpu_devices gives the container {len(devices)}",
            Fix({"vllm_tensor_parallel_size": len(devices)}))

    # -- the service
    if v["api_port"] == ssh_port:
        bad("api_port", f"is this host's SSH port (ssh_port {ssh_port}): vLLM would fail to bind, or lock you out",
            Fix({"api_port": 8000 if ssh_port != 8000 else 8001}))
    if check_files:
        for key in ("api_key_file", "hf_token_file"):
            if v[key]:
                found = _secret_file(key, v[key])
                if found:
                    bad(key, *found)
    if not v["api_key_file"] and not v["api_allow_unauthenticated"] and not ipaddress.ip_address(v["api_bind"]).is_loopback:
        bad("api_key_file", f"api_bind {v['api_bind']} serves beyond this host without a key: anyone who "
            f"reaches port {v['api_port']} could use the GPUs",
            Fix({"api_bind": "127.0.0.1"}, text="set api_key_file = 'secrets/api-key' (a one-line key file on this "
                "machine), or api_bind = '127.0.0.1' (this host only); api_allow_unauthenticated = True opens it "
                "on purpose (dangerous)"))

    # -- paths that must not overlap
    for a, b in (("model_dir", "tools_dir"), ("model_dir", "docker_data_root"), ("tools_dir", "docker_data_root")):
        pa, pb = v[a].rstrip("/") + "/", v[b].rstrip("/") + "/"
        if pa.startswith(pb) or pb.startswith(pa):
            blame, other = (b, a) if b in data and a not in data else (a, b)
            fix = {blame: BY_KEY[blame].default}
            if v[other] != BY_KEY[other].default:
                fix[other] = BY_KEY[other].default
            bad(blame, f"overlaps {other} ({v[other]}): each folder has one owner", Fix(fix))

    # -- daemon.json: the runtime vlmfleet needs
    opts = v["docker_daemon_options"]
    if "data-root" in opts and str(opts["data-root"]).rstrip("/") != v["docker_data_root"].rstrip("/"):
        bad("docker_data_root", f"differs from docker_daemon_options' data-root {opts['data-root']!r}: the disk "
            "check would look in the wrong place", Fix({"docker_data_root": str(opts["data-root"])}))
    if not v["nvidia_runtime"] and opts.get("default-runtime") == "nvidia":
        bad("docker_daemon_options", "sets default-runtime nvidia while nvidia_runtime is off: dockerd would fail "
            "to start", Fix({"docker_daemon_options": {k: x for k, x in opts.items() if k != "default-runtime"}}))


def config_for(host: str, data: Mapping[str, Any], **kwargs) -> HostConfig:
    """A configuration that must be valid (tests, tools): raises ValueError with every problem otherwise."""
    cfg, problems = build(host, data, **kwargs)
    if cfg is None:
        raise ValueError("\n".join(p.render(host) for p in problems))
    return cfg


__all__ = ["BY_KEY", "SETTINGS", "STAGES", "HostConfig", "Problem", "Fix", "RemotePaths", "build", "config_for",
           "defaults", "normalize", "remote_paths", "service_name", "CatalogError"]
