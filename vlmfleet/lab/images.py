"""Build container images without a Docker engine and push them to the lab registry.

This machine runs no Docker engine; the lab hosts do. Images for the lab are assembled here from tar layers
(the cached Debian rootfs as the base, small file layers on top) and pushed with the Docker Registry HTTP API
v2 (image manifest v2, schema 2), which the Docker engine inside a lab host pulls like any other image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .config import LabConfig
from .errors import LabError
from .rootfs import ensure_debootstrap

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CREATED = "2026-01-01T00:00:00Z"  # fixed, so the same inputs give the same image digest


@dataclass(frozen=True)
class Layer:
    path: Path  # the gzip-compressed tar
    digest: str  # sha256 of the compressed bytes ("sha256:...")
    diff_id: str  # sha256 of the uncompressed tar
    size: int


@dataclass
class Image:
    """An image to push: layers bottom-up and the container config (Entrypoint, Cmd, Env, ...)."""

    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    exposed_ports: list[int] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def config_json(self) -> bytes:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": {
                "Env": self.env,
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "WorkingDir": "/",
                "ExposedPorts": {f"{p}/tcp": {} for p in self.exposed_ports},
                "Labels": self.labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": CREATED, "created_by": "vlmfleet lab images"} for _ in self.layers],
        }
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _store(cfg: LabConfig, gz: bytes, diff_id: str) -> Layer:
    digest = _sha(gz)
    path = cfg.cache_dir / "layers" / (digest.split(":")[1] + ".tar.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(gz)
    return Layer(path, digest, diff_id, len(gz))


def files_layer(cfg: LabConfig, files: dict[str, tuple[bytes, int]]) -> Layer:
    """A layer holding the given files, e.g. ``{"usr/local/bin/hello": (b"#!/bin/sh\\necho hi\\n", 0o755)}``.

    Parent folders are created (0755); timestamps and owners are fixed, so the digest depends on content only.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parents[i]) for p in files for i in range(len(Path(p).parts) - 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(files):
            data, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = gzip.compress(tar_bytes, compresslevel=6, mtime=0)
    return _store(cfg, gz, _sha(tar_bytes))


def debian_layer(cfg: LabConfig, log=print) -> Layer:
    """The pristine debootstrapped Debian (python3 included) as a base layer; converted once and cached."""
    tarball = ensure_debootstrap(cfg, log)
    index = cfg.cache_dir / "layers" / f"{tarball.name}.{tarball.stat().st_size}.json"
    if index.exists():
        meta = json.loads(index.read_text())
        layer = Layer(Path(meta["path"]), meta["digest"], meta["diff_id"], meta["size"])
        if layer.path.exists():
            return layer
    log(f"converting {tarball.name} into an image layer (once)")
    proc = subprocess.run(["zstd", "-dcq", str(tarball)], capture_output=True)
    if proc.returncode != 0:
        raise LabError(f"could not read {tarball}: {proc.stderr.decode().strip()}; run `vlmfleet lab down --purge`")
    tar_bytes = proc.stdout
    layer = _store(cfg, gzip.compress(tar_bytes, compresslevel=1, mtime=0), _sha(tar_bytes))
    index.write_text(json.dumps({"path": str(layer.path), "digest": layer.digest,
                                 "diff_id": layer.diff_id, "size": layer.size}))
    return layer


# ---- the registry HTTP API v2 ------------------------------------------------------------------------
def _blob_upload(base: str, repo: str, digest: str, data: bytes | Path) -> None:
    session = requests.Session()
    if session.head(f"{base}/v2/{repo}/blobs/{digest}", timeout=10).status_code == 200:
        return
    start = session.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=10)
    if start.status_code != 202:
        raise LabError(f"registry {base} refused an upload to {repo}: HTTP {start.status_code} {start.text[:200]}")
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    body = data.open("rb") if isinstance(data, Path) else data
    try:
        done = session.put(f"{location}{sep}digest={digest}", data=body,
                           headers={"Content-Type": "application/octet-stream"}, timeout=300)
    finally:
        if hasattr(body, "close"):
            body.close()
    if done.status_code != 201:
        raise LabError(f"registry {base} rejected blob {digest} for {repo}: HTTP {done.status_code} {done.text[:200]}")


