"""What the weights stage fetches, from where, with which command: pure functions, tested by exact value."""

from __future__ import annotations

import shlex
from urllib.parse import urlparse

from .catalog import Model
from .config import MANIFEST, HostConfig

__all__ = ["MANIFEST", "source_repo", "revision", "pip_args", "fetch_command"]


def source_repo(model: Model, source: str) -> str:
    """The repository id at the source: Hugging Face's id, or ModelScope's (also the git-lfs path)."""
    return model.hf if source == "huggingface" else model.modelscope


def revision(cfg: HostConfig) -> str:
    """ModelScope names its default branch master; "main" is mapped for it."""
    rev = cfg.weights_revision
    return "master" if rev == "main" and cfg.weights_source in ("modelscope", "git-lfs") else rev


def pip_args(cfg: HostConfig) -> str:
    """--index-url (and --trusted-host for a plain-HTTP mirror)."""
    url = cfg.pip_index_url
    args = ["--index-url", url]
    if url.startswith("http://"):
        args += ["--trusted-host", urlparse(url).hostname]
    return shlex.join(args)


def fetch_command(cfg: HostConfig, check: bool = False) -> str:
    """The vlmfleet-fetch command line: paths and names only, never a token (it reads the token file)."""
    paths = cfg.paths
    args = [paths.python, paths.fetch_bin, "--source", cfg.weights_source,
            "--repo", source_repo(cfg.model, cfg.weights_source), "--revision", revision(cfg),
            "--dest", paths.weights, "--endpoint", cfg.endpoint(), "--verify", cfg.weights_verify]
    if cfg.hf_token_file:
        args += ["--token-file", paths.token_file]
    if check:
        args.append("--check")
    return shlex.join(args)
