"""The catalog: models, GPUs and vLLM versions, read from the YAML files beside this module.

Pure Python (no pyinfra). Every lookup failure is a CatalogError naming what was asked for and what exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GIB = 1024**3
MIB = 1024**2


class CatalogError(ValueError):
    """A catalog lookup or a config.json that cannot be used; the message says what to do."""


# ---- models ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextArch:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    max_position_embeddings: int


@dataclass(frozen=True)
class VisionArch:
    depth: int
    hidden: int
    heads: int
    intermediate: int
    patch: int
    temporal_patch: int
    spatial_merge: int
    out_hidden: int

    @property
    def pixels_per_token(self) -> int:
        """Pixels of one LLM token: (patch x merge)^2 = 28 x 28 = 784 for Qwen2.5-VL."""
        return (self.patch * self.spatial_merge) ** 2


@dataclass(frozen=True)
class AwqConfig:
    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    version: str = "gemm"
    modules_to_not_convert: tuple[str, ...] = ("visual",)


@dataclass(frozen=True)
class Model:
    id: str
    hf: str
    modelscope: str
    quantization: str | None  # None or "awq"
    torch_dtype: str
    text: TextArch
    vision: VisionArch
    params_b: float
    disk_gb: float
    awq: AwqConfig | None = None
    verify: tuple[str, ...] = ()  # fields still unconfirmed by a real config.json
    source: str = "catalog"  # "catalog" or the path of the config.json that filled it

    @property
    def repo_dir(self) -> str:
        """The checkpoint's folder name on hosts and in containers: ``Qwen2.5-VL-7B-Instruct``."""
        return self.hf.split("/")[-1]


def _model_from(entry_id: str, raw: dict[str, Any]) -> Model:
    awq = raw.get("awq")
    return Model(
        id=entry_id,
        hf=raw["hf"],
        modelscope=raw["modelscope"],
        quantization=raw.get("quantization"),
        torch_dtype=raw["torch_dtype"],
        text=TextArch(**raw["text"]),
        vision=VisionArch(**raw["vision"]),
        params_b=float(raw["params_b"]),
        disk_gb=float(raw["disk_gb"]),
        awq=AwqConfig(**{**awq, "modules_to_not_convert": tuple(awq["modules_to_not_convert"])}) if awq else None,
        verify=tuple(raw.get("verify", ())),
    )


@lru_cache(maxsize=None)
def _load(name: str) -> dict[str, Any]:
    with (HERE / name).open() as fh:
        return yaml.safe_load(fh)


def models() -> dict[str, Model]:
    return {k: _model_from(k, v) for k, v in _load("models.yaml")["models"].items()}


def model(model_id: str) -> Model:
    """A catalog model by id (``qwen2.5-vl-7b-instruct``) or by its Hugging Face / ModelScope repo id."""
    all_models = models()
    key = model_id.strip().lower()
    for m in all_models.values():
        if key in (m.id, m.hf.lower(), m.modelscope.lower()):
            return m
    raise CatalogError(f"unknown model {model_id!r}; known: {', '.join(all_models)}")


