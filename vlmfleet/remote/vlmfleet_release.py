#!/usr/bin/python3
"""vlmfleet-release: install, verify and roll back a host's vLLM release, and keep the host's rollout record.
Installed on each host by the service stage (stdlib only: it runs where vlmfleet is not installed).

    vlmfleet-release apply    --dir /var/lib/vlmfleet/releases/vllm-qwen7b --run RUN --who alice@ctl
    vlmfleet-release rollback --dir /var/lib/vlmfleet/releases/vllm-qwen7b --run RUN --who alice@ctl
    vlmfleet-release status   --dir /var/lib/vlmfleet/releases/vllm-qwen7b [--lock /var/lib/vlmfleet/rollout.lock]

A release is what one server runs: its unit (image, flags, weights mount), its env file and its plan record.
The deploy writes the candidate into DIR/candidate/ (release.json says what it is and where it goes, and
lists the startup ladder's rungs, each a complete unit). ``apply`` installs it, restarts the unit and checks it
with vlmfleet-health. When vLLM fails at startup with its out-of-memory or KV-cache-too-small messages, the
next rung is installed and tried (bounded by the rungs the deploy planned). A release that ends healthy becomes
the host's known-good release (DIR/good/, the one before it DIR/previous/); one that does not is replaced by
the known-good release, which is checked healthy again. ``rollback`` returns to the release before the
current one on demand. Every apply and rollback appends one JSON line to DIR/history.jsonl (when, who, run,
from, to, result, the rung that worked). The last JSON line on stdout is the outcome; messages go to stderr.

Exit: 0 healthy (or rolled back on demand, healthy); 3 the release failed and the host is back on its known-good
release (healthy); 4 the release failed and no healthy release runs (see the message); 5 rollback: nothing earlier
to return to (nothing changed); 2 usage, or another vlmfleet-release is acting on the service.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

# vLLM's own startup failures the ladder answers (FACTS.md; vllm/v1/worker/utils.py, v1/core/kv_cache_*.py,
# vllm/worker/worker.py for V0). Anything else (a bad image, a crash, a timeout) goes straight to the rollback.
MEMORY_MESSAGES = {
    "oom": (
        r"CUDA out of memory",
        r"torch\.OutOfMemoryError",
        r"OutOfMemoryError",
        r"on startup is less than desired GPU memory utilization",
    ),
    "kv_cache": (
        r"is larger than the maximum number of tokens that can be stored in KV cache",
        r"KV cache is needed, which is larger than the available KV cache memory",
    ),
    # no memory at all for the cache: less utilisation, a shorter length or fp8 cannot help (every rung keeps the
    # lowered utilisation): straight to the rollback
    "no_cache_memory": (r"No available memory for the cache blocks",),
}
LADDER_KINDS = ("oom", "kv_cache")
RELEASE_FILES = ("vllm.service", "env", "plan.json", "release.json")
POLL_S = 2.0


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def say(message):
    print(message, file=sys.stderr, flush=True)


def classify(journal_text):
    """``"oom"``, ``"kv_cache"`` or None for the journal of a failed start (the last memory message wins)."""
    found, where = None, -1
    for kind, patterns in MEMORY_MESSAGES.items():
        for pattern in patterns:
            for m in re.finditer(pattern, journal_text):
                if m.start() > where:
                    found, where = kind, m.start()
    return found


ERROR_LINE = re.compile(r"(\w+Error|\w+Exception|ERROR)\b")


def last_error(journal_text):
    """The last line of a failed start that names an error (vLLM's own reason), or ''."""
    lines = [ln.strip() for ln in journal_text.splitlines() if ERROR_LINE.search(ln) and "Traceback" not in ln
             and "EngineCore failed to start" not in ln]
    return lines[-1][:300] if lines else ""


def memory_message(journal_text):
    """The line of the journal that carries vLLM's memory message (for the record), or ''."""
    kind = classify(journal_text)
    if not kind:
        return ""
    lines = [ln for ln in journal_text.splitlines() if any(re.search(p, ln) for p in MEMORY_MESSAGES[kind])]
    return lines[-1].strip()[:400] if lines else ""


def next_rung(ladder, current, kind):
    """The rung to try after ``current`` (0: the release as planned) for a failure of ``kind``: the next one, but
    one that only lowers utilisation is skipped for a KV cache too small (less memory cannot help it)."""
    if kind not in LADDER_KINDS:
        return None
    for rung in ladder:
        if rung["rung"] <= current:
            continue
        if kind == "kv_cache" and rung.get("only_utilisation"):
            continue
        return rung
    return None


# ---- files --------------------------------------------------------------------------------------------------
def read_json(path, default=None):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def write_atomic(path, data, mode=0o644):
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_bytes(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def copy_release(src, dest):
    """A whole release folder, written beside ``dest`` and swapped in (never half a release)."""
    tmp, old = f"{dest}.new", f"{dest}.old"
    if not os.path.exists(dest) and os.path.exists(old):
        os.rename(old, dest)  # a swap interrupted between its two renames: the old copy is still the one
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    for name in os.listdir(src):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dest):
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


# ---- systemd ------------------------------------------------------------------------------------------------
def systemctl(*args, check=True):
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)} failed: {proc.stderr.strip()[:300]}")
    return proc


