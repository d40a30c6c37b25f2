"""Absolute paths to files shipped with vlmfleet (never relative to the current directory)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """The templates folder: ``vlmfleet/templates`` in an installed wheel, ``templates/`` in a checkout."""
    for candidate in (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"vlmfleet templates not found beside {PACKAGE_DIR}")


def template(relative: str) -> str:
    """Absolute path of one template, e.g. ``template("service/vllm.service.j2")``."""
    path = templates_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"vlmfleet template {relative} missing from {templates_dir()}")
    return str(path)


def render(relative: str, trim: bool = False, **values) -> str:
    """A packaged Jinja template rendered with ``values`` (a missing value is an error, never an empty string).

    + relative: e.g. ``"gateway/haproxy.cfg.j2"``
    + trim: drop the newline after a block tag and the indentation before it (templates with loops)
    """
    from jinja2 import Environment, StrictUndefined

    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=trim, lstrip_blocks=trim)
    with open(template(relative)) as fh:
        return env.from_string(fh.read()).render(**values)
