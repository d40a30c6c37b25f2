"""Stage 3, weights: fetched by the real clients into model_dir, resumable, verified file by file."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, pip, server

from .. import weights as w
from ..facts import CommandJson
from ..paths import PACKAGE_DIR
from .common import fit_host, record_change, secret_file


@deploy("Weights")
def weights() -> None:
    """Install huggingface_hub and modelscope (pinned) into the deploy's virtualenv, then fetch the profile's
    checkpoint from ``weights_source`` unless a verified copy is already there. A corrupted or partial copy is
    fetched again (resuming partial files) and verified against the hub's hashes before anything serves it."""
    fit = fit_host("weights")
    if fit is None:
        return
    s, p = fit
    model = p.model
    t = w.tools(s)

    files.directory(name=f"Create {s['tools_dir']}/bin", path=f"{s['tools_dir']}/bin", mode="755")
    pip.venv(name=f"Create the weights tools virtualenv {t['venv']}", path=t["venv"], python="python3")
    pip.packages(
        name=f"Install huggingface_hub {s['huggingface_hub_version']} and modelscope {s['modelscope_version']}",
        packages=[f"huggingface_hub=={s['huggingface_hub_version']}", f"modelscope=={s['modelscope_version']}"],
        pip=f"{t['venv']}/bin/pip", extra_install_args=w.pip_args(s),
    )
    files.put(name="Install vlmfleet-fetch", src=str(PACKAGE_DIR / "remote/vlmfleet_fetch.py"),
                     dest=t["fetch"], mode="755")
    if s.get("hf_token_file"):
        files.directory(name="Create /etc/vlmfleet/secrets (root only)", path="/etc/vlmfleet/secrets", mode="700",
                        user="root", group="root")
        secret_file(name="Install the hub token (0600)", src=s["hf_token_file"], dest=w.TOKEN_FILE)
    files.directory(name=f"Create {s['model_dir']}", path=s["model_dir"], mode="755")

    state = host.get_fact(CommandJson, command=w.fetch_command(s, model, check=True)) or {"state": "missing"}
    if state.get("state") == "verified":
        host.noop(f"{model.hf} is already verified in {w.dest(s, model)} ({state.get('commit', '')[:12]})")
        return
    if state.get("state") == "corrupt":
        host.noop(f"{w.dest(s, model)}: {', '.join(state.get('bad', []))} failed verification: fetching again")
    fetch = server.shell(
        name=f"Fetch {w.source_repo(model, s['weights_source'])} from {s['weights_source']} "
             f"({w.endpoint(s)}) and verify every file",
        commands=[w.fetch_command(s, model)],
    )
    record_change("weights", fetch)
