"""The systemd unit that runs one served model in Docker, and the plan record beside it: pure builders, tested
by exact value.

``docker run`` gets: the GPUs (``--gpus``, unless nvidia_runtime is off), ``--ipc=host`` (tensor parallel needs
shared memory), the host network, the weights read-only, the API key from a root-only env file (never in argv),
``HF_HUB_OFFLINE=1``, the allocator setting and the NCCL settings of the interconnect — and no ``--privileged``.

The unit holds only what systemd and docker need, so a change of planner constants (KV estimates, the health
deadline) rewrites the plan record (``RemotePaths.plan_file``, read by the health report) and restarts nothing.
"""

from __future__ import annotations

import json
import re

from jinja2 import Environment, StrictUndefined

from .config import UNIT_MARKER, HostConfig
from .flags import serve_args, serve_env
from .paths import template
from .planner import Plan


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


STOP_TIMEOUT_S = 30


def render_unit(cfg: HostConfig, plan: Plan) -> str:
    """The unit file: the marker line, the profile, and what systemd runs. No plan numbers (see the module doc)."""
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    with open(template("service/vllm.service.j2")) as fh:
        tmpl = env.from_string(fh.read())
    return tmpl.render(
        marker=UNIT_MARKER, name=cfg.service, plan_file=cfg.paths.plan_file, served_name=cfg.served_name, profile=cfg.vlm_profile,
        exec_start=exec_line(docker_run_args(cfg, plan)), stop_timeout=STOP_TIMEOUT_S,
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
