"""Stage 5, service: one systemd unit per host, running vLLM in Docker with the planned flags.

The unit restarts only when the unit, the API key, the image or the weights changed; systemd reloads units
only when a unit file changed (a reload can detach running GPU containers: NVIDIA/nvidia-container-toolkit#48).
A host that left a profile has that profile's unit stopped, disabled and removed before the new one starts,
so the GPUs and the port are free for it.
"""

from __future__ import annotations

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from ..config import STATE_DIR, UNIT_DIR, HostConfig, service_files
from ..facts import VlmfleetUnits
from ..planner import Plan
from ..service import plan_record, render_unit
from .common import secret_file


def retire_other_units(cfg: HostConfig) -> list:
    """Stop, disable and remove every vlmfleet unit on the host other than this profile's (a profile switch):
    its container goes with it (``docker run --rm``; removed by force if it lingers), and its env, auth, plan
    and health files. The old weights stay in model_dir. Returns the operations that removed something."""
    ours = cfg.paths.unit_name
    others = [u for u in host.get_fact(VlmfleetUnits) or [] if u != ours]
    if not others:
        return []
    ops = []
    for unit in others:
        name = unit.removesuffix(".service")
        ops.append(systemd.service(name=f"Stop and disable {unit} (this host now serves {cfg.vlm_profile})",
                                   service=unit, running=False, enabled=False))
        ops.append(server.shell(name=f"Remove the {name} container if it lingers",
                                commands=[f"docker rm --force {name} >/dev/null 2>&1 || true"]))
        for path in service_files(name).values():
            ops.append(files.file(name=f"Remove {path}", path=path, present=False))
    return ops


@deploy("Service")
def service(cfg: HostConfig, plan: Plan, react_to: list) -> list:
    """Install /etc/systemd/system/vllm-<profile>.service, its root-only env file and the plan record, retire the
    unit of a profile the host left, then start the unit, or restart it when something it runs changed.
    Returns the operations that (re)started the server, for the health stage.

    + cfg: the host's configuration (``cfg.paths.unit_path``, ``cfg.api_key_file``, ...)
    + plan: the preflight plan, rendered into the unit's ``vllm serve`` flags
    + react_to: operations of earlier stages whose change restarts the server, e.g. the image pull
    """
    paths = cfg.paths
    retired = retire_other_units(cfg)

    files.directory(name=f"Create {paths.config_dir}", path=paths.config_dir, mode="755")
    files.directory(name=f"Create {paths.secrets_dir} (root only)", path=paths.secrets_dir, mode="700",
                    user="root", group="root")
    files.directory(name=f"Create {paths.state_dir}", path=paths.state_dir, mode="755")
    if cfg.api_key_file:
        env = secret_file(name="Install the server's API key (VLLM_API_KEY, 0600)", src=cfg.api_key_file,
                          dest=paths.env_file, line_format="VLLM_API_KEY={secret}")
        secret_file(name="Install the health check's credentials (0600)", src=cfg.api_key_file,
                    dest=paths.auth_file, line_format="Authorization: Bearer {secret}")
    else:
        env = files.put(name="Install the server's env file (no API key: loopback or api_allow_unauthenticated)",
                        dest=paths.env_file, mode="600",
                        src=StringIO("# api_key_file is unset: this server accepts requests without a key\n"))
        files.file(name="Remove the health check's credentials (no API key)", path=paths.auth_file, present=False)

    files.put(name=f"Record the plan in {STATE_DIR}/vllm-<profile>.plan.json (restarts nothing)", src=StringIO(plan_record(cfg, plan)),
              dest=paths.plan_file, mode="644")
    unit = files.put(name=f"Install the vLLM unit ({UNIT_DIR}/vllm-<profile>.service)", src=StringIO(render_unit(cfg, plan)), dest=paths.unit_path,
                     mode="644")
    systemd.daemon_reload(name="Reload systemd units (a unit changed)", _if=any_changed(unit, *retired))

    was_running = (host.get_fact(SystemdStatus) or {}).get(paths.unit_name, False)
    start = systemd.service(name="Enable and start the vLLM unit", service=paths.unit_name, running=True,
                            enabled=True)
    if not was_running:
        host.noop(f"{paths.unit_name} was not running: started, no restart needed")
        return [start]
    restart = systemd.service(name="Restart the vLLM unit (unit, key, image or weights changed)",
                              service=paths.unit_name, restarted=True, _if=any_changed(unit, env, *react_to))
    return [start, restart]
