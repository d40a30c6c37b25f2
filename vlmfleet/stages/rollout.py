"""The rollout: a lock per host, batches behind a health gate, the release applied (and rolled back) by
vlmfleet-release on the host, and one summary line per host at the end of the run.

How the order is built (docs/operations.md): pyinfra runs each operation on every host before the next one and
orders operations by a graph of each host's own sequence. Every host emits the same *batch gate* operation for
each batch index (an operation with no commands); a host's restart operations sit after the gate of its own
batch. The graph therefore puts batch k's restarts after gate k, and gate k+1 after every restart of batch k —
so batch k+1 starts only once batch k is done. Whether it may start is decided at execution time by the ``_if``
of its operations: when a host of an earlier batch failed its new release, the later hosts are "not reached".
"""

from __future__ import annotations

import atexit
import getpass
import json
import shlex
import socket
import time
from secrets import token_hex

from pyinfra import host, logger
from pyinfra.api import BaseStateCallback, StringCommand, operation
from pyinfra.context import state as ctx_state

from .. import rollout as ro
from ..config import HostConfig

#: one id per run of pyinfra (every host of the run shares it): the lock's owner and the record's run
RUN_ID = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + token_hex(3)
WHO = f"{getpass.getuser()}@{socket.gethostname()}"


class _Run:
    """What this run learnt about each host (one instance per pyinfra process)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, ro.Outcome] = {}
        self.registered = False
        self.state = None
        self.locked: set[str] = set()  # hosts whose lock this run took
        self.keep_locked: set[str] = set()  # hosts whose apply ended without an outcome: the lock stays, saying so
        self.executed = False  # False in --dry: no summary of outcomes that did not happen

    def set(self, name: str, outcome: ro.Outcome) -> None:
        self.outcomes[name] = outcome


RUN = _Run()


def sudo_args(h=None) -> dict:
    """The privilege arguments a command run from Python needs (pyinfra applies them only to operations): the
    host's ``_sudo``/``_sudo_user`` data, else the command line's ``--sudo``/``--sudo-user``."""
    h = host if h is None else h  # not `h or host`: pyinfra's context proxy has no truth value
    config = h.state.config
    out = {"_sudo": bool(h.data.get("_sudo", getattr(config, "SUDO", False)))}
    user = h.data.get("_sudo_user", getattr(config, "SUDO_USER", None))
    if user:
        out["_sudo_user"] = user
    return out


def lock_command(cfg: HostConfig) -> str:
    return ro.lock_command(cfg.paths.lock_file, RUN_ID, WHO, break_lock=cfg.rollout_break_lock)


def unlock_command(cfg: HostConfig) -> str:
    return ro.unlock_command(cfg.paths.lock_file, RUN_ID)


# ---- the lock -----------------------------------------------------------------------------------------------
@operation(is_idempotent=True)
def take_lock(cfg: HostConfig):
    """Take the host's rollout lock for this run (``/var/lib/vlmfleet/rollout.lock``: who, run, since), or fail the
    host naming who holds it. Bookkeeping, not a change of the host: taken and released by the same run.

    + cfg: the host's configuration (``cfg.paths.lock_file``, ``cfg.rollout_break_lock``)
    """
    if not ctx_state.is_executing:
        return
    RUN.executed = True
    ok, out = host.run_shell_command(StringCommand(lock_command(cfg)), _timeout=60, **sudo_args())
    if ok:
        RUN.locked.add(host.name)
        if out.stderr.strip():
            logger.warning(f"    [{host.name}] {out.stderr.strip()}")
        return
    message = out.stderr.strip() or out.output.strip() or "taking the rollout lock failed"
    RUN.set(host.name, ro.Outcome(ro.FAILED_BEFORE, f"not changed: {message.splitlines()[0]}"))
    yield f"printf '%s\\n' {shlex.quote(f'{host.name}: {message}')} >&2; exit 1"


@operation(is_idempotent=True)
def release_lock(cfg: HostConfig):
    """Release the rollout lock this run took (another run's lock is left alone)."""
    if not ctx_state.is_executing:
        return
    _unlock_for(host, cfg)
    if False:  # an operation is a generator; releasing is bookkeeping, not a change
        yield ""


def _unlock_for(h, cfg: HostConfig) -> None:
    """Release the lock this run took on host ``h`` (not when its apply ended without an outcome)."""
    if h.name in RUN.locked and h.name not in RUN.keep_locked:
        h.run_shell_command(StringCommand(unlock_command(cfg)), _timeout=60, **sudo_args(h))
        RUN.locked.discard(h.name)


# ---- batches ------------------------------------------------------------------------------------------------
def pool(cfg: HostConfig) -> list[str]:
    """The hosts of this run that serve the same profile as this one, in inventory order."""
    names = []
    for other in ctx_state.inventory:  # connected hosts (one failing while planned keeps its place: same batches)
        if other.name == host.name:
            names.append(other.name)
        elif other in ctx_state.activated_hosts and (other.data.get("vlm_profile") or None) == cfg.vlm_profile:
            names.append(other.name)
    return names


def my_batches(cfg: HostConfig) -> tuple[list[list[str]], int]:
    """This host's pool cut into batches (``rollout_batches``), and the index of the batch it restarts in."""
    members = pool(cfg)
    return ro.batches(members, cfg.rollout_batches), ro.batch_index(host.name, members, cfg.rollout_batches)


@operation(is_idempotent=True)
def batch_gate(index: int, count: int, members: tuple):
    """Where batch ``index`` begins: no commands (it orders the restarts, see the module doc); a member logs it.

    + members: the hosts of this host's pool in that batch, e.g. ``("h2", "h3")``
    """
    if ctx_state.is_executing and host.name in members and count > 1:
        logger.info(f"    [{host.name}] rollout batch {index + 1} of {count}: {', '.join(members)}")
    if False:
        yield ""


def may_restart(batch: int):
    """The ``_if`` of a batch's restart operations: False (and the host "not reached") once a host of an earlier
    batch failed its new release."""
    def check() -> bool:
        stopped = ro.halted_by(RUN.outcomes, batch)
        if not stopped:
            return True
        RUN.set(host.name, ro.Outcome(ro.NOT_REACHED, f"rollout stopped before batch {batch + 1}: "
                                                      f"{', '.join(stopped)} failed the new release; not restarted",
                                      batch))
        logger.warning(f"    [{host.name}] not restarted: the rollout stopped after {', '.join(stopped)} failed")
        return False
    return check


def drain_args(cfg: HostConfig) -> list[str]:
    """vlmfleet-release's drain arguments when the inventory has a gateway (its HAProxy asks this host's drain
    agent), e.g. ``["--agent-state", "/run/vlmfleet/gateway-agent", "--drain-s", "5"]``; none otherwise."""
    from .. import fleet, gateway

    if not cfg.gateway_drain_s or not gateway.has_gateway(fleet.members(host.inventory)):
        return []
    return ["--agent-state", cfg.paths.agent_state, "--drain-s", str(cfg.gateway_drain_s),
            "--agent-unit", f"{gateway.AGENT_UNIT}.service"]


def apply_release(cfg: HostConfig, batch: int, bound_s: int, action: str = "apply"):
    """The function of the "Roll out the release" operation: ``vlmfleet-release apply`` on the host (restart,
    health check, startup ladder, rollback), its progress logged, its outcome recorded for the gate and the
    summary. Returns False (the host fails, no traceback) when the release did not end healthy."""
    paths = cfg.paths
    drain = drain_args(cfg)

    def apply(state, host):  # noqa: ARG001 (pyinfra passes both when the function names them)
        cmd = shlex.join([paths.release_bin, action, "--dir", paths.release_dir, "--run", RUN_ID, "--who", WHO,
                          *drain])
        try:
            ok, out = host.run_shell_command(StringCommand(cmd), _timeout=bound_s, **sudo_args(host))
        except Exception as exc:  # a timeout, a lost connection: what happened on the host is not known
            RUN.keep_locked.add(host.name)
            message = (f"no outcome from vlmfleet-release {action} within {bound_s}s ({type(exc).__name__}: "
                       f"{exc}); the host keeps its rollout lock — check {paths.release_dir}/history.jsonl and "
                       "`systemctl status` on the host, then break the lock on purpose (rollout_break_lock)")
            RUN.set(host.name, ro.Outcome(ro.FAILED, message, batch))
            logger.error(f"    [{host.name}] {message}")
            return False
        result = {}
        for line in reversed(out.stdout_lines):
            if line.strip().startswith("{"):
                try:
                    result = json.loads(line)
                    break
                except ValueError:
                    continue
        for line in out.stderr_lines:
            logger.info(f"    [{host.name}] {line}")
        kind = result.get("result")
        message = result.get("message") or ""
        if ok and kind == "healthy":
            RUN.set(host.name, ro.Outcome(ro.UPDATED, message, batch))
            return True
        if action == "rollback" and kind == "rolled_back" and ok:
            RUN.set(host.name, ro.Outcome(ro.RETURNED, message, batch))
            logger.info(f"    [{host.name}] {message}")
            return True
        if action == "rollback" and kind == "nothing":
            RUN.set(host.name, ro.Outcome(ro.UNCHANGED, message, batch))
            logger.info(f"    [{host.name}] {message}")
            return True
        state_ = ro.ROLLED_BACK if kind == "rolled_back" else ro.FAILED
        if not result:
            last = out.stderr_lines[-1] if out.stderr_lines else "no output"
            message = f"vlmfleet-release {action} gave no outcome (it printed: {last[:300]})"
        RUN.set(host.name, ro.Outcome(state_, message, batch))
        logger.error(f"    [{host.name}] {message}")
        return False

    return apply


def record(state: str, detail: str, batch: int):
    """The function of a python.call that records this host's outcome (the gate of later batches and the summary
    read it), e.g. ``record(ro.FAILED, "rebooted into driver 580; not back", 0)`` before a reboot."""
    def set_outcome() -> None:
        RUN.set(host.name, ro.Outcome(state, detail, batch))
    return set_outcome


def reached() -> bool:
    """False for a host the rollout stopped before: it serves its old release, which later stages (the health
    check with the new settings) must not judge."""
    o = RUN.outcomes.get(host.name)
    return not (o and o.state == ro.NOT_REACHED)


# ---- the end of the run -----------------------------------------------------------------------------------------
class _Callbacks(BaseStateCallback):
    @staticmethod
    def operation_host_error(state, host, op_hash, retry_count=0, max_retries=0):
        if retry_count < max_retries:
            return
        name = ", ".join(state.get_op_meta(op_hash).names)
        if host.name not in RUN.outcomes or RUN.outcomes[host.name].state == ro.UNCHANGED:
            RUN.set(host.name, ro.Outcome(ro.FAILED_BEFORE, f"at '{name}': not restarted, still serving its "
                                                            "release", None))
        cfg = _CFGS.get(host.name)
        if cfg is not None:
            try:
                _unlock_for(host, cfg)
            except Exception:  # a host that stopped answering keeps its lock: the next run names it
                pass


_CFGS: dict[str, HostConfig] = {}


def _print_summary() -> None:
    state = RUN.state
    if state is None or not RUN.executed:
        return
    outcomes = dict(RUN.outcomes)
    for h in state.failed_hosts:
        if h.name not in outcomes:
            outcomes[h.name] = ro.Outcome(ro.FAILED_BEFORE, "could not connect or plan: nothing changed")
    if not outcomes:
        return
    lines = ro.summary(outcomes)
    print("\n--> Rollout:", flush=True)
    for line in lines:
        print(f"    {line}", flush=True)


def register(cfg: HostConfig, batch: int | None) -> None:
    """Note the host's planned outcome (unchanged until an operation says otherwise) and, once per run, the
    error callback and the end-of-run summary."""
    _CFGS[host.name] = cfg
    RUN.outcomes.setdefault(host.name, ro.Outcome(ro.UNCHANGED, "", batch))
    if not RUN.registered:
        RUN.registered = True
        RUN.state = host.state
        RUN.state.add_callback_handler(_Callbacks())
        atexit.register(_print_summary)
