"""Every data key the deploy reads: one documented default each, types, and validation naming host and key.

Pure Python. ``group_data/all.py`` lists the same defaults for operators to read and copy; a test keeps the two,
and the README table, equal. pyinfra merges host data > group data > all.py; ``resolve()`` sees the merged view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

STAGES = ("preflight", "base", "weights", "image", "service", "health")


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    kind: str  # str | int | float | bool | list | dict | str? (None allowed) | int? | ...
    doc: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # extra check: returns a problem or None


def _port(v: Any) -> str | None:
    return None if 1 <= int(v) <= 65535 else "must be a TCP port (1-65535)"


def _abs_path(v: Any) -> str | None:
    return None if v is None or str(v).startswith("/") else "must be an absolute path"


def _url(v: Any) -> str | None:
    return None if v is None or re.match(r"^https?://[^\s/]+", str(v)) else "must be an http(s) URL"


def _util(v: Any) -> str | None:
    return None if v is None or 0.05 <= float(v) <= 1.0 else "must be a fraction between 0.05 and 1.0"


def _stages(v: Any) -> str | None:
    bad = [s for s in v if s not in STAGES]
    return f"unknown stages {bad}; known: {', '.join(STAGES)}" if bad else None


def _gpu_devices(v: Any) -> str | None:
    if v == "all" or (isinstance(v, list) and v and all(isinstance(i, int) and i >= 0 for i in v)):
        return None
    return 'must be "all" or a list of GPU indices like [0, 1]'


SETTINGS: tuple[Setting, ...] = (
    # -- what to serve
    Setting("vlm_profile", None, "str?", "serving profile from vlmfleet/catalog/profiles.yaml; set per group "
            "(group_data/qwen7b.py: qwen7b, group_data/qwen72b_awq.py: qwen72b_awq)"),
    Setting("served_model_name", None, "str?", "name clients send as \"model\"; default: the profile's model id"),
    Setting("vllm_max_model_len", None, "int?", "override the profile's max_model_len (tokens)"),
    Setting("vllm_max_num_seqs", None, "int?", "override the profile's max_num_seqs"),
    Setting("vllm_max_num_batched_tokens", None, "int?", "override the profile's max_num_batched_tokens"),
    Setting("vllm_limit_images", None, "int?", "override images per prompt"),
    Setting("vllm_limit_videos", None, "int?", "override videos per prompt"),
    Setting("vllm_max_pixels", None, "int?", "override the largest image kept (pixels)"),
    Setting("vllm_gpu_memory_utilization", None, "float?", "override the GPU memory fraction", check=_util),
    Setting("vllm_kv_cache_dtype", None, "str?", "override the KV cache dtype (auto, fp8, ...)"),
    Setting("vllm_tensor_parallel_size", None, "int?", "override tp (default: every GPU in gpu_devices)"),
    Setting("vllm_dtype", None, "str?", "override dtype", choices=("auto", "float16", "bfloat16")),
    Setting("vllm_quantization", None, "str?", "pass --quantization (default: let vLLM detect it)"),
    Setting("vllm_enforce_eager", None, "bool?", "override --enforce-eager"),
    # -- the image
    Setting("vllm_version", "0.33.0", "str", "vLLM version the image runs (vlmfleet/catalog/vllm.yaml): decides "
            "flag syntax, defaults, the minimum driver", choices=("0.8.2", "0.33.0")),
    Setting("vllm_image", "vllm/vllm-openai:v0.33.0", "str", "image to pull and run; the seed's is "
            "egs-registry.cn-hangzhou.cr.aliyuncs.com/egs/vllm:0.8.2-pytorch2.6-cu124-20250328"),
    Setting("vllm_image_digest", None, "str?", "pin: pull and run image@sha256:...",
            check=lambda v: None if v is None or re.fullmatch(r"sha256:[0-9a-f]{64}", v) else "must be sha256:<64 hex>"),
    Setting("image_registry_mirror", None, "str?", "pull Docker Hub images through this registry host "
            "(e.g. docker.m.daocloud.io); the unit runs the mirrored reference"),
    Setting("image_disk_gb", 30, "int", "free disk the image needs under docker_data_root (vLLM images: 20-28 GB)"),
    # -- the service
    Setting("api_port", 8000, "int", "port vLLM listens on (host network)", check=_port),
    Setting("api_bind", "0.0.0.0", "str", "address vLLM binds"),
    Setting("api_key_file", None, "str?", "file ON THE CONTROL MACHINE holding the API key; uploaded to "
            "/etc/vlmfleet/<service>.env (0600) as VLLM_API_KEY, never in argv or the unit; unset: open API"),
    Setting("gpu_devices", "all", "any", 'GPUs given to the container: "all" or indices like [0, 1]', check=_gpu_devices),
    Setting("gpu_interconnect", None, "str?", "override the GPU link class for NCCL settings",
            choices=("nvlink", "pcie", "pcie_no_p2p")),
    Setting("health_deadline_s", None, "int?", "seconds to wait for a healthy server after a (re)start; default "
            "per model size: 900 up to 32B, 1800 for 72B"),
    # -- weights
    Setting("model_dir", "/srv/models", "str", "where weights live on the host (mounted read-only into the "
            "container at /models)", check=_abs_path),
    Setting("weights_source", "huggingface", "str", "where weights come from",
            choices=("huggingface", "modelscope", "git-lfs")),
    Setting("weights_revision", "main", "str", "branch, tag or commit to fetch"),
    Setting("hf_endpoint", "https://huggingface.co", "str", "Hugging Face endpoint or mirror "
            "(HF_ENDPOINT, e.g. https://hf-mirror.com)", check=_url),
    Setting("modelscope_endpoint", "https://www.modelscope.cn", "str", "ModelScope endpoint", check=_url),
    Setting("git_lfs_url", "https://www.modelscope.cn", "str", "base URL for git-lfs clones: <url>/<repo>.git",
            check=_url),
    Setting("hf_token_file", None, "str?", "file ON THE CONTROL MACHINE holding a hub token; uploaded to "
            "/etc/vlmfleet/secrets/hub-token (0600), read by the fetch tool, never in argv"),
    Setting("weights_disk_gb", None, "float?", "free disk the weights need under model_dir; default: the "
            "catalog's size on disk + 5%"),
    Setting("weights_verify", "full", "str", "full: re-hash every file on each run (a corrupted file is "
            "re-fetched); size: compare sizes only", choices=("full", "size")),
    Setting("tools_dir", "/opt/vlmfleet", "str", "pinned virtualenv and helper scripts the deploy owns",
            check=_abs_path),
    Setting("pip_index_url", "https://pypi.org/simple", "str", "Python package index for the weights tools "
            "(e.g. https://mirrors.aliyun.com/pypi/simple)", check=_url),
    Setting("huggingface_hub_version", "1.17.0", "str", "pinned huggingface_hub; 1.17.0 is the last release that "
            "resumes an interrupted download (from 1.18 each process writes its own temporary file)"),
    Setting("modelscope_version", "1.40.2", "str", "pinned modelscope"),
    # -- base
    Setting("docker_package", "docker-ce", "str", "docker-ce from Docker's apt repository, or the distro's "
            "docker.io", choices=("docker-ce", "docker.io")),
    Setting("docker_apt_url", "https://download.docker.com/linux/debian", "str", "Docker's apt repository "
            "(or a mirror of it)", check=_url),
    Setting("docker_data_root", "/var/lib/docker", "str", "where images are stored (checked for free disk)",
            check=_abs_path),
    Setting("docker_registry_mirrors", [], "list", "daemon.json registry-mirrors (merged, never clobbered)"),
    Setting("docker_insecure_registries", [], "list", "daemon.json insecure-registries (merged)"),
    Setting("docker_daemon_options", {}, "dict", "further daemon.json keys to merge in"),
    Setting("nvidia_runtime", True, "bool", "install the NVIDIA container toolkit and give containers GPUs "
            "(--gpus); off only where no GPU exists (the lab)"),
    Setting("nvidia_toolkit_apt_url", "https://nvidia.github.io/libnvidia-container/stable/deb", "str",
            "NVIDIA container toolkit apt repository", check=_url),
    # -- the run
    Setting("vlm_stages", list(STAGES), "list", "stages deploys/vlm.py runs, in order (e.g. --data "
            "vlm_stages='[\"health\"]')", check=_stages),
)

BY_KEY = {s.key: s for s in SETTINGS}
#: keys pyinfra or other deploys own: never reported as unknown
FOREIGN = re.compile(r"^(_|ssh_|winrm_|docker_ssh|chroot_|local_|hello_)")


def defaults() -> dict[str, Any]:
    return {s.key: (list(s.default) if isinstance(s.default, list) else dict(s.default)
                    if isinstance(s.default, dict) else s.default) for s in SETTINGS}


def _type_problem(s: Setting, v: Any) -> str | None:
    kind = s.kind.rstrip("?")
    if v is None:
        return None if s.kind.endswith("?") else "must be set"
    ok = {
        "str": isinstance(v, str),
        "int": isinstance(v, int) and not isinstance(v, bool),
        "float": isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": isinstance(v, bool),
        "list": isinstance(v, list),
        "dict": isinstance(v, dict),
        "any": True,
    }[kind]
    return None if ok else f"must be {kind}, got {type(v).__name__} {v!r}"


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fix: str

    def render(self, host: str) -> str:
        return f"{host}: data key {self.key!r} {self.message} — fix: {self.fix}"


def normalize(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the command-line forms: ``--data vlm_stages=image,service`` arrives as one string."""
    out = dict(data)
    if isinstance(out.get("vlm_stages"), str):
        out["vlm_stages"] = [s.strip() for s in out["vlm_stages"].split(",") if s.strip()]
    return out