def model_with_config(base: Model, config: dict[str, Any], source: str) -> Model:
    """The catalog entry with every architecture number that config.json has replaced by config.json's value.

    + config: a parsed Qwen2.5-VL config.json (``Qwen2_5_VLForConditionalGeneration``; the text fields either at
      the top level or under ``text_config``, as transformers 4.5x writes them)
    """
    archs = config.get("architectures") or []
    if archs and not any("Qwen2_5_VL" in a for a in archs):
        raise CatalogError(f"{source}: architectures {archs} is not Qwen2.5-VL; pass the config.json of a Qwen2.5-VL checkpoint")
    text_cfg = {**config, **(config.get("text_config") or {})}
    vis = config.get("vision_config") or {}
    t = base.text
    head_dim = text_cfg.get("head_dim") or (text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
                                            if "hidden_size" in text_cfg and "num_attention_heads" in text_cfg else t.head_dim)
    text = TextArch(
        layers=int(text_cfg.get("num_hidden_layers", t.layers)),
        hidden=int(text_cfg.get("hidden_size", t.hidden)),
        heads=int(text_cfg.get("num_attention_heads", t.heads)),
        kv_heads=int(text_cfg.get("num_key_value_heads", t.kv_heads)),
        head_dim=int(head_dim),
        intermediate=int(text_cfg.get("intermediate_size", t.intermediate)),
        vocab=int(text_cfg.get("vocab_size", t.vocab)),
        tie_embeddings=bool(config.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", t.tie_embeddings))),
        max_position_embeddings=int(text_cfg.get("max_position_embeddings", t.max_position_embeddings)),
    )
    v = base.vision
    vision = VisionArch(
        depth=int(vis.get("depth", v.depth)),
        hidden=int(vis.get("hidden_size", v.hidden)),
        heads=int(vis.get("num_heads", v.heads)),
        intermediate=int(vis.get("intermediate_size", v.intermediate)),
        patch=int(vis.get("patch_size", v.patch)),
        temporal_patch=int(vis.get("temporal_patch_size", v.temporal_patch)),
        spatial_merge=int(vis.get("spatial_merge_size", v.spatial_merge)),
        out_hidden=int(vis.get("out_hidden_size", v.out_hidden)),
    )
    qc = config.get("quantization_config") or text_cfg.get("quantization_config")
    quant = base.quantization
    awq = base.awq
    if qc:
        method = str(qc.get("quant_method", "")).lower()
        if method != "awq":
            raise CatalogError(f"{source}: quant_method {method!r} is not supported (vlmfleet plans bf16/fp16 and AWQ checkpoints)")
        quant = "awq"
        awq = AwqConfig(
            bits=int(qc.get("bits", 4)), group_size=int(qc.get("group_size", 128)),
            zero_point=bool(qc.get("zero_point", True)), version=str(qc.get("version", "gemm")),
            modules_to_not_convert=tuple(qc.get("modules_to_not_convert") or ()),
        )
    elif config:
        quant, awq = None, None
    dtype = str(config.get("torch_dtype") or text_cfg.get("torch_dtype") or config.get("dtype") or base.torch_dtype)
    return replace(base, text=text, vision=vision, quantization=quant, awq=awq, torch_dtype=dtype,
                   verify=(), source=source)


def load_config_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"config.json not found at {p}; pass the path of the downloaded checkpoint's config.json") from exc
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); re-fetch it") from exc


# ---- GPUs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuKind:
    id: str
    match: str
    memory_mib: int
    reserved_mib: int
    cc: str
    bf16: bool
    fp8_kv: dict[str, str]
    awq_kernel: str
    interconnect: str
    pci_ids: tuple[str, ...] = ()

    @property
    def cc_tuple(self) -> tuple[int, int]:
        major, minor = self.cc.split(".")
        return int(major), int(minor)


def gpu_kinds() -> dict[str, GpuKind]:
    out = {}
    for k, v in _load("gpus.yaml")["gpus"].items():
        out[k] = GpuKind(id=k, match=v["match"], memory_mib=int(v["memory_mib"]), reserved_mib=int(v["reserved_mib"]), cc=str(v["cc"]), bf16=bool(v["bf16"]),
                         fp8_kv={str(a): str(b) for a, b in v["fp8_kv"].items()}, awq_kernel=v["awq_kernel"],
                         interconnect=v["interconnect"], pci_ids=tuple(str(x).lower() for x in v.get("pci_ids") or ()))
    return out


def gpu_kind(name: str) -> GpuKind:
    """A GPU kind by catalog id (``T4``, ``A100-40``) or by nvidia-smi's name (``Tesla T4``, ``NVIDIA H100 80GB HBM3``)."""
    kinds = gpu_kinds()
    for k in kinds.values():
        if name.strip().lower() == k.id.lower():
            return k
    for k in kinds.values():
        if re.search(k.match, name, re.IGNORECASE):
            return k
    raise CatalogError(f"unknown GPU {name!r}; known: {', '.join(kinds)} (or nvidia-smi names like 'Tesla T4')")


# ---- vLLM versions ---------------------------------------------------------------------------------------
def version_key(version: str) -> tuple[int, ...]:
    """``0.9.0.1`` → (0, 9, 0, 1); ``v0.8.5.post1`` → (0, 8, 5): release numbers only, for range look-ups."""
    v = version.strip()
    m = VERSION_RE.fullmatch(v)
    if not m:
        raise CatalogError(f"vLLM version {version!r} is not a release number; give one like 0.8.2, 0.9.0.1 or "
                           "0.8.5.post1")
    return tuple(int(x) for x in m.group(1).split("."))


