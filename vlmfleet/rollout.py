"""Rollout order and its report: which hosts restart together, and what became of each host. Pure Python.

A run restarts servers in batches (``rollout_batches``): each entry is the size of the next batch, a count or a
percentage of the hosts that serve the same profile in this run (rounded up, at least one); the last entry
repeats until every host is reached. ``[1, "25%", "100%"]`` on 8 hosts: 1, then 2, then 5. A batch restarts
only when every host of the batches before it came back healthy.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_BATCHES: tuple = (1, "25%", "100%")
_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d+)?)%$")


def batch_problem(value) -> str | None:
    """Why ``value`` is not a rollout_batches list, or None. E.g. ``[1, "25%", "100%"]``, ``[1, 2, 5]``."""
    if isinstance(value, (str, int)) or not isinstance(value, (list, tuple)) or not value:
        return 'must be a non-empty list of host counts and percentages, e.g. [1, "25%", "100%"]'
    for item in value:
        if isinstance(item, bool):
            return f"{item!r} is not a count or a percentage"
        if isinstance(item, int):
            if item < 1:
                return f"{item} is not a host count (at least 1)"
        elif isinstance(item, str):
            m = _PERCENT.match(item.strip())
            if not m or not 0 < float(m.group(1)) <= 100:
                return f"{item!r} is not a percentage like \"25%\" (above 0, at most 100)"
        else:
            return f"{item!r} is not a count or a percentage"
    return None


def batch_sizes(spec, hosts: int) -> list[int]:
    """The size of each batch for ``hosts`` hosts, e.g. ``batch_sizes([1, "25%", "100%"], 8) == [1, 2, 5]``."""
    sizes: list[int] = []
    left = hosts
    i = 0
    while left > 0:
        item = spec[min(i, len(spec) - 1)]
        if isinstance(item, str):
            n = math.ceil(hosts * float(item.strip().rstrip("%")) / 100)
        else:
            n = int(item)
        n = max(1, min(n, left))
        sizes.append(n)
        left -= n
        i += 1
    return sizes


def batches(hosts: list[str], spec) -> list[list[str]]:
    """``hosts`` (in inventory order) cut into batches, e.g. ``[["h1"], ["h2", "h3"], [...]]``."""
    out, at = [], 0
    for n in batch_sizes(spec, len(hosts)):
        out.append(hosts[at:at + n])
        at += n
    return out


def batch_index(host: str, hosts: list[str], spec) -> int:
    """Which batch (0 = the first) ``host`` restarts in."""
    for i, batch in enumerate(batches(hosts, spec)):
        if host in batch:
            return i
    raise ValueError(f"{host} is not among {hosts}")


# ---- what became of each host ----------------------------------------------------------------------------------
UNCHANGED, UPDATED, ROLLED_BACK, FAILED, NOT_REACHED, FAILED_BEFORE, RETURNED = (
    "unchanged", "updated and healthy", "failed and rolled back", "failed", "not reached", "failed before restart",
    "rolled back and healthy")


@dataclass(frozen=True)
class Outcome:
    """One host's end of a rollout.

    + state: one of UNCHANGED, UPDATED, ROLLED_BACK, FAILED, NOT_REACHED, FAILED_BEFORE, RETURNED (on demand)
    + detail: e.g. ``"release 3f2a.. healthy after ladder rung 2: lower max_model_len to 24576"``
    """

    state: str
    detail: str = ""
    batch: int | None = None

    @property
    def stops_rollout(self) -> bool:
        """A release that failed on a restarted host stops the batches after it; a host that failed before its
        restart (unreachable, a pull that hung) fails alone and keeps serving its old release."""
        return self.state in (ROLLED_BACK, FAILED)


def halted_by(outcomes: dict[str, Outcome], batch: int) -> list[str]:
    """The hosts of batches before ``batch`` whose new release failed: a non-empty list stops ``batch``."""
    return sorted(h for h, o in outcomes.items() if o.stops_rollout and o.batch is not None and o.batch < batch)


def summary(outcomes: dict[str, Outcome]) -> list[str]:
    """One line per host, in host order, then a count per state."""
    width = max((len(h) for h in outcomes), default=0)
    lines = []
    for h in sorted(outcomes):
        o = outcomes[h]
        batch = f"batch {o.batch + 1}" if o.batch is not None else "-"
        lines.append(f"{h:<{width}}  {o.state:<22} {batch:<8} {o.detail}".rstrip())
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.state] = counts.get(o.state, 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return lines


# ---- the host's rollout lock: plain shell, so it works before anything of vlmfleet is on the host ---------------
def lock_command(path: str, run: str, who: str, break_lock: bool = False) -> str:
    """Take the lock file ``path`` for ``run`` atomically, or say who holds it: the lines are written to a file of
    this run first and hard-linked into place (``ln`` fails when the lock exists), so a lock is never empty.
    The file holds ``run=``, ``who=`` and ``since=`` lines. Exit 0: taken (or already this run's); 2: held.

    + path: e.g. ``/var/lib/vlmfleet/rollout.lock``
    + run: this run's id, e.g. ``20261202T070000Z-a1b2c3``
    + who: e.g. ``alice@ctl``
    + break_lock: take it from another run (``rollout_break_lock``), saying whose it was
    """
    q = shlex.quote
    f = q(path)
    write = f"printf 'run=%s\\nwho=%s\\nsince=%s\\n' {q(run)} {q(who)} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
    held = ('held="$(sed -n \'s/^who=//p\' ' + f + ') since $(sed -n \'s/^since=//p\' ' + f + ') (run '
            '$(sed -n \'s/^run=//p\' ' + f + '))"')
    tmp = q(f"{path}.{run}")
    head = (f"mkdir -p {q(str(PurePosixPath(path).parent))} && {write} > {tmp} || {{ rm -f {tmp}; "
            f"echo \"cannot write the rollout lock {path} (disk full?)\" >&2; exit 1; }}; "
            f"if ln {tmp} {f} 2>/dev/null; then rm -f {tmp}; exit 0; fi; rm -f {tmp}; "
            f"if grep -qx {q('run=' + run)} {f}; then exit 0; fi; {held}; ")
    if break_lock:
        return head + (f"echo \"breaking the rollout lock of $held (rollout_break_lock)\" >&2; "
                       f"{write} > {f}.new && mv -f {f}.new {f}")
    return head + ("echo \"another rollout holds this host's lock: $held — fix: wait for that run to end; if it is "
                   "dead (interrupted, its machine gone), break the lock on purpose with --data "
                   "rollout_break_lock=true\" >&2; exit 2")


def unlock_command(path: str, run: str) -> str:
    """Remove the lock file ``path`` if ``run`` holds it (another run's lock is left alone)."""
    q = shlex.quote
    return f"if grep -qx {q('run=' + run)} {q(path)} 2>/dev/null; then rm -f {q(path)}; fi; true"
