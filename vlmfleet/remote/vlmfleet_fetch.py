#!/usr/bin/env python3
"""vlmfleet-fetch: download model weights with the real hub clients, resumably, and verify every file.

Installed by the weights stage into the deploy's pinned virtualenv and run with its python:

    vlmfleet-fetch --source huggingface --repo Qwen/Qwen2.5-VL-7B-Instruct --revision main \\
        --dest /srv/models/Qwen2.5-VL-7B-Instruct --endpoint https://hf-mirror.com [--token-file F] [--check]

Sources: huggingface (huggingface_hub.snapshot_download against --endpoint, i.e. HF_ENDPOINT; Xet is disabled
so the mirror really serves every byte), modelscope (modelscope.snapshot_download against MODELSCOPE_ENDPOINT),
git-lfs (git clone <endpoint>/<repo>.git, then git lfs pull). Interrupted downloads resume on the next run (the
clients keep partial files). Every file is then checked against the hub's own hash — the LFS sha256 / git blob
id (Hugging Face, git), ModelScope's Sha256 — and a bad file is deleted and fetched again; nothing is marked
verified until all match. The verified listing goes to DEST/.vlmfleet-verified.json.

--check (no network): compare DEST against that listing (sizes; sha256 too with --verify full) and print
{"state": "verified" | "missing" | "stale" | "corrupt", ...}; with --require it exits 3 unless verified (the
service unit runs that before every start, so a server never starts on weights that are not verified). A full
disk stops the fetch with a message naming the folder; the partial files resume on the next run. Tokens are
read from --token-file, never argv.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = ".vlmfleet-verified.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def die(msg: str) -> None:
    print(f"vlmfleet-fetch: {msg}", file=sys.stderr)
    sys.exit(1)


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        die(f"cannot read the token file {path}: {exc.strerror}")


# ---- what the hub says -------------------------------------------------------------------------------------
def expected_huggingface(args, token) -> tuple[str, dict]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=args.endpoint, token=token)
    commit = api.repo_info(args.repo, revision=args.revision).sha
    files = {}
    for f in api.list_repo_tree(args.repo, revision=commit, recursive=True):
        if isinstance(f, RepoFile):
            files[f.path] = ({"sha256": f.lfs.sha256} if f.lfs else {"git_blob": f.blob_id}) | {"size": f.size}
    return commit, files


def expected_modelscope(args, token) -> tuple[str, dict]:
    from modelscope_hub import HubApi  # the client modelscope >= 1.40 downloads with; its FileInfo has sha256
    from modelscope_hub.types import RepoType

    api = HubApi(endpoint=args.endpoint, token=token)
    listing = api.list_repo_files(args.repo, RepoType.MODEL, revision=args.revision, recursive=True)
    files = {f.path: {"sha256": f.sha256, "size": int(f.size)} for f in listing if f.type != "tree"}
    missing = [name for name, meta in files.items() if not meta["sha256"]]
    if missing:
        die(f"ModelScope at {args.endpoint} gave no Sha256 for {', '.join(missing)}: cannot verify")
    return args.revision, files


def expected_git(dest: Path) -> tuple[str, dict]:
    commit = git(dest, "rev-parse", "HEAD").strip()
    lfs = {}
    for line in git(dest, "lfs", "ls-files", "--long").splitlines():
        oid, _, name = line.split(" ", 2)
        lfs[name.strip()] = oid
    files = {}
    for line in git(dest, "ls-tree", "-r", "-l", "HEAD").splitlines():
        meta, name = line.split("\t", 1)
        _mode, _kind, blob, size = meta.split()
        files[name] = {"sha256": lfs[name]} if name in lfs else {"git_blob": blob, "size": int(size)}
    return commit, files


def git(dest: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(dest), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"git {' '.join(args)} in {dest} failed: {proc.stderr.strip()}")
    return proc.stdout


# ---- downloads ---------------------------------------------------------------------------------------------
def download_huggingface(args, token) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(args.repo, revision=args.revision, local_dir=args.dest, endpoint=args.endpoint, token=token)


def download_modelscope(args, token) -> None:
    from modelscope import snapshot_download

    snapshot_download(args.repo, revision=args.revision, local_dir=str(args.dest))


def download_git(args, token) -> None:
    dest = Path(args.dest)
    url = f"{args.endpoint.rstrip('/')}/{args.repo}.git"
    env = dict(os.environ, GIT_LFS_SKIP_SMUDGE="1", GIT_TERMINAL_PROMPT="0")
    if token:  # by environment, never argv
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Bearer {token}")
    if dest.exists() and not (dest / ".git" / "HEAD").exists():
        shutil.rmtree(dest)  # an interrupted clone: start the (small) git part again
    if not dest.exists():
        run(["git", "clone", "--quiet", "--branch", args.revision, url, str(dest)], env)
    else:
        run(["git", "-C", str(dest), "fetch", "--quiet", "origin", args.revision], env)
        run(["git", "-C", str(dest), "checkout", "--quiet", "--force", "FETCH_HEAD"], env)
    run(["git", "-C", str(dest), "lfs", "install", "--local"], env)
    run(["git", "-C", str(dest), "lfs", "pull"], env)  # resumes partial objects from .git/lfs/incomplete


def run(cmd, env) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"{' '.join(cmd[:4])} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


# ---- verification ------------------------------------------------------------------------------------------
def bad_files(dest: Path, files: dict) -> list[str]:
    bad = []
    for name, want in sorted(files.items()):
        path = dest / name
        if not path.is_file():
            bad.append(name)
        elif "sha256" in want and sha256(path) != want["sha256"]:
            bad.append(name)
        elif "git_blob" in want and git_blob_id(path) != want["git_blob"]:
            bad.append(name)
    return bad


def forget(dest: Path, name: str) -> None:
    """Delete a bad file and what the clients remember of it, so the next download fetches it again."""
    for p in (dest / name, dest / ".cache" / "huggingface" / "download" / f"{name}.metadata"):
        if p.exists():
            p.unlink()


def check(args) -> dict:
    dest = Path(args.dest)
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"state": "missing", "bad": []}
    have = [manifest.get("source"), manifest.get("repo"), manifest.get("revision")]
    # the unit's guard (--require) asks only "is this a verified copy": a release rolled back to after a revision
    # change serves the folder's revision (one folder per model), never half a fetch
    if have != [args.source, args.repo, args.revision] and not getattr(args, "require", False):
        return {"state": "stale", "bad": [], "have": have}
    bad = []
    for name, meta in manifest["files"].items():
        path = dest / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            bad.append(name)
        elif args.verify == "full" and sha256(path) != meta["sha256"]:
            bad.append(name)
    return {"state": "corrupt" if bad else "verified", "bad": bad, "commit": manifest.get("commit")}


def fetch(args) -> dict:
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    token = read_token(args.token_file)
    os.environ.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      HF_HUB_ENABLE_HF_TRANSFER="0", MODELSCOPE_ENDPOINT=args.endpoint)
    if token and args.source == "modelscope":
        os.environ["MODELSCOPE_API_TOKEN"] = token
    (dest / MANIFEST).unlink(missing_ok=True)  # not verified until the end
    t0 = time.monotonic()
    refetched: list[str] = []
    for attempt in (1, 2):
        if args.source == "git-lfs":
            download_git(args, token)
            commit, files = expected_git(dest)
        else:
            commit, files = (expected_huggingface if args.source == "huggingface" else expected_modelscope)(args, token)
            for name in bad_files(dest, files):  # a corrupt copy on disk must not pass as done
                if (dest / name).exists():
                    forget(dest, name)
                    refetched.append(name)
            (download_huggingface if args.source == "huggingface" else download_modelscope)(args, token)
        bad = bad_files(dest, files)
        if not bad:
            break
        if attempt == 2:
            die(f"{', '.join(bad)} still differ from the hub's hashes after a second download from {args.endpoint}")
        for name in bad:
            forget(dest, name)
            refetched.append(name)
        if args.source == "git-lfs":
            shutil.rmtree(dest / ".git" / "lfs" / "objects", ignore_errors=True)
    listing = {name: {"size": (dest / name).stat().st_size, "sha256": sha256(dest / name)} for name in sorted(files)}
    manifest = {"source": args.source, "repo": args.repo, "revision": args.revision, "endpoint": args.endpoint,
                "commit": commit, "files": listing, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(dest / MANIFEST)
    return {"state": "verified", "commit": commit, "files": len(listing),
            "bytes": sum(f["size"] for f in listing.values()), "refetched": sorted(set(refetched)),
            "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["huggingface", "modelscope", "git-lfs"], required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--revision", default="main")
    ap.add_argument("--dest", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--verify", choices=["full", "size"], default="full")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--require", action="store_true", help="with --check: exit 3 unless verified")
    args = ap.parse_args()
    if args.check:
        state = check(args)
        print(json.dumps(state))
        if args.require and state["state"] != "verified":
            print(f"vlmfleet-fetch: {args.dest} is not a verified copy of {args.repo}@{args.revision} (state "
                  f"{state['state']}{': ' + ', '.join(state['bad'][:5]) if state.get('bad') else ''}): refusing to "
                  "serve it — fix: run the weights stage (deploys/vlm.py), which fetches and verifies it",
                  file=sys.stderr)
            return 3
        return 0
    try:
        print(json.dumps(fetch(args)))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(args.dest).free if os.path.isdir(args.dest) else 0
            die(f"no space left on the device of {args.dest} while fetching {args.repo} ({free // 2**20} MiB free "
                "now) — fix: free disk there or set model_dir (and weights_disk_gb) to a larger disk; the partial "
                "files resume on the next run, and nothing unverified is served")
        die(f"fetching {args.repo} into {args.dest} failed: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