def push(registry: str, repo: str, tag: str, image: Image) -> str:
    """Push an image to ``registry`` (e.g. ``10.77.0.1:5000``) as ``repo:tag``; return the manifest digest."""
    base = f"http://{registry}"
    try:
        for layer in image.layers:
            _blob_upload(base, repo, layer.digest, layer.path)
        config = image.config_json()
        _blob_upload(base, repo, _sha(config), config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": _sha(config)},
            "layers": [{"mediaType": LAYER_GZIP, "size": layer.size, "digest": layer.digest}
                       for layer in image.layers],
        }, separators=(",", ":")).encode()
        resp = requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest,
                            headers={"Content-Type": MANIFEST_V2}, timeout=30)
    except requests.RequestException as exc:
        raise LabError(f"lab registry {registry} unreachable ({exc.__class__.__name__}); is the lab up?") from exc
    if resp.status_code != 201:
        raise LabError(f"registry {registry} rejected manifest {repo}:{tag}: HTTP {resp.status_code} {resp.text[:200]}")
    return _sha(manifest)


def hello_image(cfg: LabConfig) -> Image:
    """A tiny image for proving Docker inside lab hosts: Debian plus a script that prints who runs it."""
    script = b"#!/bin/sh\necho \"hello from a vlmfleet lab image on $(cat /etc/debian_version), args: $*\"\n"
    return Image(
        layers=[debian_layer(cfg), files_layer(cfg, {"usr/local/bin/vlmfleet-hello": (script, 0o755)})],
        entrypoint=["/usr/local/bin/vlmfleet-hello"],
        cmd=["default"],
        labels={"org.opencontainers.image.title": "vlmfleet lab hello (a lab test image)"},
    )


STANDIN_REPO = "vlmfleet-lab/vllm-standin"


#: the message a broken release fails with (torch's, when the image needs a newer driver than the host has)
BROKEN_MESSAGE = ("RuntimeError: The NVIDIA driver on your system is too old (found version 12020). Please update "
                  "your GPU driver by downloading and installing a new version from the URL: "
                  "http://www.nvidia.com/Download/index.aspx")


def vllm_standin_image(cfg: LabConfig, version: str, broken: bool = False) -> Image:
    """The lab's serving stand-in for one vLLM version: Debian + the stand-in as /usr/local/bin/vllm, with that
    version's real flag table. Entrypoint ``vllm serve`` like the vllm/vllm-openai images. ``broken``: every
    start fails after loading (tag ``<version>-broken``: a release that fails at startup)."""
    pkg = Path(__file__).resolve().parent.parent
    files = {
        "usr/local/bin/vllm": ((pkg / "lab/standins/vllm_standin.py").read_bytes(), 0o755),
        "opt/vllm-standin/vllm_flags.py": ((pkg / "vllm_flags.py").read_bytes(), 0o644),
        f"opt/vllm-standin/vllm-flags-{version}.json": ((pkg / f"catalog/vllm-flags-{version}.json").read_bytes(), 0o644),
    }
    return Image(
        layers=[debian_layer(cfg), files_layer(cfg, files)],
        entrypoint=["vllm", "serve"],
        env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"VLLM_STANDIN_VERSION={version}",
             f"VLLM_STANDIN_GPU_MEMORY_URL={cfg.hub_url}/_standin/gpu-memory"]
        + ([f"VLLM_STANDIN_FAIL={BROKEN_MESSAGE}"] if broken else []),
        exposed_ports=[8000],
        labels={"org.opencontainers.image.title": f"vLLM {version} serving STAND-IN (vlmfleet lab, not vLLM)"},
    )


def manifest_digest(registry: str, repo: str, tag: str) -> str | None:
    """The digest the registry holds for repo:tag, or None."""
    try:
        resp = requests.head(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_V2}, timeout=5)
    except requests.RequestException:
        return None
    return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None


def push_standins(cfg: LabConfig, log=print) -> dict[str, str]:
    """Push the serving stand-in for every catalog vLLM version, and its broken twin (``<version>-broken``),
    skipped when the registry has this build."""
    from ..catalog import vllm_versions

    out = {}
    for version, broken in [(v, b) for v in vllm_versions() for b in (False, True)]:
        image = vllm_standin_image(cfg, version, broken)
        config_digest = _sha(image.config_json())
        tag = f"{version}-broken" if broken else version
        have = manifest_digest(cfg.registry, STANDIN_REPO, tag)
        marker = cfg.cache_dir / "layers" / f"standin-{tag}.config"
        if have and marker.exists() and marker.read_text() == config_digest:
            out[tag] = have
            continue
        out[tag] = push(cfg.registry, STANDIN_REPO, tag, image)
        marker.write_text(config_digest)
        log(f"pushed {cfg.registry}/{STANDIN_REPO}:{tag} ({out[tag][:19]})")
    return out
