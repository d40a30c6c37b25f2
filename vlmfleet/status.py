"""``vlmfleet status``: what each serving host runs, whether it is what the data now wants, and how it is doing.

Pure Python (no pyinfra, no paramiko): the collector (``vlmfleet.status_collect``) gathers, per host, the raw
output of a few commands and HTTP answers into an :class:`Observed`; :func:`make_row` turns that and the host's
inventory data into a :class:`Row`; :func:`table` and :func:`as_json` print rows.

Drift is decided the way the deploy decides it: the host's configuration is built from its data
(``config.build``), planned on its GPUs by preflight's own ``check`` (from the host's ``nvidia-smi`` output and
its verified checkpoint's config.json), rendered into the unit and its release id (``service.render_unit``,
``service.release_id``) and compared with the host's release state by ``service.release_reasons`` — the helper
the service stage restarts by. A host on a startup-ladder rung of the wanted release is current.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

#: vLLM's metric names (FACTS.md): the KV cache gauge was renamed between 0.8.2 and 0.33
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
SUCCESS = "vllm:request_success_total"

#: the GPU memory query of ``vlmfleet status`` (preflight's query asks for other columns)
GPU_MEMORY_QUERY = "nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader,nounits"

#: exit statuses of ``vlmfleet status``
EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, EXIT_DRIFT = 0, 1, 2, 3


# ---- /metrics ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """The numbers of one server's ``/metrics``; None where the server does not export them.

    + running: requests in the running batch, summed over every series, e.g. ``3.0``
    + waiting: requests queued, e.g. ``0.0``
    + kv_cache: KV cache usage as a fraction (vLLM's ``..._usage_perc`` gauges are 0..1), e.g. ``0.42``
    + kv_metric: which name carried it, e.g. ``"vllm:kv_cache_usage_perc"`` (0.33) or
      ``"vllm:gpu_cache_usage_perc"`` (0.8.2)
    + success: requests finished, every finished_reason summed, e.g. ``17.0``
    """

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    kv_metric: str | None = None
    success: float | None = None


def parse_sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """One sample line of the Prometheus text format, or None for a comment, a blank or a garbled line.

    + line: e.g. ``vllm:num_requests_running{model_name="qwen2.5-vl-7b-instruct"} 2.0`` (a timestamp after the
      value is allowed)
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    labels: dict[str, str] = {}
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name, rest = line[:brace], line[brace + 1:]
        end = _parse_labels(rest, labels)
        if end is None:
            return None
        rest = rest[end:]
    else:
        if space == -1:
            return None
        name, rest = line[:space], line[space:]
    parts = rest.split()
    if not parts:
        return None
    try:
        value = float(parts[0])
    except ValueError:
        return None
    return name, labels, value


def _parse_labels(text: str, labels: dict[str, str]) -> int | None:
    """Read ``a="x",b="y"}`` into ``labels``; the index just after the closing brace, or None when garbled."""
    i = 0
    while True:
        while i < len(text) and text[i] in " ,":
            i += 1
        if i < len(text) and text[i] == "}":
            return i + 1
        eq = text.find("=", i)
        if eq == -1 or eq + 1 >= len(text) or text[eq + 1] != '"':
            return None
        key, j, value = text[i:eq].strip(), eq + 2, []
        while j < len(text) and text[j] != '"':
            if text[j] == "\\" and j + 1 < len(text):
                j += 1
                value.append({"n": "\n"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        if j >= len(text):
            return None
        labels[key] = "".join(value)
        i = j + 1


def parse_metrics(text: str) -> Metrics:
    """The numbers ``vlmfleet status`` shows, from a vLLM ``/metrics`` page (either version's names).

    + text: the page, e.g. ``"# TYPE vllm:num_requests_running gauge\\nvllm:num_requests_running{...} 1.0\\n..."``
    Gauges of several series (engines, models) are summed; the KV cache usage is the largest of them.
    """
    sums: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for line in text.splitlines():
        sample = parse_sample(line)
        if sample is None:
            continue
        name, _, value = sample
        if math.isnan(value):
            continue
        sums[name] = sums.get(name, 0.0) + value
        peaks[name] = max(peaks.get(name, value), value)
    kv_metric = next((n for n in KV_CACHE if n in peaks), None)
    return Metrics(running=sums.get(RUNNING), waiting=sums.get(WAITING),
                   kv_cache=peaks[kv_metric] if kv_metric else None, kv_metric=kv_metric, success=sums.get(SUCCESS))


# ---- nvidia-smi, systemctl -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory as ``nvidia-smi`` reports it.

    + index: e.g. ``0``; name: e.g. ``"NVIDIA A10"``; used_mib / total_mib: e.g. ``21010`` / ``23028``
    """

    index: int
    name: str
    used_mib: int
    total_mib: int


def parse_gpu_memory(csv_text: str) -> list[GpuMemory]:
    """The output of :data:`GPU_MEMORY_QUERY`, one GpuMemory per line; ValueError names a line it cannot read.

    + csv_text: e.g. ``"0, NVIDIA A10, 21010, 23028\\n1, NVIDIA A10, 20998, 23028\\n"``
    """
    out = []
    for n, line in enumerate((ln for ln in csv_text.splitlines() if ln.strip()), 1):
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 4:
            raise ValueError(f"nvidia-smi line {n} has {len(cols)} columns, expected index, name, memory.used, "
                             f"memory.total: {line.strip()!r}")
        try:
            out.append(GpuMemory(int(cols[0]), cols[1], int(float(cols[2])), int(float(cols[3]))))
        except ValueError:
            raise ValueError(f"nvidia-smi line {n}: index or memory not numeric (N/A, or saved with units?): "
                             f"{line.strip()!r}") from None
    return out


def gpu_memory_text(gpus: list[GpuMemory]) -> str:
    """The table's GPU column: used and total over every GPU, e.g. ``"41008/46056 MiB x2"``; ``"-"`` for none."""
    if not gpus:
        return "-"
    used, total = sum(g.used_mib for g in gpus), sum(g.total_mib for g in gpus)
    return f"{used}/{total} MiB x{len(gpus)}"


def parse_systemctl_show(text: str) -> dict[str, str]:
    """``systemctl show UNIT -p LoadState -p ActiveState -p SubState -p ActiveEnterTimestamp`` as a dict.

    + text: e.g. ``"LoadState=loaded\\nActiveState=active\\nSubState=running\\n"``
    """
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_os_release(text: str) -> tuple[str | None, str | None]:
    """``/etc/os-release``'s ID (lower case) and VERSION_ID, e.g. ``("debian", "12")``."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    return (values.get("ID") or "").lower() or None, values.get("VERSION_ID") or None


def json_file(text: str | None) -> dict:
    """A JSON file's text (None: missing) in the shape of the ``JsonFile`` fact preflight reads:
    ``{"exists": False}``, ``{"exists": True, "valid": True, "data": {...}}`` or ``{..., "valid": False}``."""
    if text is None:
        return {"exists": False}
    if not text.strip():
        return {"exists": True, "valid": True, "data": {}}
    try:
        data = json.loads(text)
    except ValueError as exc:
        return {"exists": True, "valid": False, "error": str(exc)}
    if not isinstance(data, dict):
        return {"exists": True, "valid": False, "error": "top level is not an object"}
    return {"exists": True, "valid": True, "data": data}


# ---- the unit file -------------------------------------------------------------------------------------------
def unit_exec_args(unit_text: str) -> list[str] | None:
    """The ExecStart words of a unit vlmfleet wrote (``service.exec_line`` read back), or None without one.

    + unit_text: e.g. ``"...\\nExecStart=/usr/bin/docker run --rm \\\\\\n    --name vllm-qwen7b ...\\n"``
    """
    lines = unit_text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("ExecStart=")), None)
    if start is None:
        return None
    parts = [lines[start][len("ExecStart="):]]
    i = start
    while parts[-1].endswith("\\") and i + 1 < len(lines):
        parts[-1] = parts[-1][:-1]
        i += 1
        parts.append(lines[i])
    try:
        words = shlex.split(" ".join(parts))
    except ValueError:
        return None
    return [w.replace("%%", "%").replace("$$", "$") for w in words]


def split_docker_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The image and the ``vllm serve`` words of a unit's ``docker run ... --entrypoint vllm IMAGE serve ...``.

    + args: e.g. ``["/usr/bin/docker", "run", ..., "--entrypoint", "vllm", "vllm/vllm-openai:v0.33.0", "serve",
      "/models/Qwen2.5-VL-7B-Instruct", "--max-num-seqs", "64"]`` → ``("vllm/vllm-openai:v0.33.0", ["serve", ...])``
    """
    try:
        at = args.index("--entrypoint") + 2
    except ValueError:
        return None, []
    if at >= len(args):
        return None, []
    return args[at], args[at + 1:]


def flag_values(words: list[str]) -> dict[str, str | None]:
    """``vllm serve`` words as option → value (None: a switch), positionals under ``"model"``, in order.

    + words: e.g. ``["serve", "/models/x", "--max-num-seqs", "64", "--enforce-eager"]`` →
      ``{"model": "/models/x", "--max-num-seqs": "64", "--enforce-eager": None}``
    """
    out: dict[str, str | None] = {}
    i = 1 if words[:1] == ["serve"] else 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            name, eq, inline = w.partition("=")
            if eq:
                out[name] = inline
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                out[name] = words[i + 1]
                i += 1
            else:
                out[name] = None
        else:
            out.setdefault("model", w)
        i += 1
    return out


def describe_diff(running: tuple[str | None, list[str]], wanted: tuple[str | None, list[str]]) -> str:
    """What differs between what a host runs and what its data wants, running → wanted, e.g.
    ``"--max-num-seqs 64 -> 32; image ...:v0.8.2 -> ...:v0.33.0"``; ``""`` when image and flags agree.

    + running / wanted: ``(image, vllm serve words)`` as :func:`split_docker_args` returns them
    """
    have, want = flag_values(running[1]), flag_values(wanted[1])
    parts = []
    def shown(values: dict, name: str) -> str:
        if name not in values:
            return "<unset>"
        return "on" if values[name] is None else str(values[name])

    for name in [*want, *(n for n in have if n not in want)]:
        if name in have and name in want and have[name] == want[name]:
            continue
        parts.append(f"{name} {shown(have, name)} -> {shown(want, name)}")
    if running[0] != wanted[0]:
        parts.append(f"image {running[0] or '<unknown>'} -> {wanted[0]}")
    return "; ".join(parts)


# ---- what the host runs, what its data wants -------------------------------------------------------------------
@dataclass
class Observed:
    """What the collector saw of one host: raw command output and HTTP answers (None: not read).

    + error: why the host could not be read over SSH, e.g. ``"ssh 10.77.0.11:22: timed out after 10s"``
    + systemctl: ``systemctl show`` output (:func:`parse_systemctl_show`)
    + release_status: the ReleaseStatus fact's value, e.g. ``{"active": {"id": "3f2a9c1b0d4e", "rung": 0},
      "unit_sha256": "..."}``; release_error says why it is missing (e.g. sudo asked for a password)
    + release_json: the text of the active release's ``release.json`` (``<release_dir>/good/release.json``)
    + unit_text: the live unit file (``/etc/systemd/system/vllm-<profile>.service``)
    + gpu_memory_csv: :data:`GPU_MEMORY_QUERY` output; gpu_csv / gpu_error / gpu_topo: preflight's query
    + os_release: ``/etc/os-release``; manifest / config_json: the verified checkpoint's manifest and config.json
    + health_status: /health's HTTP status; health_error: why /health did not answer
    + version: /version's ``version``; metrics_text: the /metrics page; via: ``"direct"`` or ``"ssh tunnel"``
    """

    error: str | None = None
    systemctl: str | None = None
    release_status: dict | None = None
    release_error: str | None = None
    release_json: str | None = None
    unit_text: str | None = None
    gpu_memory_csv: str | None = None
    gpu_csv: str | None = None
    gpu_error: str | None = None
    gpu_topo: str | None = None
    os_release: str | None = None
    manifest: str | None = None
    config_json: str | None = None
    health_status: int | None = None
    health_error: str | None = None
    version: str | None = None
    metrics_text: str | None = None
    metrics_error: str | None = None
    via: str | None = None


@dataclass(frozen=True)
class Wanted:
    """What the deploy would install on a host now (or why it cannot say).

    + problem: why there is no wanted release, e.g. ``"h1: data key 'api_port' = 22 ...: ..."``
    """

    cfg: Any = None
    plan: Any = None
    unit_text: str | None = None
    release_id: str | None = None
    rungs: tuple = ()
    problem: str | None = None


def wanted_release(name: str, data: Mapping[str, Any], obs: Observed, roles: tuple[str, ...] = ()) -> Wanted:
    """The release the deploy would render for this host from its data and GPUs, as the preflight and service
    stages do: ``config.build``, ``preflight.check`` on the host's facts, ``service.render_unit``.

    + name: the inventory name, e.g. ``"h1"``
    + data: its merged data, e.g. ``member.data`` (``--data`` overrides included)
    + obs: the host's facts (``gpu_csv``, ``gpu_topo``, ``os_release``, ``manifest``, ``config_json``)
    + roles: its groups among monitoring and gateway, e.g. ``("monitoring",)``
    """
    from .config import build
    from .ladder import startup_ladder
    from .preflight import HostFacts, check
    from .service import release_id, render_unit

    try:
        ssh_port = int(data.get("ssh_port") or 22)
    except (TypeError, ValueError):
        ssh_port = 22
    cfg, problems = build(name, data, ssh_port=ssh_port, check_files=False, verify_fixes=False, roles=roles)
    if cfg is None:
        return Wanted(problem=f"the data has {len(problems)} problem(s): {problems[0].render(name)}")
    os_id, os_version = parse_os_release(obs.os_release or "")
    manifest = json_file(obs.manifest)
    weights_ready = bool(manifest.get("exists") and manifest.get("valid"))
    config_json = None
    if weights_ready:
        found = json_file(obs.config_json)
        config_json = found.get("data") if found.get("valid") else None
    facts = HostFacts(os_id=os_id, os_version=os_version, gpu_csv=obs.gpu_csv, gpu_error=obs.gpu_error,
                      gpu_topo=obs.gpu_topo if obs.gpu_csv else None, weights_ready=weights_ready,
                      config_json=config_json, config_path=f"{name}:{cfg.paths.config_json}")
    verdict = check(cfg, facts)
    if verdict.plan is None:
        return Wanted(cfg=cfg, problem=f"preflight would fail: {verdict.problems[0] if verdict.problems else '?'}")
    unit_text = render_unit(cfg, verdict.plan)
    return Wanted(cfg, verdict.plan, unit_text, release_id(unit_text),
                  tuple(startup_ladder(verdict.plan, cfg.startup_ladder_steps)))


@dataclass(frozen=True)
class Drift:
    """Whether a host runs what its data wants.

    + drifted: True / False; None when it cannot be told (``detail`` says why)
    + detail: what differs, e.g. ``"--max-num-seqs 64 -> 32 (release 3f2a9c1b0d4e -> 9c1b3f2a0d4e)"``
    """

    drifted: bool | None
    detail: str = ""


def decide_drift(wanted: Wanted, obs: Observed) -> Drift:
    """Drift as the service stage sees it (``service.release_reasons``): the active release is not the wanted
    one, failed, or its unit file is not the release's (a ladder rung of the wanted release is current). The
    detail names the flags and image that differ, read from the live unit (else the active release.json).

    + wanted: :func:`wanted_release`'s answer
    + obs: the host's release status, live unit and release.json
    """
    from .service import release_reasons, render_unit

    if wanted.problem:
        return Drift(None, wanted.problem)
    if obs.release_status is None:
        return Drift(None, f"the release state was not read ({obs.release_error or 'no answer'})")
    reasons, _ = release_reasons(wanted.cfg, wanted.plan, obs.release_status, list(wanted.rungs), wanted.unit_text)
    if not reasons:
        return Drift(False)
    active = obs.release_status.get("active") or {}
    rung = int(active.get("rung") or 0)
    want_text = wanted.unit_text
    by_rung = {r.rung: r for r in wanted.rungs}
    if active.get("id") == wanted.release_id and rung in by_rung:
        want_text = render_unit(wanted.cfg, by_rung[rung].plan)
    running = running_release(obs)
    diff = describe_diff(running, split_docker_args(unit_exec_args(want_text) or [])) if running[0] else ""
    why = "; ".join(reasons)
    if rung and active.get("id") != wanted.release_id:
        why += f"; the host is on ladder rung {rung}"
    return Drift(True, f"{diff} ({why})" if diff else why)


def running_release(obs: Observed) -> tuple[str | None, list[str]]:
    """``(image, vllm serve words)`` of what the host runs: its live unit file, else its active release.json."""
    args = unit_exec_args(obs.unit_text) if obs.unit_text else None
    if args:
        return split_docker_args(args)
    meta = json_file(obs.release_json).get("data") or {}
    try:
        return meta.get("image"), shlex.split(meta.get("flags") or "")
    except ValueError:
        return meta.get("image"), []


# ---- one row per host ------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One host in ``vlmfleet status``: every field the table and ``--json`` show (None: unknown).

    + unit: ``"active/running"``, ``"inactive/dead"``, ``"failed/failed"``, ``"not found"``
    + release: the active release id, e.g. ``"3f2a9c1b0d4e"``; rung: its ladder rung (0: as planned)
    + image: the image the unit runs; vllm: the version /version reports, e.g. ``"0.33.0"``
    + healthy: /health answered 200; health: what it said, e.g. ``"HTTP 503"``; via: ``"direct"`` or
      ``"ssh tunnel"``
    + kv_cache: a fraction, e.g. ``0.42``; gpus: per GPU memory
    + error: why the host could not be read over SSH (an unreachable host)
    """

    host: str
    address: str
    profile: str | None
    service: str | None = None
    unit: str | None = None
    unit_since: str | None = None
    release: str | None = None
    rung: int | None = None
    image: str | None = None
    vllm: str | None = None
    drift: Drift = field(default_factory=lambda: Drift(None))
    healthy: bool | None = None
    health: str = ""
    via: str | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    success: float | None = None
    gpus: list[GpuMemory] = field(default_factory=list)
    gpu_error: str | None = None
    error: str | None = None

    @property
    def unit_active(self) -> bool:
        return bool(self.unit) and self.unit.startswith("active/")

    @property
    def ok(self) -> bool:
        """Reachable, its unit active, healthy, and no drift."""
        return self.error is None and self.unit_active and self.healthy is True and self.drift.drifted is False


def make_row(name: str, address: str, profile: str | None, data: Mapping[str, Any], obs: Observed,
             roles: tuple[str, ...] = ()) -> Row:
    """A host's row from what was observed of it.

    + name / address / profile: the inventory member's, e.g. ``"h1"``, ``"10.77.0.11"``, ``"qwen7b"``
    + data: its merged data (the drift is judged against it)
    + obs: what the collector saw
    """
    from .config import service_name

    row = Row(name, address, profile, service=service_name(profile) if profile else None, error=obs.error)
    _health_into(row, obs)
    if obs.error:
        row.drift = Drift(None, "not read (unreachable)")
        return row
    show = parse_systemctl_show(obs.systemctl or "")
    state, sub = show.get("ActiveState"), show.get("SubState")
    row.unit = f"{state}/{sub}" if state else None
    row.unit_since = show.get("ActiveEnterTimestamp") or None
    if show.get("LoadState") == "not-found":
        row.unit = "not installed"
    active = (obs.release_status or {}).get("active") or {}
    row.release = active.get("id")
    row.rung = int(active.get("rung") or 0) if active else None
    image, _ = running_release(obs)
    row.image = image
    if obs.gpu_memory_csv is not None:
        try:
            row.gpus = parse_gpu_memory(obs.gpu_memory_csv)
        except ValueError as exc:
            row.gpu_error = str(exc)
    else:
        row.gpu_error = obs.gpu_error
    row.drift = decide_drift(wanted_release(name, data, obs, roles), obs)
    return row


def _health_into(row: Row, obs: Observed) -> None:
    """/health, /version and /metrics into the row."""
    row.via = obs.via
    row.vllm = obs.version
    if obs.health_status is not None:
        row.healthy = obs.health_status == 200
        row.health = "healthy" if row.healthy else f"HTTP {obs.health_status}"
    elif obs.health_error:
        row.healthy = False
        row.health = obs.health_error
    if obs.metrics_text is not None:
        m = parse_metrics(obs.metrics_text)
        row.running, row.waiting, row.kv_cache, row.success = m.running, m.waiting, m.kv_cache, m.success


def unreachable_row(name: str, address: str, profile: str | None, why: str) -> Row:
    """The row of a host nothing could be read from, e.g. one that did not answer within the bound."""
    return make_row(name, address, profile, {}, Observed(error=why))


# ---- output ----------------------------------------------------------------------------------------------------
COLUMNS = ("HOST", "PROFILE", "UNIT", "RELEASE", "IMAGE / VLLM", "DRIFT", "HEALTH", "RUN/WAIT", "KV %", "GPU MEM")


def _number(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def cells(row: Row) -> tuple[str, ...]:
    """The table cells of one row, in :data:`COLUMNS` order."""
    if row.error:
        unit = release = image = "-"
    else:
        unit = row.unit or "?"
        release = (row.release or "none") + (f" rung {row.rung}" if row.rung else "")
        short = row.image.rsplit("/", 1)[-1] if row.image else "?"
        image = f"{short} / {row.vllm or '?'}"
    drift = {True: "yes", False: "no", None: "?"}[row.drift.drifted]
    if row.healthy is None:
        health = "-"
    else:
        health = "healthy" if row.healthy else "unhealthy"
        if row.via == "ssh tunnel":
            health += " via ssh tunnel"
    run_wait = "-" if row.running is None and row.waiting is None else f"{_number(row.running)}/{_number(row.waiting)}"
    kv = "-" if row.kv_cache is None else f"{row.kv_cache * 100:.1f}"
    return (row.host, row.profile or "-", "unreachable" if row.error else unit, release, image, drift, health,
            run_wait, kv, gpu_memory_text(row.gpus))


def notes(row: Row) -> list[str]:
    """The lines under the table for one host: why it is unreachable, unhealthy or drifted."""
    out = []
    if row.error:
        out.append(f"{row.host}: unreachable: {row.error}")
    if row.healthy is False:
        out.append(f"{row.host}: not healthy ({row.via or 'direct'}): {row.health}")
    if row.drift.drifted is not False and not row.error:
        label = "drift" if row.drift.drifted else "drift unknown"
        out.append(f"{row.host}: {label}: {row.drift.detail}")
    if row.gpu_error and not row.error:
        out.append(f"{row.host}: GPU memory not read: {row.gpu_error}")
    return out


def table(rows: list[Row]) -> str:
    """The fixed-width table, then one line per problem (unreachable, unhealthy, drift, the GPU query)."""
    body = [COLUMNS, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
    extra = [n for r in rows for n in notes(r)]
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def row_dict(row: Row) -> dict[str, Any]:
    """One row as ``--json`` prints it (stable keys; docs/status.md lists them)."""
    return {
        "host": row.host, "address": row.address, "profile": row.profile, "service": row.service,
        "reachable": row.error is None, "error": row.error,
        "unit": {"state": row.unit, "since": row.unit_since},
        "release": {"id": row.release, "rung": row.rung},
        "image": row.image, "vllm_version": row.vllm,
        "drift": row.drift.drifted, "drift_detail": row.drift.detail,
        "healthy": row.healthy, "health_detail": row.health, "via": row.via,
        "requests_running": row.running, "requests_waiting": row.waiting,
        "kv_cache_usage": row.kv_cache, "requests_succeeded": row.success,
        "gpus": [{"index": g.index, "name": g.name, "memory_used_mib": g.used_mib, "memory_total_mib": g.total_mib}
                 for g in row.gpus],
        "gpu_error": row.gpu_error, "ok": row.ok,
    }


def as_json(rows: list[Row]) -> str:
    """``--json``: a list of :func:`row_dict` objects, in inventory order."""
    return json.dumps([row_dict(r) for r in rows], indent=2, sort_keys=True) + "\n"


def exit_status(rows: list[Row]) -> int:
    """0: every host reachable, active, healthy and current; 1: a host unreachable, not active or unhealthy;
    3: every host serves healthy but at least one drifted (or its drift could not be told)."""
    if any(r.error or not r.unit_active or r.healthy is not True for r in rows):
        return EXIT_UNHEALTHY
    if any(r.drift.drifted is not False for r in rows):
        return EXIT_DRIFT
    return EXIT_OK


__all__ = ["Metrics", "GpuMemory", "Observed", "Wanted", "Drift", "Row", "parse_metrics", "parse_sample",
           "parse_gpu_memory", "parse_systemctl_show", "unit_exec_args", "split_docker_args", "flag_values",
           "describe_diff", "wanted_release", "decide_drift", "make_row", "unreachable_row", "table", "as_json",
           "row_dict", "exit_status", "GPU_MEMORY_QUERY"]
