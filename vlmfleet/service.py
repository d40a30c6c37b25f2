"""The systemd unit that runs one served model in Docker, and the plan record beside it: pure builders, tested
by exact value.

``docker run`` gets: the GPUs (``--gpus``, unless nvidia_runtime is off), ``--ipc=host`` (tensor parallel needs
shared memory), the host network, the weights read-only, the API key from a root-only env file (never in argv),
``HF_HUB_OFFLINE=1``, the allocator setting and the NCCL settings of the interconnect — and no ``--privileged``.

The unit holds only what systemd and docker need, so a change of planner constants (KV estimates, the health
deadline) rewrites the plan record (``RemotePaths.plan_file``, read by the health report) and restarts nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex

from .config import UNIT_MARKER, HostConfig
from .flags import serve_args, serve_env
from .paths import render
from .planner import Plan
from .weights import fetch_argv


def gpus_flag(cfg: HostConfig) -> list[str]:
    if not cfg.nvidia_runtime:
        return []
    if cfg.gpu_devices == "all":
        return ["--gpus", "all"]
    return ["--gpus", f'"device={",".join(str(d) for d in cfg.gpu_devices)}"']


def docker_run_args(cfg: HostConfig, plan: Plan) -> list[str]:
    """``docker run ...`` for the unit's ExecStart, as a list (the unit quotes it)."""
    paths = cfg.paths
    args = ["/usr/bin/docker", "run", "--rm", "--name", cfg.service, "--network", "host", "--ipc", "host"]
    args += gpus_flag(cfg)
    args += ["--env-file", paths.env_file]
    for key, value in serve_env(plan).items():
        args += ["--env", f"{key}={value}"]
    args += ["--label", f"vlmfleet.profile={cfg.vlm_profile}"]
    args += ["--volume", f"{paths.weights}:{paths.container_weights}:ro"]
    vllm = serve_args(plan, paths.container_weights, cfg.served_name, host=cfg.api_bind, port=cfg.api_port)
    assert vllm[:2] == ["vllm", "serve"]
    args += ["--entrypoint", "vllm", cfg.image_ref, *vllm[1:]]
    return args


