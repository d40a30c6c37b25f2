"""What the weights stage fetches, from where, with which command: pure functions, tested by exact value."""

from __future__ import annotations

import shlex
from urllib.parse import urlparse

from .catalog import Model
from .config import MANIFEST, HostConfig

__all__ = ["MANIFEST", "source_repo", "revision", "pip_args", "fetch_argv", "fetch_command"]


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


def fetch_argv(cfg: HostConfig, check: bool = False, require: bool = False, verify: str | None = None) -> list[str]:
    """The vlmfleet-fetch argv: paths and names only, never a token (it reads the token file).

    + check: only compare the folder against its verified listing (no network)
    + require: with check, exit non-zero unless the folder is verified (the unit's guard before each start)
    + verify: ``size`` or ``full``; default ``cfg.weights_verify``
    """
    paths = cfg.paths
    args = [paths.python, paths.fetch_bin, "--source", cfg.weights_source,
            "--repo", source_repo(cfg.model, cfg.weights_source), "--revision", revision(cfg),
            "--dest", paths.weights, "--endpoint", cfg.endpoint(), "--verify", verify or cfg.weights_verify]
    if cfg.hf_token_file and not check:
        args += ["--token-file", paths.token_file]
    if check:
        args.append("--check")
    if require:
        args.append("--require")
    return args


def fetch_command(cfg: HostConfig, check: bool = False) -> str:
    """``fetch_argv`` as one shell line."""
    return shlex.join(fetch_argv(cfg, check=check))
