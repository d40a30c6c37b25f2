"""Build the lab's model repositories for the hub stand-in (cache/hub): files, a git-lfs remote, an index.

Deterministic: the same inputs give the same bytes, blob ids, LFS oids and commit, so a second `lab up` reuses
them. See standins/hub_repo/README.md for what is real and what is lab-sized.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

from .config import LabConfig
from .errors import LabError

HERE = Path(__file__).resolve().parent / "standins" / "hub_repo"
BUILD_VERSION = 3
#: repo id -> (catalog config file, shard sizes in MiB). The first shard is larger than huggingface_hub's 10 MiB
#: write chunk, so a transfer killed mid-file leaves a partial file on disk to resume from.
REPOS = {
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2.5-vl-7b-instruct.config.json", (24, 6)),
    "Qwen/Qwen2.5-VL-72B-Instruct-AWQ": ("qwen2.5-vl-72b-instruct-awq.config.json", (16, 6)),
}
LFS_SUFFIXES = (".safetensors",)
GIT_ENV = {"GIT_AUTHOR_NAME": "vlmfleet lab", "GIT_AUTHOR_EMAIL": "lab@vlmfleet.invalid",
           "GIT_COMMITTER_NAME": "vlmfleet lab", "GIT_COMMITTER_EMAIL": "lab@vlmfleet.invalid",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def _stream(seed: str, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def safetensors(seed: str, tensors: dict[str, tuple[int, int]]) -> bytes:
    """A valid safetensors file of F16 tensors with deterministic bytes."""
    header, offset, blobs = {}, 0, []
    for name, (rows, cols) in tensors.items():
        size = rows * cols * 2
        header[name] = {"dtype": "F16", "shape": [rows, cols], "data_offsets": [offset, offset + size]}
        blobs.append(_stream(f"{seed}:{name}", size))
        offset += size
    header["__metadata__"] = {"format": "pt", "vlmfleet": "lab-sized placeholder weights"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def repo_files(repo: str) -> dict[str, bytes]:
    config_name, shards = REPOS[repo]
    files = {
        "config.json": (HERE / config_name).read_bytes(),
        "generation_config.json": (HERE / "generation_config.json").read_bytes(),
        "preprocessor_config.json": (HERE / "preprocessor_config.json").read_bytes(),
        "README.md": (HERE / "README.md").read_bytes(),
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    vocab = {tok: i for i, tok in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hello", "image", "ready"])}
    files["vocab.json"] = json.dumps(vocab, indent=1).encode() + b"\n"
    files["merges.txt"] = b"#version: 0.2 (lab-sized)\nh e\nl l\n"
    files["tokenizer.json"] = json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"},
    }, indent=1).encode() + b"\n"
    files["tokenizer_config.json"] = json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "errors": "replace", "split_special_tokens": False,
    }, indent=2).encode() + b"\n"
    weight_map = {}
    for i, mib in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        rows = mib * 1024 * 1024 // (2 * 1024)
        tensor = f"model.layers.{i - 1}.mlp.down_proj.weight"
        files[name] = safetensors(f"{repo}:{name}", {tensor: (rows, 1024)})
        weight_map[tensor] = name
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": sum(len(files[n]) - 0 for n in weight_map.values())}, "weight_map": weight_map},
        indent=2).encode() + b"\n"
    return files


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


def hub_root(cfg: LabConfig) -> Path:
    return cfg.cache_dir / "hub"


def _want() -> str:
    return hashlib.sha256(json.dumps([BUILD_VERSION, sorted(REPOS.items())]).encode()
                          + b"".join(p.read_bytes() for p in sorted(HERE.iterdir()))).hexdigest()


def stale(cfg: LabConfig) -> bool:
    stamp = hub_root(cfg) / "stamp"
    return not (stamp.exists() and stamp.read_text() == _want())


def build(cfg: LabConfig) -> Path:
    """Write every lab repository under cache/hub (skipped when the stamp is current); return the root."""
    root = hub_root(cfg)
    stamp = root / "stamp"
    want = _want()
    if not stale(cfg):
        return root
    shutil.rmtree(root, ignore_errors=True)
    index: dict = {}
    for repo in REPOS:
        files = repo_files(repo)
        rdir = root / "files" / repo
        for name, data in files.items():
            (rdir / name).parent.mkdir(parents=True, exist_ok=True)
            (rdir / name).write_bytes(data)
        commit = _git_remote(root, repo, files)
        index[repo] = {"commit": commit, "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "blob_id": git_blob_id(lfs_pointer(data) if name.endswith(LFS_SUFFIXES) else data),
                   "lfs": name.endswith(LFS_SUFFIXES)}
            for name, data in sorted(files.items())}}
    shutil.rmtree(root / "work", ignore_errors=True)
    (root / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    stamp.write_text(want)
    return root


def _git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    if proc.returncode != 0:
        raise LabError(f"building the lab git-lfs remote failed: git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _git_remote(root: Path, repo: str, files: dict[str, bytes]) -> str:
    """A bare repository (served over git's dumb HTTP protocol) with LFS pointers, and the LFS object store."""
    work = root / "work" / repo
    work.mkdir(parents=True)
    for name, data in files.items():
        if name.endswith(LFS_SUFFIXES):
            (work / name).write_bytes(lfs_pointer(data))
            oid = hashlib.sha256(data).hexdigest()
            obj = root / "lfs" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
        else:
            (work / name).write_bytes(data)
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", f"{repo} (vlmfleet lab)", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    bare = root / "git" / f"{repo}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    _git("update-server-info", cwd=bare)
    shutil.rmtree(work)
    return commit
