"""The systemd unit that runs one served model in Docker: pure builders, tested by exact value.

``docker run`` gets: the GPUs (``--gpus``, unless nvidia_runtime is off), ``--ipc=host`` (tensor parallel needs
shared memory), the host network, the weights read-only, the API key from a root-only env file (never in argv),
``HF_HUB_OFFLINE=1``, the allocator setting and the NCCL settings of the interconnect — and no ``--privileged``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, StrictUndefined

from .flags import serve_args, serve_env
from .paths import template
from .planner import Plan
from .settings import image_ref
from .weights import dest as weights_dest

SECRETS_DIR = "/etc/vlmfleet/secrets"


@dataclass(frozen=True)
class Service:
    name: str  # unit and container name, e.g. vllm-qwen7b
    served_name: str
    repo_dir: str  # e.g. Qwen2.5-VL-7B-Instruct
    host_weights: str  # e.g. /srv/models/Qwen2.5-VL-7B-Instruct
    image: str
    port: int
    env_file: str
    auth_file: str

    @property
    def unit(self) -> str:
        return f"{self.name}.service"


def service_for(settings: dict[str, Any], plan: Plan) -> Service:
    name = f"vllm-{settings['vlm_profile'].replace('_', '-')}"
    return Service(
        name=name,
        served_name=settings.get("served_model_name") or plan.model.id,
        repo_dir=plan.model.repo_dir,
        host_weights=weights_dest(settings, plan.model),
        image=image_ref(settings),
        port=int(settings["api_port"]),
        env_file=f"{SECRETS_DIR}/{name}.env",
        auth_file=f"{SECRETS_DIR}/{name}.auth",
    )


def gpus_flag(settings: dict[str, Any]) -> list[str]:
    if not settings.get("nvidia_runtime"):
        return []
    devices = settings.get("gpu_devices", "all")
    if devices == "all":
        return ["--gpus", "all"]
    return ["--gpus", f'"device={",".join(str(d) for d in devices)}"']


def docker_run_args(svc: Service, plan: Plan, settings: dict[str, Any]) -> list[str]:
    """``docker run ...`` for the unit's ExecStart, as a list (the unit quotes it)."""
    args = ["/usr/bin/docker", "run", "--rm", "--name", svc.name, "--network", "host", "--ipc", "host"]
    args += gpus_flag(settings)
    args += ["--env-file", svc.env_file]
    for key, value in serve_env(plan).items():
        args += ["--env", f"{key}={value}"]
    args += ["--label", f"vlmfleet.profile={settings['vlm_profile']}"]
    args += ["--volume", f"{svc.host_weights}:/models/{svc.repo_dir}:ro"]
    vllm = serve_args(plan, f"/models/{svc.repo_dir}", svc.served_name, host=settings["api_bind"], port=svc.port)
    assert vllm[:2] == ["vllm", "serve"]
    args += ["--entrypoint", "vllm", svc.image, *vllm[1:]]
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


def render_unit(svc: Service, plan: Plan, settings: dict[str, Any], deadline_s: int) -> str:
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=True)
    with open(template("service/vllm.service.j2")) as fh:
        tmpl = env.from_string(fh.read())
    return tmpl.render(
        svc=svc, plan=plan, profile=settings["vlm_profile"],
        exec_start=exec_line(docker_run_args(svc, plan, settings)),
        stop_timeout=30, deadline_s=deadline_s,
    )
