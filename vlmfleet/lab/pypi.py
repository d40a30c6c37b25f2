"""The lab's Python package mirror: real wheels from PyPI, downloaded once on this machine, served as a static
PEP 503 "simple" index (lab hosts cannot reach PyPI; production points pip_index_url at PyPI or a mirror).

Holds what the weights stage installs into its pinned virtualenv: huggingface_hub and modelscope at the versions
group_data/all.py pins, with their dependencies.
"""

from __future__ import annotations

import hashlib
import html
import re
import subprocess
import sys
from pathlib import Path

from ..config import BY_KEY
from .config import LabConfig
from .errors import LabError
from .sh import tail


def requirements() -> list[str]:
    return [f"huggingface_hub=={BY_KEY['huggingface_hub_version'].default}",
            f"modelscope=={BY_KEY['modelscope_version'].default}", "pip", "setuptools", "wheel"]


def _project(filename: str) -> str:
    name = filename.split("-")[0] if filename.endswith(".whl") else re.sub(r"-\d.*$", "", filename)
    return re.sub(r"[-_.]+", "-", name).lower()


def stale(cfg: LabConfig) -> bool:
    stamp = cfg.cache_dir / "pypi" / "stamp"
    return not (stamp.exists() and stamp.read_text() == "\n".join(requirements()))


def build(cfg: LabConfig) -> Path:
    root = cfg.cache_dir / "pypi"
    files = root / "files"
    stamp = root / "stamp"
    want = "\n".join(requirements())
    if not stale(cfg):
        return root
    files.mkdir(parents=True, exist_ok=True)
    log = root / "download.log"
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-d", str(files),
                               *requirements()], stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise LabError(f"could not download the weights tools for the lab's package mirror: {tail(log, 2)}; "
                       f"check PyPI access (full log in {log})")
    projects: dict[str, list[Path]] = {}
    for f in sorted(files.iterdir()):
        projects.setdefault(_project(f.name), []).append(f)
    simple = root / "simple"
    simple.mkdir(exist_ok=True)
    for proj, paths in projects.items():
        (simple / proj).mkdir(exist_ok=True)
        links = "\n".join(
            f'<a href="../../files/{html.escape(p.name)}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
            f"{html.escape(p.name)}</a><br>" for p in paths)
        (simple / proj / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}\n</body></html>\n")
    index = "\n".join(f'<a href="{p}/">{p}</a><br>' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{index}\n</body></html>\n")
    stamp.write_text(want)
    return root
