#!/usr/bin/env python3
"""Write the `vllm serve` flag table of one vLLM version as JSON (vlmfleet/catalog/vllm-flags-<version>.json).

Two ways, one output format:

    # from the real parser of an installed vLLM (run with that venv's python; CPU-only is fine)
    /path/to/venv/bin/python tools/vllm_flags.py --installed > vlmfleet/catalog/vllm-flags-0.33.0.json

    # from a version's source, when it does not install here (0.8.2: its pinned xgrammar==0.1.16 is gone from
    # PyPI). Reads the wheel's arg_utils.py, cli_args.py and cli/serve.py with `ast`, never imports them.
    pip download --no-deps vllm==0.8.2 -d /tmp/whl
    python3 tools/vllm_flags.py --wheel /tmp/whl/vllm-0.8.2-cp38-abi3-manylinux1_x86_64.whl > vlmfleet/catalog/vllm-flags-0.8.2.json

Each flag: whether it takes a value, its value kind (int, float, str, json, kv, bool-optional) and its choices.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import zipfile
from pathlib import Path

SOURCES = (
    "vllm/entrypoints/cli/serve.py",
    "vllm/entrypoints/openai/cli_args.py",
    "vllm/engine/arg_utils.py",
)
# where module-level constants used as `choices=` live
CONSTANT_SOURCES = (
    "vllm/engine/arg_utils.py",
    "vllm/config.py",
    "vllm/model_executor/layers/quantization/__init__.py",
    "vllm/entrypoints/openai/cli_args.py",
    "vllm/entrypoints/chat_utils.py",
)
TYPE_KINDS = {
    "int": "int", "float": "float", "str": "str", "nullable_str": "str", "json.loads": "json",
    "nullable_kvs": "kv", "optional_int": "int", "optional_str": "str",
}


# ---- from source (ast) -------------------------------------------------------------------------------------
def _constants(texts: dict[str, str]) -> dict[str, ast.expr]:
    out: dict[str, ast.expr] = {}
    for text in texts.values():
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                out.setdefault(node.targets[0].id, node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                out.setdefault(node.target.id, node.value)
    return out


def _literal_list(node: ast.expr, consts: dict[str, ast.expr], depth: int = 0) -> list | None:
    """Resolve a choices= expression to a list, following names, [*X, None], get_args(Literal[...])."""
    if depth > 5:
        return None
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        out: list = []
        for elt in node.elts:
            if isinstance(elt, ast.Starred):
                inner = _literal_list(elt.value, consts, depth + 1)
                if inner is None:
                    return None
                out += inner
            elif isinstance(elt, ast.Constant):
                out.append(elt.value)
            else:
                return None
        return out
    if isinstance(node, ast.Name) and node.id in consts:
        return _literal_list(consts[node.id], consts, depth + 1)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("get_args", "list") and node.args:
        return _literal_list(node.args[0], consts, depth + 1)
    if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
        sl = node.slice
        return _literal_list(sl if isinstance(sl, ast.Tuple) else ast.Tuple(elts=[sl]), consts, depth + 1)
    return None


def _kind(call: ast.Call) -> tuple[bool, str]:
    kw = {k.arg: k.value for k in call.keywords}
    action = kw.get("action")
    if action is not None:
        name = ast.unparse(action).strip("'\"")
        if name in ("store_true", "store_false", "StoreBoolean"):
            return (name == "StoreBoolean"), ("bool" if name == "StoreBoolean" else "flag")
        if name.endswith("BooleanOptionalAction"):
            return False, "bool-optional"
        if name == "append":
            return True, "str"
    nargs = kw.get("nargs")
    t = kw.get("type")
    kind = TYPE_KINDS.get(ast.unparse(t), "str") if t is not None else "str"
    if nargs is not None and ast.unparse(nargs).strip("'\"") in ("*", "+"):
        kind = "list"
    return True, kind


def from_wheel(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        texts = {p: zf.read(p).decode() for p in SOURCES if p in names}
        consts = _constants({p: zf.read(p).decode() for p in CONSTANT_SOURCES if p in names})
    missing = [p for p in SOURCES if p not in texts]
    if missing:
        raise SystemExit(f"{wheel}: missing {', '.join(missing)}; is this a vLLM wheel?")
    version = wheel.name.split("-")[1]
    flags: dict[str, dict] = {}
    positional: list[str] = []
    for path, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
                continue
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if not strings:
                continue
            if not strings[0].startswith("-"):
                positional.append(strings[0])
                continue
            takes, kind = _kind(node)
            kw = {k.arg: k.value for k in node.keywords}
            choices = _literal_list(kw["choices"], consts) if "choices" in kw else None
            if choices is not None:
                choices = [c for c in choices if c is not None]
            entry = {"takes_value": takes, "kind": kind, "choices": choices, "source": path}
            for s in strings:
                flags[s] = entry
                if kind == "bool-optional" and s.startswith("--"):
                    flags["--no-" + s[2:]] = entry
    return {"version": version, "how": f"ast of {wheel.name} (sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]})",
            "positional": positional, "flags": dict(sorted(flags.items()))}


# ---- from the installed parser -----------------------------------------------------------------------------
def _probe(t) -> str:
    """Classify a parser type function by what it accepts (the real functions, called on sample values)."""
    if t is None or t is str:
        return "str"

    def accepts(value: str):
        try:
            return True, t(value)
        except Exception:  # noqa: BLE001 - any rejection counts
            return False, None

    word, _ = accepts("zzz")
    num, _ = accepts("12")
    js, parsed = accepts('{"image": 1}')
    kv, _ = accepts("image=1")
    if js and isinstance(parsed, dict) and not kv and not word:
        return "json"
    if num and not word:
        if t is float:
            return "float"
        return "int-or-auto" if accepts("auto")[0] else "int"
    return "str"


def from_installed() -> dict:
    import vllm
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()  # build the parser without a GPU (FACTS.md)
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    flags: dict[str, dict] = {}
    positional = []
    for action in parser._actions:
        if not action.option_strings:
            if action.dest != "help":
                positional.append(action.dest)
            continue
        cls = type(action).__name__
        if cls in ("_HelpAction",):
            continue
        takes = action.nargs != 0
        if cls == "BooleanOptionalAction":
            kind, takes = "bool-optional", False
        elif not takes:
            kind = "flag"
        elif action.nargs in ("*", "+"):
            kind = "list"
        else:
            kind = _probe(action.type)
        choices = [c for c in action.choices if c is not None] if action.choices else None
        for s in action.option_strings:
            flags[s] = {"takes_value": takes, "kind": kind,
                        "choices": [str(c) for c in choices] if choices else None, "source": "parser"}
    return {"version": vllm.__version__, "how": "the installed vLLM's make_arg_parser (CPU platform)",
            "positional": positional, "flags": dict(sorted(flags.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--wheel", type=Path, help="a vLLM wheel file")
    g.add_argument("--installed", action="store_true", help="use the vLLM installed in this interpreter")
    args = ap.parse_args()
    data = from_wheel(args.wheel) if args.wheel else from_installed()
    json.dump(data, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