#: A vLLM release as PyPI spells it: 0.8.2, v0.33.0, 0.9.0.1, 0.8.5.post1, 0.10.1rc1 (ASCII digits only).
_N = r"(?:0|[1-9]\d*)"
VERSION_RE = re.compile(rf"v?({_N}\.{_N}\.{_N}(?:\.{_N})?)(?:\.post\d+|rc\d+|\.dev\d+)?", re.ASCII)


@dataclass(frozen=True)
class Behaviour:
    """How one vLLM version sizes memory: every ``memory:`` behaviour of catalog/vllm.yaml resolved for it.

    + version: the version asked for, e.g. ``0.9.2``
    + read: behaviour name → the vLLM file (and the range) its value was read from, for plans and docs
    """

    version: str
    engine: str  # V0 | V1: what `vllm serve` runs by default
    v0_fallback: tuple[str, ...]  # cc_below_8, kv_not_auto, fp8_kv_without_fa3
    non_torch_charged_v1: tuple[str, ...]  # of: context, cublas, nccl
    non_torch_charged_v0: tuple[str, ...]
    startup_free_check: bool
    cudagraph_charged: bool
    default_gpu_memory_utilization: float
    limit_per_modality: dict[str, int]  # per engine
    scheduler_v1: dict[str, Any]
    scheduler_v0: dict[str, Any]
    mm_dummy_seq_len: str  # max_num_batched_tokens | max_model_len
    mm_items: str  # ceil | floor | floor_per_prompt
    video_count: str  # limit | one
    dummy_counts: str  # limits | one
    mm_tie_break: str  # image | video
    video_frames_after_images: bool
    max_frames_per_video: int
    limit_mm_syntax: str  # kv | json
    auto_dtype_fallback: bool
    v0_oversized_dummy: str  # drop | keep
    max_model_len_auto: bool
    read: dict[str, str] = field(default_factory=dict)

    def non_torch_charged(self, engine: str) -> tuple[str, ...]:
        return self.non_torch_charged_v1 if engine == "V1" else self.non_torch_charged_v0


def memory_span() -> tuple[str, str]:
    span = _load("vllm.yaml")["memory_span"]
    return str(span["first"]), str(span["last"])


@lru_cache(maxsize=None)
def behaviour(version: str) -> Behaviour:
    """The memory behaviour of vLLM ``version`` (any release from memory_span's first to its last)."""
    key = version_key(version)
    first, last = memory_span()
    if not version_key(first) <= key[:3] <= version_key(last):
        raise CatalogError(f"vLLM {version} is outside the span the planner knows ({first} to {last}); "
                           f"plan with a version in it, e.g. --vllm {last}")
    values: dict[str, Any] = {}
    read: dict[str, str] = {}
    for name, changes in _load("vllm.yaml")["memory"].items():
        ordered = sorted(changes, key=lambda c: version_key(str(c["since"])))
        chosen = ordered[0]
        for c in ordered:
            if version_key(str(c["since"])) <= key:
                chosen = c
        value = chosen["value"]
        values[name] = tuple(value) if isinstance(value, list) else value
        where = chosen.get("read", "")
        read[name] = f"since {chosen['since']}" + (f": {where}" if where else "") + \
            (f" (changed between {chosen['bisect']})" if chosen.get("bisect") else "")
    values["default_gpu_memory_utilization"] = float(values["default_gpu_memory_utilization"])
    values["max_frames_per_video"] = int(values["max_frames_per_video"])
    return Behaviour(version=version.strip().lstrip("v"), read=read, **values)


