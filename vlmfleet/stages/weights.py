"""Stage 3, weights: fetched by the real clients into model_dir, resumable, verified file by file."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, pip

from .. import weights as w
from ..config import HostConfig
from ..facts import CommandJson
from ..paths import PACKAGE_DIR
from ..planner import Plan
from .common import bounded_shell, secret_file


@deploy("Weights")
def weights(cfg: HostConfig, plan: Plan) -> list:
    """Install huggingface_hub and modelscope (pinned) into the deploy's virtualenv, then fetch the profile's
    checkpoint from ``weights_source`` unless a verified copy is already there. A corrupted or partial copy is
    fetched again (resuming partial files) and verified against the hub's hashes before anything serves it.
    Returns the fetch when one runs (the service restarts on new weights).

    + cfg: the host's configuration (source, endpoint, revision, ``cfg.paths.weights``)
    + plan: the preflight plan; ``plan.model`` is the checkpoint
    """
    paths = cfg.paths
    model = plan.model

    files.directory(name=f"Create {paths.tools_dir}/bin", path=f"{paths.tools_dir}/bin", mode="755")
    pip.venv(name=f"Create the weights tools virtualenv {paths.venv}", path=paths.venv, python="python3")
    pip.packages(
        name=f"Install huggingface_hub {cfg.huggingface_hub_version} and modelscope {cfg.modelscope_version}",
        packages=[f"huggingface_hub=={cfg.huggingface_hub_version}", f"modelscope=={cfg.modelscope_version}"],
        pip=f"{paths.venv}/bin/pip", extra_install_args=w.pip_args(cfg),
    )
    files.put(name="Install vlmfleet-fetch", src=str(PACKAGE_DIR / "remote/vlmfleet_fetch.py"),
              dest=paths.fetch_bin, mode="755")
    if cfg.hf_token_file:
        files.directory(name=f"Create {paths.secrets_dir} (root only)", path=paths.secrets_dir, mode="700",
                        user="root", group="root")
        secret_file(name="Install the hub token (0600)", src=cfg.hf_token_file, dest=paths.token_file)
    else:
        files.file(name="Remove the hub token (hf_token_file is unset)", path=paths.token_file, present=False)
    files.directory(name=f"Create {cfg.model_dir}", path=cfg.model_dir, mode="755")

    state = host.get_fact(CommandJson, command=w.fetch_command(cfg, check=True)) or {"state": "missing"}
    if state.get("state") == "verified":
        host.noop(f"{model.hf} is already verified in {paths.weights} ({state.get('commit', '')[:12]})")
        return []
    if state.get("state") == "corrupt":
        host.noop(f"{paths.weights}: {', '.join(state.get('bad', []))} failed verification: fetching again")
    fetch = bounded_shell(cfg, "fetch_timeout_s", name="Fetch the profile's checkpoint and verify every file",
                          command=w.fetch_command(cfg), what=f"fetching {model.hf}")
    return [fetch]