def unit_show(unit, prop):
    return systemctl("show", "-P", prop, unit, check=False).stdout.strip()


def journal_cursor(unit):
    """The journal's position now (what a start logs after it is read with ``journal_after``), or None."""
    try:
        out = subprocess.run(["journalctl", "-u", unit, "-n", "0", "--show-cursor", "--no-pager"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"-- cursor: (\S+)", out)
    return m.group(1) if m else None


def journal_after(unit, cursor, lines=400):
    args = ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"]
    if cursor:
        args += ["--after-cursor", cursor]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(journalctl failed: {exc})"


def image_id(image):
    try:
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                             text=True, timeout=60)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- one release on the host -------------------------------------------------------------------------------
class Host:
    def __init__(self, root):
        self.root = root
        self.candidate = os.path.join(root, "candidate")
        self.good = os.path.join(root, "good")
        self.previous = os.path.join(root, "previous")
        self.state_file = os.path.join(root, "state.json")
        self.history = os.path.join(root, "history.jsonl")
        for folder in (self.good, self.previous):  # a swap interrupted between its renames (copy_release)
            if not os.path.exists(folder) and os.path.exists(f"{folder}.old"):
                try:
                    os.rename(f"{folder}.old", folder)
                except OSError:
                    pass
        self.meta = read_json(os.path.join(self.candidate, "release.json")) or {}
        self.state = read_json(self.state_file, {}) or {}

    def save_state(self):
        write_atomic(self.state_file, json.dumps(self.state, indent=1, sort_keys=True) + "\n", 0o600)

    def record(self, entry):
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(line)

    # the files a release puts in place -----------------------------------------------------------------
    def install(self, folder, rung=None):
        """Put one release's unit, env file and plan record in place; reload systemd only if the unit changed.
        ``rung``: the ladder rung (a dict from release.json) whose unit and plan replace the folder's own."""
        meta = read_json(os.path.join(folder, "release.json")) or self.meta
        unit_src = os.path.join(folder, rung["unit"] if rung else "vllm.service")
        plan_src = os.path.join(folder, rung["plan"] if rung else "plan.json")
        unit = read_bytes(unit_src)
        if unit is None:
            raise RuntimeError(f"{unit_src} is missing: the release in {folder} is incomplete")
        changed = read_bytes(meta["unit_path"]) != unit
        if changed:
            write_atomic(meta["unit_path"], unit, 0o644)
        env = read_bytes(os.path.join(folder, "env"))
        if env is not None and read_bytes(meta["env_file"]) != env:
            write_atomic(meta["env_file"], env, 0o600)
        if meta.get("auth_file") and env is not None:
            # the health check's credentials follow the key the installed release serves with
            key = [ln.partition("=")[2] for ln in env.decode().splitlines() if ln.startswith("VLLM_API_KEY=")]
            auth = f"Authorization: Bearer {key[0]}\n".encode() if key else None
            if auth and read_bytes(meta["auth_file"]) != auth:
                write_atomic(meta["auth_file"], auth, 0o600)
        plan = read_bytes(plan_src)
        if plan is not None and read_bytes(meta["plan_file"]) != plan:
            write_atomic(meta["plan_file"], plan, 0o644)
        if changed:
            systemctl("daemon-reload")  # only when a unit changed (nvidia-container-toolkit#48)
        return meta

    def start_and_check(self, meta, deadline):
        """Restart the unit and check it. Returns (healthy, kind, message, journal): kind is the memory failure
        vLLM reported (the ladder's cue) or None."""
        unit = meta["unit_name"]
        systemctl("enable", unit)
        # every ladder rung and the rollback restart the unit: without this, systemd's StartLimitBurst would
        # refuse the last of them ("start request repeated too quickly")
        systemctl("reset-failed", unit, check=False)
        restarts_before = int(unit_show(unit, "NRestarts") or 0)
        cursor = journal_cursor(unit)
        started_job = systemctl("restart", unit, check=False)
        if started_job.returncode != 0:  # e.g. ExecStartPre (the weights guard) refused
            journal = journal_after(unit, cursor)
            said = last_error(journal) or journal.strip().splitlines()[-1:] and journal.strip().splitlines()[-1]
            message = f"systemctl restart {unit} failed: {started_job.stderr.strip()[:200]}"
            return False, classify(journal), f"{message}: {said}" if said else message, journal
        argv = list(meta["health"]) + ["--deadline", str(deadline)]
        result_file = meta.get("health_result")
        health = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        failure = None
        while health.poll() is None:
            time.sleep(POLL_S)
            restarts = int(unit_show(unit, "NRestarts") or 0)
            sub = unit_show(unit, "SubState")
            if restarts > restarts_before or sub in ("auto-restart", "failed") or \
                    unit_show(unit, "ActiveState") == "failed":
                failure = f"vLLM exited {time.monotonic() - started:.0f}s after the restart (unit {sub or 'down'})"
                health.send_signal(signal.SIGTERM)
                break
        out, err = health.communicate(timeout=60)
        journal = journal_after(unit, cursor)
        if failure is None and health.returncode == 0:
            if result_file:
                lines = [ln for ln in out.splitlines() if ln.strip().startswith("{")]
                if lines:
                    write_atomic(result_file, lines[-1] + "\n", 0o644)
            return True, None, "", journal
        message = failure or (err.strip().splitlines() or ["vlmfleet-health failed"])[0]
        said = last_error(journal)
        if said:
            message = f"{message}: {said}"
        return False, classify(journal), message, journal

    def stop(self, meta):
        systemctl("stop", meta["unit_name"], check=False)

    def current(self):
        return self.state.get("active") or {}