@dataclass(frozen=True)
class VllmVersion:
    """A vLLM version the planner can plan. Catalog versions (``versions:`` in vllm.yaml) have images, CUDA, a
    minimum driver and a flag table; any other version in the memory span borrows those tables from the nearest
    catalog version (``tables``) and says so (``has_flag_table`` False)."""

    version: str
    cuda: str
    min_driver: str
    torch: str
    images: tuple[str, ...]
    kv_cache_dtypes: tuple[str, ...]
    removed_flags: tuple[str, ...]
    memory: Behaviour
    metrics: tuple[str, ...] = ()
    notes: str = ""
    tables: str = ""  # the catalog version whose flag table, kv dtypes, fp8 and metric lists this one uses
    has_flag_table: bool = True

    @property
    def default_gpu_memory_utilization(self) -> float:
        return self.memory.default_gpu_memory_utilization

    @property
    def counts_cudagraph_memory(self) -> bool:
        return self.memory.cudagraph_charged

    @property
    def limit_mm_syntax(self) -> str:
        return self.memory.limit_mm_syntax

    @property
    def default_max_pixels(self) -> int:
        """Qwen2.5-VL's processor default, the same in every version: 12,845,056 pixels = 16,384 tokens."""
        return 12845056


def vllm_versions() -> dict[str, VllmVersion]:
    """The catalog versions: the ones with images, a CUDA and a flag table (what a deploy can run)."""
    out = {}
    for k, v in _load("vllm.yaml")["versions"].items():
        out[str(k)] = VllmVersion(
            version=str(k), cuda=str(v["cuda"]), min_driver=str(v["min_driver"]), torch=str(v["torch"]),
            images=tuple(v["images"]), kv_cache_dtypes=tuple(v["kv_cache_dtypes"]),
            removed_flags=tuple(v.get("removed_flags", ())), memory=behaviour(str(k)),
            metrics=tuple(v["metrics"]), notes=v.get("notes", ""), tables=str(k),
        )
    return out


def vllm_version(version: str) -> VllmVersion:
    """A catalog version (``0.8.2``, ``v0.33.0``): what group data may deploy."""
    versions = vllm_versions()
    v = version.strip().lstrip("v")
    if v not in versions:
        raise CatalogError(f"vLLM {version!r} is not in the catalog; known: {', '.join(versions)}")
    return versions[v]


def planning_version(version: str) -> VllmVersion:
    """Any vLLM version the memory model spans (``0.9.2``, ``0.23.0``): a catalog version as it is, another one
    with its own memory behaviour and the flag table, kv dtypes and metrics of the nearest catalog version."""
    versions = vllm_versions()
    v = version.strip().lstrip("v")
    key = version_key(v)  # a release number, or a CatalogError saying what one looks like
    base_release = ".".join(map(str, key))  # 0.8.2.post1 -> 0.8.2 (no leading zeros: the same digits)
    if base_release in versions:  # 0.8.2 itself, or 0.8.2.post1: 0.8.2's tables under its own name
        return versions[v] if v == base_release else replace(versions[base_release], version=v)
    mem = behaviour(v)
    below = [c for c in versions if version_key(c) <= key]
    near = max(below, key=version_key) if below else min(versions, key=version_key)
    base = versions[near]
    return replace(base, version=v, cuda="", min_driver="", torch="", images=(), memory=mem, tables=near,
                   has_flag_table=False, removed_flags=(),
                   notes=f"not a catalog version: memory planned from its own behaviour; no flag table, so the "
                         f"command is rendered with {mem.limit_mm_syntax} limits and not checked; kv dtypes and "
                         f"fp8 support as in {near}")


@dataclass(frozen=True)
class Profile:
    id: str
    model_id: str
    wish: dict[str, Any]


def profiles() -> dict[str, Profile]:
    return {k: Profile(k, v["model"], dict(v.get("wish", {}))) for k, v in _load("profiles.yaml")["profiles"].items()}


def profile(profile_id: str) -> Profile:
    all_profiles = profiles()
    if profile_id not in all_profiles:
        raise CatalogError(f"unknown profile {profile_id!r}; known: {', '.join(all_profiles)}")
    return all_profiles[profile_id]


def estimates() -> dict[str, Any]:
    """What the planner estimates where vLLM measures (documented in vllm.yaml ``estimates``)."""
    raw = _load("vllm.yaml")["estimates"]
    return {k: ({kk: float(vv) for kk, vv in v.items()} if isinstance(v, dict) else float(v)) for k, v in raw.items()}


def driver_at_least(driver: str, minimum: str) -> bool:
    """Compare NVIDIA driver versions like 550.54.15 >= 550.54."""
    def parts(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", s))
    a, b = parts(driver), parts(minimum)
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)) >= b + (0,) * (n - len(b))
