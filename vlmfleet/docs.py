"""Reference pages generated from the code so they cannot drift: ``python -m vlmfleet.docs`` rewrites them
(a fast test fails when one is stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import SETTINGS

REPO = Path(__file__).resolve().parent.parent


def data_keys_table() -> str:
    sep = " \\| "
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = repr(s.default).replace("|", "\\|")
        doc = s.doc + (" (" + sep.join(map(str, s.choices)) + ")" if s.choices else "")
        if s.example is not None and not s.choices:
            doc += f"; e.g. `{s.example!r}`"
        rows.append(f"| `{s.key}` | `{default}` | {'**' if s.dangerous else ''}{doc}{'**' if s.dangerous else ''} |")
    return "\n".join(rows) + "\n"


def data_keys_page() -> str:
    return (
        "# Data keys\n\n"
        "<!-- generated from vlmfleet/config.py by `python -m vlmfleet.docs`; edit the schema, not this page -->\n\n"
        "Every key vlmfleet reads from pyinfra data, with its one default (the schema in `vlmfleet/config.py`). "
        "pyinfra merges `--data` > host data (the inventory) > group data (`group_data/<group>.py`) > "
        "`group_data/all.py`. Preflight checks every value — type, range, format, and the rules between keys — and "
        "fails the host with one line per problem (host, key, value, why, a fix that passes) before anything "
        "changes. Keys pyinfra owns (`ssh_*`, `_sudo`, ...) pass through.\n\n"
        "Rules between keys: `vllm_max_num_batched_tokens` >= `vllm_max_num_seqs`; `gpu_devices` unique and "
        "present on the host; `vllm_tensor_parallel_size` <= the GPUs given; `vllm_quantization` only on an AWQ "
        "checkpoint; `vllm_kv_cache_dtype` among the version's; the image tag's vLLM version = `vllm_version`; "
        "`api_port` is not the SSH port; a non-loopback `api_bind` needs `api_key_file` (or the dangerous "
        "`api_allow_unauthenticated`); a host is in exactly one profile group; `model_dir`, `tools_dir` and "
        "`docker_data_root` do not overlap; `docker_daemon_options` cannot replace what vlmfleet manages.\n\n"
        + data_keys_table()
    )


def behaviours_table() -> str:
    """catalog/vllm.yaml ``memory:`` as a table: each behaviour, its values by version, and where each was read."""
    from .catalog import _load
    rows = ["| behaviour | value from each version on | read from |", "|---|---|---|"]
    for name, changes in _load("vllm.yaml")["memory"].items():
        values = "; ".join(f"{c['since']}: `{_show(c['value'])}`" for c in changes)
        read = "; ".join(f"{c['since']}: {c['read']}" + (f" (changed between {c['bisect']})" if c.get("bisect") else "")
                         for c in changes if c.get("read"))
        rows.append(f"| `{name}` | {values} | {read.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def _show(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]" if value else "none"
    return str(value)


def with_generated(text: str, marker: str, body: str) -> str:
    """``text`` with the part between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` replaced by ``body``."""
    begin, end = f"<!-- {marker}:begin -->\n", f"<!-- {marker}:end -->"
    head, rest = text.split(begin, 1)
    return head + begin + body + end + rest.split(end, 1)[1]


EXAMPLE = ["--model", "qwen2.5-vl-72b-instruct-awq", "--gpus", "8xT4", "--vllm", "0.8.2", "--max-model-len", "4096",
           "--gpu-memory-utilization", "0.75"]


def example_block() -> str:
    """What ``vlmfleet plan`` prints for the example at the top of docs/planner.md."""
    from . import report
    from .catalog import model, vllm_version
    from .gpus import parse_spec
    from .planner import Wish, plan
    p = plan(model(EXAMPLE[1]), parse_spec(EXAMPLE[3]), vllm_version(EXAMPLE[5]),
             Wish(max_model_len=int(EXAMPLE[7]), gpu_memory_utilization=float(EXAMPLE[9])))
    return "```\n" + report.text(p) + "```\n"


def planner_page() -> str:
    text = with_generated((REPO / "docs/planner.md").read_text(), "behaviours", behaviours_table())
    return with_generated(text, "example", example_block())


PAGES = {"docs/data-keys.md": data_keys_page, "docs/planner.md": planner_page}


def main() -> int:
    for rel, make in PAGES.items():
        path = REPO / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        print(f"wrote {rel}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
