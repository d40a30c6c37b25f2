"""What the weights stage fetches, from where, with which command: pure functions, tested by exact value."""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import urlparse

from .catalog import Model

TOKEN_FILE = "/etc/vlmfleet/secrets/hub-token"
#: written by vlmfleet-fetch into the checkpoint folder once every file is verified
MANIFEST = ".vlmfleet-verified.json"


def source_repo(model: Model, source: str) -> str:
    """The repository id at the source: Hugging Face's id, or ModelScope's (also the git-lfs path)."""
    return model.hf if source == "huggingface" else model.modelscope


def endpoint(settings: dict[str, Any]) -> str:
    return {"huggingface": settings["hf_endpoint"], "modelscope": settings["modelscope_endpoint"],
            "git-lfs": settings["git_lfs_url"]}[settings["weights_source"]]


def revision(settings: dict[str, Any]) -> str:
    """ModelScope names its default branch master; "main" is mapped for it."""
    rev = settings["weights_revision"]
    return "master" if rev == "main" and settings["weights_source"] in ("modelscope", "git-lfs") else rev


def dest(settings: dict[str, Any], model: Model) -> str:
    return f"{settings['model_dir'].rstrip('/')}/{model.repo_dir}"


def tools(settings: dict[str, Any]) -> dict[str, str]:
    root = settings["tools_dir"].rstrip("/")
    return {"venv": f"{root}/venv", "python": f"{root}/venv/bin/python", "fetch": f"{root}/bin/vlmfleet-fetch"}


def pip_args(settings: dict[str, Any]) -> str:
    """--index-url (and --trusted-host for a plain-HTTP mirror)."""
    url = settings["pip_index_url"]
    args = ["--index-url", url]
    if url.startswith("http://"):
        args += ["--trusted-host", urlparse(url).hostname]
    return shlex.join(args)


def fetch_command(settings: dict[str, Any], model: Model, check: bool = False) -> str:
    """The vlmfleet-fetch command line: paths and names only, never a token (it reads TOKEN_FILE)."""
    t = tools(settings)
    args = [t["python"], t["fetch"], "--source", settings["weights_source"],
            "--repo", source_repo(model, settings["weights_source"]), "--revision", revision(settings),
            "--dest", dest(settings, model), "--endpoint", endpoint(settings), "--verify", settings["weights_verify"]]
    if settings.get("hf_token_file"):
        args += ["--token-file", TOKEN_FILE]
    if check:
        args.append("--check")
    return shlex.join(args)