_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def systemd_quote(arg: str) -> str:
    """One ExecStart word: %-specifiers and $-expansion escaped, quoted when it holds anything special."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(arg) and "%" not in arg and "$" not in arg:
        return arg
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(args: list[str]) -> str:
    """ExecStart value, continued over lines before each option for a readable unit."""
    lines: list[list[str]] = [[]]
    for arg in args:
        if arg.startswith("-") and lines[-1]:
            lines.append([])
        lines[-1].append(systemd_quote(arg))
    return " \\\n    ".join(" ".join(words) for words in lines)


def render_unit(cfg: HostConfig, plan: Plan) -> str:
    """The unit file: the marker line, the profile, and what systemd runs. No plan numbers (see the module doc)."""
    return render(
        "service/vllm.service.j2", marker=UNIT_MARKER, name=cfg.service, plan_file=cfg.paths.plan_file,
        served_name=cfg.served_name, profile=cfg.vlm_profile, exec_start=exec_line(docker_run_args(cfg, plan)),
        stop_timeout=cfg.stop_timeout_s,
        weights_check=" ".join(systemd_quote(a) for a in fetch_argv(cfg, check=True, require=True, verify="size")),
    )


def plan_record(cfg: HostConfig, plan: Plan) -> str:
    """``/var/lib/vlmfleet/<service>.plan.json``: what the planner decided for this host, for people and the
    health report. Changing it restarts nothing."""
    record = {
        "service": cfg.service, "profile": cfg.vlm_profile, "served_name": cfg.served_name,
        "model": plan.model.id, "gpus": plan.inventory.describe(), "vllm": plan.version.version,
        "tp": plan.tp, "max_model_len": plan.max_model_len, "kv_capacity_tokens": plan.kv_capacity_tokens,
        "max_concurrent_max_length_requests": round(plan.concurrency, 2), "health_deadline_s": cfg.deadline_s,
        "image": cfg.image_ref, "weights": cfg.paths.weights,
    }
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def health_argv(cfg: HostConfig, metrics, deadline: int | None = None, quick: bool = False) -> list[str]:
    """The health checker's argv: no secret in it (the key is read from the root-only auth file).

    + metrics: the version's metric names, e.g. ``plan.version.metrics``
    + deadline: seconds to wait for a healthy server; None leaves ``--deadline`` for the caller to add
    """
    paths = cfg.paths
    args = [paths.health_bin, "--url", health_url(cfg), "--served", cfg.served_name, "--unit", paths.unit_name]
    if deadline is not None:
        args += ["--deadline", str(deadline)]
    if cfg.api_key_file:
        args += ["--auth-file", paths.auth_file]
    if quick:
        args.append("--quick")
    else:
        args += ["--image", paths.health_image, "--metrics", ",".join(metrics)]
    return args


def health_url(cfg: HostConfig) -> str:
    """Where the checker on the host reaches the server: the address vLLM binds (loopback when it binds all)."""
    bind = ipaddress.ip_address(cfg.api_bind)
    if bind.is_unspecified:
        bind = ipaddress.ip_address("127.0.0.1" if bind.version == 4 else "::1")
    return f"http://[{bind}]:{cfg.api_port}" if bind.version == 6 else f"http://{bind}:{cfg.api_port}"


def release_id(unit_text: str) -> str:
    """A release's id: the first 12 hex digits of its unit's sha256 (the unit holds image, flags and weights)."""
    return hashlib.sha256(unit_text.encode()).hexdigest()[:12]


def release_reasons(cfg: HostConfig, plan: Plan, status: dict, rungs: list,
                    unit_text: str | None = None) -> tuple[list[str], Plan | None]:
    """Why the host's active release is not the one this data wants (empty: it is current), and the plan whose
    record belongs in ``plan_file`` when it is (None otherwise). The service stage restarts for these reasons;
    ``vlmfleet status`` calls them drift. A host on a ladder rung of the wanted release, its unit file that
    rung's, is current. Whether the unit runs is not judged here.

    + plan: the preflight plan, e.g. ``verdict.plan``
    + status: the ReleaseStatus fact, e.g. ``{"active": {"id": "3f2a9c1b0d4e", "rung": 2}, "unit_sha256": "..."}``;
      ``{}`` before the first release
    + rungs: the startup ladder, ``ladder.startup_ladder(plan, cfg.startup_ladder_steps)``
    + unit_text: ``render_unit(cfg, plan)`` when the caller has it (rendered here otherwise)
    """
    unit_text = render_unit(cfg, plan) if unit_text is None else unit_text
    rid = release_id(unit_text)
    active = status.get("active") or {}
    reasons: list[str] = []
    if active.get("id") != rid:
        reasons.append(f"release {active.get('id') or 'none'} -> {rid}")
    elif active.get("failed"):
        reasons.append(f"release {rid} failed last time")
    elif active.get("env_not_applied"):
        reasons.append(f"release {rid} with its new env file failed last time (the old one serves)")
    else:
        rung = int(active.get("rung") or 0)
        by_rung = {r.rung: r for r in rungs}
        want = render_unit(cfg, by_rung[rung].plan) if rung in by_rung else unit_text
        if rung and rung not in by_rung:
            reasons.append(f"the ladder no longer has rung {rung}")
        if status.get("unit_sha256") != hashlib.sha256(want.encode()).hexdigest():
            reasons.append(f"{cfg.paths.unit_path} differs from release {rid}")
        return reasons, by_rung[rung].plan if rung in by_rung else plan
    return reasons, None


def release_manifest(cfg: HostConfig, plan: Plan, unit_text: str, rungs: list) -> str:
    """``<release_dir>/candidate/release.json``: what the release is and where vlmfleet-release installs it.
    No secret: the env file travels beside it (0600), the health check reads the key from its auth file.

    + rungs: the startup ladder (``ladder.startup_ladder``); rung N's unit and plan are ``rung-N.service`` and
      ``rung-N.plan.json`` beside this file
    """
    paths = cfg.paths
    record = {
        "id": release_id(unit_text), "service": cfg.service, "profile": cfg.vlm_profile,
        "unit_name": paths.unit_name, "unit_path": paths.unit_path, "env_file": paths.env_file,
        "auth_file": paths.auth_file if cfg.api_key_file else None, "plan_file": paths.plan_file,
        "health_result": paths.health_result, "health": health_argv(cfg, plan.version.metrics),
        "deadline_s": cfg.deadline_s, "stop_timeout_s": cfg.stop_timeout_s,
        "image": cfg.image_ref, "vllm": plan.version.version, "weights": paths.weights,
        "weights_revision": cfg.weights_revision, "model": plan.model.id,
        "flags": shlex.join(docker_run_args(cfg, plan)[docker_run_args(cfg, plan).index(cfg.image_ref) + 1:]),
        "ladder": [{"rung": r.rung, "changes": r.changes, "why": r.why, "only_utilisation": r.only_utilisation,
                    "unit": f"rung-{r.rung}.service", "plan": f"rung-{r.rung}.plan.json"} for r in rungs],
    }
    return json.dumps(record, indent=1, sort_keys=True) + "\n"