def validate(data: dict[str, Any]) -> list[Problem]:
    """Problems of a host's merged data: unknown keys (with the closest known one), wrong types, bad values."""
    data = normalize(data)
    problems = []
    for key in sorted(data):
        if key in BY_KEY or FOREIGN.match(key):
            continue
        near = _closest(key)
        problems.append(Problem(key, "is not a vlmfleet setting",
                                f"did you mean {near!r}?" if near else "remove it (README lists every key)"))
    for s in SETTINGS:
        if s.key not in data:
            continue
        v = data[s.key]
        problem = _type_problem(s, v)
        if problem is None and v is not None and s.choices and v not in s.choices:
            problem = f"is {v!r}, not one of {', '.join(s.choices)}"
        if problem is None and v is not None and s.check:
            try:
                problem = s.check(v)
            except (TypeError, ValueError) as exc:
                problem = f"is malformed ({exc})"
        if problem:
            problems.append(Problem(s.key, problem, f"set it like the default: {s.key} = {s.default!r}"
                                    if s.default is not None else f"see README: {s.doc}"))
    return problems


def _closest(key: str) -> str | None:
    import difflib

    m = difflib.get_close_matches(key, BY_KEY, n=1, cutoff=0.75)
    return m[0] if m else None


def resolve(data: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the host's data (only known keys)."""
    out = defaults()
    out.update({k: v for k, v in normalize(data).items() if k in BY_KEY})
    return out


WISH_KEYS = {
    "vllm_max_model_len": "max_model_len", "vllm_max_num_seqs": "max_num_seqs",
    "vllm_max_num_batched_tokens": "max_num_batched_tokens", "vllm_limit_images": "limit_images",
    "vllm_limit_videos": "limit_videos", "vllm_max_pixels": "max_pixels",
    "vllm_gpu_memory_utilization": "gpu_memory_utilization", "vllm_kv_cache_dtype": "kv_cache_dtype",
    "vllm_tensor_parallel_size": "tp", "vllm_dtype": "dtype", "vllm_quantization": "quantization",
    "vllm_enforce_eager": "enforce_eager",
}


def wish_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """The planner overrides a host's data asks for (only those set)."""
    return {wish: settings[key] for key, wish in WISH_KEYS.items() if settings.get(key) is not None}


def image_ref(settings: dict[str, Any]) -> str:
    """The reference a host pulls and runs: through image_registry_mirror for Docker Hub images, @digest when
    pinned. ``vllm/vllm-openai:v0.33.0`` + mirror ``docker.m.daocloud.io`` -> ``docker.m.daocloud.io/vllm/...``."""
    ref = settings["vllm_image"]
    mirror = settings.get("image_registry_mirror")
    if mirror:
        first = ref.split("/", 1)[0]
        if "/" not in ref or ("." not in first and ":" not in first and first != "localhost"):  # Docker Hub
            ref = f"{mirror.rstrip('/')}/{ref}"
    if settings.get("vllm_image_digest"):
        ref = f"{ref.split('@')[0]}@{settings['vllm_image_digest']}"
    return ref