def describe(active):
    if not active:
        return "nothing"
    rung = f" (ladder rung {active['rung']})" if active.get("rung") else ""
    return f"{active.get('id', '?')}{rung}"


def outcome(**kw):
    print(json.dumps(kw, sort_keys=True), flush=True)


def hold(root):
    """An exclusive lock on the release folder for this process (two vlmfleet-release never act at once), or
    None when another holds it."""
    import fcntl

    os.makedirs(root, mode=0o700, exist_ok=True)
    fh = open(os.path.join(root, ".busy"), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def adopt_live(h, meta):
    """A host deployed before releases: keep the unit it runs as the known-good release, so a failed first apply
    returns to it instead of leaving the host with nothing."""
    unit = read_bytes(meta["unit_path"])
    if os.path.exists(os.path.join(h.good, "release.json")) or unit is None:
        return
    if not unit.startswith(b"# Managed by vlmfleet") or unit_show(meta["unit_name"], "ActiveState") != "active":
        return
    import hashlib

    tmp = f"{h.root}/good.stage"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    write_atomic(os.path.join(tmp, "vllm.service"), unit, 0o644)
    for name, src, mode in (("env", meta["env_file"], 0o600), ("plan.json", meta["plan_file"], 0o644)):
        data = read_bytes(src)
        if data is not None:
            write_atomic(os.path.join(tmp, name), data, mode)
    active = {"id": hashlib.sha256(unit).hexdigest()[:12], "rung": 0, "since": now(), "adopted": True}
    record = dict(meta, id=active["id"], ladder=[], active=active)
    write_atomic(os.path.join(tmp, "release.json"), json.dumps(record, indent=1, sort_keys=True) + "\n", 0o600)
    copy_release(tmp, h.good)
    shutil.rmtree(tmp, ignore_errors=True)
    h.state.setdefault("active", active)
    say(f"kept the unit this host ran before vlmfleet-release as its known-good release {active['id']}")


def apply(args):
    h = Host(args.dir)
    meta = h.meta
    if not meta:
        say(f"{h.candidate}/release.json is missing: run the service stage (deploys/vlm.py) first")
        return 2
    busy = hold(h.root)
    if busy is None:
        say(f"{h.root}: another vlmfleet-release is acting on this service right now (an earlier run's apply "
            "still going?) — fix: wait for it; `ps -ef | grep vlmfleet-release` on the host shows it")
        outcome(result="busy", message="another vlmfleet-release is acting on this service")
        return 2
    adopt_live(h, meta)
    with drained(args):
        return _apply(h, meta, args)


def drained(args):
    """While the body runs, the drain agent tells the gateways' HAProxy to send this replica nothing new
    (``--agent-state``, written ``drain`` then ``ready``); the body starts ``--drain-s`` seconds later, when
    every gateway has asked the agent (each second) and in-flight requests ran on, and the apply returns
    ``--drain-s`` seconds after ``ready``, when the gateways' health checks took the replica back (so the next
    batch never drains the last replica a gateway has)."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        if not getattr(args, "agent_state", None) or not getattr(args, "drain_s", 0):
            yield
            return
        unit = getattr(args, "agent_unit", None)
        if unit and subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode != 0:
            say(f"no drain agent runs here ({unit} is not active): no gateway to drain from")
            yield
            return
        os.makedirs(os.path.dirname(args.agent_state), mode=0o755, exist_ok=True)
        write_atomic(args.agent_state, b"drain\n", 0o644)
        say(f"draining: gateways send this replica no new requests; restarting in {args.drain_s}s")
        try:
            time.sleep(args.drain_s)
            yield
        finally:
            write_atomic(args.agent_state, b"ready\n", 0o644)
            # the next batch drains the next replica: first let the gateways see this one healthy again
            say(f"ready: gateways send this replica requests again once /health answers; waiting {args.drain_s}s "
                "for them to take it back")
            time.sleep(args.drain_s)
    return cm()


def _apply(h, meta, args):
    ladder = meta.get("ladder", [])
    deadline = int(meta["deadline_s"])
    before = h.current()
    entry = {"when": now(), "who": args.who, "run": args.run, "action": "apply", "from": describe(before),
             "to": meta["id"], "tried": []}
    rung, attempt = None, 0
    while True:
        attempt += 1
        label = f"rung {rung['rung']} ({rung['why']})" if rung else "as planned"
        say(f"starting release {meta['id']} {label}: up to {deadline}s for a healthy server")
        try:
            h.install(h.candidate, rung)
            ok, kind, message, journal = h.start_and_check(meta, deadline)
        except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            ok, kind, message, journal = False, None, f"installing or starting it failed: {exc}", ""
        entry["tried"].append({"rung": rung["rung"] if rung else 0, "healthy": ok, "failure": message,
                               "memory": kind, "vllm_said": memory_message(journal)})
        if ok:
            break
        say(f"release {meta['id']} {label} failed: {message}")
        if kind and memory_message(journal) not in message:
            say(f"vLLM's journal: {memory_message(journal)}")
        nxt = next_rung(ladder, rung["rung"] if rung else 0, kind)
        if nxt is None:
            if kind in LADDER_KINDS:
                say(f"the startup ladder has no further rung for '{kind}' ({len(ladder)} planned; "
                    "startup_ladder_steps)")
            return roll_back(h, meta, entry, message)
        say(f"vLLM ran out of memory ({kind}): trying ladder rung {nxt['rung']}: {nxt['why']}")
        rung = nxt
    active = {"id": meta["id"], "rung": rung["rung"] if rung else 0, "since": now(), "run": args.run,
              "changes": rung["changes"] if rung else {}, "image_id": image_id(meta["image"])}
    try:
        keep_good(h, active, rung)
    except OSError as exc:  # the server is healthy; only its copy as the known-good release failed
        say(f"warning: release {meta['id']} is healthy but could not be kept as the known-good release ({exc})")
    h.state["active"] = active
    entry.update(result="healthy", rung=active["rung"], changes=active["changes"])
    try:
        h.save_state()
        h.record(entry)
    except OSError as exc:
        say(f"warning: release {meta['id']} is healthy but its record could not be written ({exc})")
    how = f" after ladder rung {rung['rung']}: {rung['why']}" if rung else ""
    outcome(result="healthy", release=meta["id"], rung=active["rung"], changes=active["changes"],
            message=f"release {meta['id']} is healthy{how}", previous=describe(before))
    return 0


def keep_good(h, active, rung):
    """The healthy release becomes the known-good one (the one before it is kept as previous)."""
    good_meta = read_json(os.path.join(h.good, "release.json")) or {}
    if good_meta.get("id") and good_meta.get("id") != active["id"]:
        copy_release(h.good, h.previous)
    tmp = f"{h.root}/good.stage"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    meta = dict(h.meta, active=active)
    unit = read_bytes(os.path.join(h.candidate, rung["unit"] if rung else "vllm.service"))
    plan = read_bytes(os.path.join(h.candidate, rung["plan"] if rung else "plan.json"))
    env = read_bytes(os.path.join(h.candidate, "env"))
    write_atomic(os.path.join(tmp, "vllm.service"), unit, 0o644)
    if plan is not None:
        write_atomic(os.path.join(tmp, "plan.json"), plan, 0o644)
    if env is not None:
        write_atomic(os.path.join(tmp, "env"), env, 0o600)
    meta["ladder"] = []  # the good copy holds the unit that worked
    write_atomic(os.path.join(tmp, "release.json"), json.dumps(meta, indent=1, sort_keys=True) + "\n", 0o600)
    copy_release(tmp, h.good)
    shutil.rmtree(tmp, ignore_errors=True)


def roll_back(h, meta, entry, why, target=None, on_demand=False):
    """Return to ``target`` (default: the known-good release) and check it healthy again. Exit 3 (0 on demand)
    when it is healthy, 4 when nothing healthy runs."""
    target = target or h.good
    good = read_json(os.path.join(target, "release.json"))
    if not good:
        h.stop(meta)
        systemctl("disable", meta["unit_name"], check=False)  # a reboot must not start it either
        h.state["active"] = {"id": meta["id"], "rung": None, "since": now(), "run": entry["run"], "failed": True}
        h.save_state()
        entry.update(result="failed, no earlier release: stopped")
        h.record(entry)
        say(f"{meta['unit_name']}: no earlier healthy release on this host to return to: the unit is stopped and "
            "disabled (it would only fail again) — fix what the message above says and run the deploy again")
        outcome(result="failed", release=meta["id"], rolled_back=False,
                message=f"release {meta['id']} failed ({why}); no earlier release on this host: stopped")
        return 4
    back = good.get("active") or {}
    say(f"returning to release {describe(back)}")
    try:
        h.install(target)
        ok, _, message, _ = h.start_and_check(good, int(good.get("deadline_s") or meta["deadline_s"]))
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        ok, message = False, f"installing or starting it failed: {exc}"
    active = dict(back, since=now(), run=entry["run"])
    if not on_demand and back.get("id") == meta["id"]:
        # the same unit with another env file (a new key): the candidate is not what runs, the next run tries it
        active["env_not_applied"] = True
    h.state["active"] = active if ok else dict(active, failed=True)
    h.save_state()
    if ok and on_demand:  # the release rolled back from is no longer the known-good one
        copy_release(target, h.good)
        shutil.rmtree(h.previous, ignore_errors=True)
    what = "rolled back" if on_demand else "failed, rolled back"
    entry.update(result=f"{what} to {describe(active)}" + ("" if ok else f" — which also failed: {message}"),
                 back_to=describe(active), back_healthy=ok)
    h.record(entry)
    if ok:
        text = (f"rolled back from {entry['from']} to {describe(active)}, healthy" if on_demand else
                f"release {meta['id']} failed ({why}); back on {describe(active)}, healthy")
        outcome(result="rolled_back", release=meta["id"], rolled_back=True, back_to=describe(active), message=text)
        return 0 if on_demand else 3
    say(f"the release returned to ({describe(active)}) is not healthy either: {message}")
    outcome(result="failed", release=meta["id"], rolled_back=True, back_to=describe(active),
            message=f"{'rollback' if on_demand else 'release ' + meta['id']} failed ({why}); {describe(active)} is "
                    f"not healthy either: {message}")
    return 4


def rollback(args):
    """On demand: back to the release before the one the host runs, checked healthy. Exit 5: nothing earlier."""
    h = Host(args.dir)
    busy = hold(h.root)
    if busy is None:
        say(f"{h.root}: another vlmfleet-release is acting on this service right now — fix: wait for it")
        outcome(result="busy", message="another vlmfleet-release is acting on this service")
        return 2
    active = h.current()
    good = read_json(os.path.join(h.good, "release.json")) or {}
    target = h.good
    if (good.get("active") or {}).get("id") == active.get("id") and not active.get("failed"):
        target = h.previous  # the host runs its known-good release: go back one
    tmeta = read_json(os.path.join(target, "release.json"))
    back = (tmeta or {}).get("active") or {}
    if not tmeta or back.get("id") == active.get("id"):
        say(f"{args.dir}: no release before {describe(active)} is kept on this host: nothing to roll back to")
        outcome(result="nothing", message=f"no release before {describe(active)} on this host; nothing changed")
        return 5
    entry = {"when": now(), "who": args.who, "run": args.run, "action": "rollback", "from": describe(active),
             "to": describe(back)}
    with drained(args):
        return roll_back(h, tmeta, entry, "rollback on demand", target=target, on_demand=True)


def status(args):
    h = Host(args.dir)
    out = {"active": h.current() or None,
           "good": (read_json(os.path.join(h.good, "release.json")) or {}).get("active"),
           "previous": (read_json(os.path.join(h.previous, "release.json")) or {}).get("active"),
           "last": None}
    try:
        with open(h.history) as fh:
            lines = fh.read().splitlines()
        out["last"] = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        pass
    if args.lock:
        out["lock"] = read_lock(args.lock)
    print(json.dumps(out, sort_keys=True))
    return 0


def read_lock(path):
    """The rollout lock file (``run=``, ``who=``, ``since=`` lines; vlmfleet.rollout.lock_command) as a dict."""
    try:
        with open(path) as fh:
            return dict(ln.rstrip("\n").split("=", 1) for ln in fh if "=" in ln) or None
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("apply", "rollback", "status"):
        p = sub.add_parser(name)
        p.add_argument("--dir", required=True)
        if name != "status":
            p.add_argument("--run", required=True)
            p.add_argument("--who", required=True)
            p.add_argument("--agent-state", help="the drain agent's state file, e.g. /run/vlmfleet/gateway-agent")
            p.add_argument("--drain-s", type=int, default=0, help="seconds drained before the restart")
            p.add_argument("--agent-unit", help="drain only while this unit (the agent) is active")
        else:
            p.add_argument("--lock")
    args = ap.parse_args(argv)
    try:
        return {"apply": apply, "rollback": rollback, "status": status}[args.cmd](args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        say(f"vlmfleet-release {args.cmd}: {exc}")
        outcome(result="failed", message=str(exc))
        return 4


if __name__ == "__main__":
    sys.exit(main())
