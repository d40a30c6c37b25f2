"""Stage 5, service: one systemd unit per served model, running vLLM in Docker with the planned flags.

The unit restarts only when the unit, the API key, the image or the weights changed; systemd reloads units
only when the unit file changed (a reload can detach running GPU containers: NVIDIA/nvidia-container-toolkit#48).
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from ..preflight import deadline_s
from ..service import SECRETS_DIR, render_unit, service_for
from .common import fit_host, record_change, recorded_changes, secret_file


@deploy("Service")
def service() -> None:
    """Install /etc/systemd/system/vllm-<profile>.service and its root-only env file, then start it, or restart
    it when something it runs changed."""
    fit = fit_host("service")
    if fit is None:
        return
    s, p = fit
    svc = service_for(s, p)

    files.directory(name="Create /etc/vlmfleet", path="/etc/vlmfleet", mode="755")
    files.directory(name=f"Create {SECRETS_DIR} (root only)", path=SECRETS_DIR, mode="700", user="root", group="root")
    if s.get("api_key_file"):
        key_src = str(Path(s["api_key_file"]).expanduser())
        env = secret_file(name=f"Install the API key for {svc.name} (VLLM_API_KEY, 0600)", src=key_src,
                          dest=svc.env_file, line_format="VLLM_API_KEY={secret}")
        secret_file(name=f"Install the health check's credentials for {svc.name} (0600)", src=key_src,
                    dest=svc.auth_file, line_format="Authorization: Bearer {secret}")
    else:
        env = files.put(name=f"Install {svc.env_file} (no API key configured)", dest=svc.env_file, mode="600",
                        src=StringIO("# api_key_file is unset: this server accepts requests without a key\n"))
        files.file(name=f"Remove {svc.auth_file}", path=svc.auth_file, present=False)

    unit = files.put(
        name=f"Install {svc.unit}",
        src=StringIO(render_unit(svc, p, s, deadline_s(s, p.model.id))),
        dest=f"/etc/systemd/system/{svc.unit}",
        mode="644",
    )
    systemd.daemon_reload(name="Reload systemd units (the unit changed)", _if=unit.did_change)

    was_running = (host.get_fact(SystemdStatus) or {}).get(svc.unit, False)
    start = systemd.service(name=f"Enable and start {svc.unit}", service=svc.unit, running=True, enabled=True)
    record_change("service", start)
    if was_running:
        changed = [unit, env, *recorded_changes("image", "weights")]
        restart = systemd.service(name=f"Restart {svc.unit} (unit, key, image or weights changed)", service=svc.unit,
                                  restarted=True, _if=any_changed(*changed))
        record_change("service", restart)
    else:
        host.noop(f"{svc.unit} was not running: started, no restart needed")
