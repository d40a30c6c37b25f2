"""Tables the README carries, generated from the code so they cannot drift (tests compare them)."""

from __future__ import annotations

from .settings import SETTINGS


def data_keys_table() -> str:
    sep = " \\| "
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = repr(s.default).replace("|", "\\|")
        doc = s.doc + (" (" + sep.join(s.choices) + ")" if s.choices else "")
        rows.append(f"| `{s.key}` | `{default}` | {doc} |")
    return "\n".join(rows) + "\n"
