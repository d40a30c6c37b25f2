"""Read pyinfra's end-of-run "Results" table, so tests can assert what changed."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROW = re.compile(r"^\s{4}(?P<op>.+?)\s+(?P<hosts>\d+)\s+(?P<success>\d+|-)\s+(?P<error>\d+|-)\s+(?P<nochange>\d+|-)\s*$")


@dataclass(frozen=True)
class OpResult:
    operation: str
    hosts: int
    changed: int
    errors: int
    unchanged: int


def parse_results(output: str) -> list[OpResult]:
    """Rows of the Results table (without the Grand total); raises when the table is missing."""
    _, sep, table = output.partition("--> Results:")
    if not sep:
        raise AssertionError(f"no Results table in pyinfra output:\n{output[-3000:]}")
    rows = []
    for line in table.splitlines()[2:]:
        m = ROW.match(line)
        if not m:
            if line.strip():
                continue
            break
        num = lambda v: 0 if v == "-" else int(v)  # noqa: E731
        rows.append(OpResult(m["op"].strip(), int(m["hosts"]), num(m["success"]), num(m["error"]), num(m["nochange"])))
    rows = [r for r in rows if r.operation != "Grand total"]
    if not rows:
        raise AssertionError(f"empty Results table:\n{table[:3000]}")
    return rows
