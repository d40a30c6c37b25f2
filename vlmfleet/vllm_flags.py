"""Check a ``vllm serve`` command line against one version's flag table (catalog/vllm-flags-<version>.json).

The tables come from tools/vllm_flags.py: 0.33.0's from its real argument parser, 0.8.2's from its source (it
no longer installs from PyPI). The parser test tier checks every rendered command with the real 0.33.0 parser;
this module is the fast, dependency-free check the planner uses for any command line (the seed's included).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

KV = re.compile(r"^\s*[A-Za-z_]+\s*=\s*\d+\s*(,\s*[A-Za-z_]+\s*=\s*\d+\s*)*$")


@lru_cache(maxsize=None)
def table(version: str) -> dict:
    from .catalog import HERE, CatalogError  # imported here: the lab's serving stand-in copies this file alone

    path = HERE / f"vllm-flags-{version}.json"
    if not path.exists():
        raise CatalogError(f"no flag table for vLLM {version} ({path}); generate it with tools/vllm_flags.py")
    return json.loads(path.read_text())


def _value_problem(flag: str, kind: str, value: str, choices: list | None) -> str | None:
    if kind == "int" and not re.fullmatch(r"-?\d+", value):
        return f"{flag} expects an integer, got {value!r}"
    if kind == "int-or-auto" and not (value == "auto" or re.fullmatch(r"-?\d+[kKmMgG]?", value)):
        return f"{flag} expects an integer or auto, got {value!r}"
    if kind == "float":
        try:
            float(value)
        except ValueError:
            return f"{flag} expects a number, got {value!r}"
    if kind == "json":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return f"{flag} expects JSON (e.g. '{{\"image\":5,\"video\":0}}'), got {value!r}"
        if not isinstance(parsed, dict):
            return f"{flag} expects a JSON object, got {value!r}"
    if kind == "kv" and not KV.match(value):
        return f"{flag} expects key=value pairs (e.g. image=5,video=0), got {value!r}"
    if choices and value not in [str(c) for c in choices]:
        return f"{flag} {value!r} is not one of: {', '.join(str(c) for c in choices)}"
    return None


def check(argv: list[str], version: str) -> list[str]:
    """Problems with ``argv`` (``["vllm", "serve", MODEL, "--flag", "value", ...]``) for vLLM ``version``."""
    return check_table(argv, table(version), version)


def check_table(argv: list[str], t: dict, version: str) -> list[str]:
    """``check`` against an already loaded flag table."""
    flags = t["flags"]
    args = list(argv)
    if args[:2] == ["vllm", "serve"]:
        args = args[2:]
    problems = []
    positional = 0
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", tok):
            positional += 1
            if positional > len(t["positional"]):
                problems.append(f"unexpected argument {tok!r}")
            i += 1
            continue
        name, eq, inline = tok.partition("=")
        spec = flags.get(name)
        if spec is None:
            problems.append(f"{name} does not exist in vLLM {version}")
            has_value = not eq and i + 1 < len(args) and not args[i + 1].startswith("-")
            i += 2 if has_value else 1
            continue
        if not spec["takes_value"]:
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(args) or (args[i + 1].startswith("--")):
                problems.append(f"{name} needs a value")
                i += 1
                continue
            value = args[i + 1]
            i += 2
        if spec["kind"] == "list":
            continue
        problem = _value_problem(name, spec["kind"], value, spec.get("choices"))
        if problem:
            problems.append(problem)
    return problems


def parse_limits(value: str) -> dict[str, int]:
    """``image=5,video=0`` (0.8.2) or ``{"image": 5, "video": 0}`` (0.10+) -> {"image": 5, "video": 0}."""
    if value.strip().startswith("{"):
        return {k: int(v) for k, v in json.loads(value).items()}
    return {k.strip(): int(v) for k, v in (part.split("=") for part in value.split(",") if part.strip())}
