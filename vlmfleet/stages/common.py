"""What every stage shares: building the host's configuration once, and two small operations.

pyinfra runs deploy code at planning time against the host *before* the run. ``host_config()`` turns the host's
merged data into one checked, immutable :class:`~vlmfleet.config.HostConfig`; ``vlmfleet.stages.run`` passes it
(and the preflight plan) to every stage as arguments, and each stage returns the operations a later stage must
react to.
"""

from __future__ import annotations

import hashlib
import shlex
from secrets import token_hex
from io import BytesIO
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import Sha256File
from pyinfra.operations import apt, server

from .. import config
from ..config import STATE_DIR, UPLOAD_DIR, HostConfig, Problem

DAEMON_JSON = "/etc/docker/daemon.json"


def data_sources() -> dict[str, str]:
    """Where each of this host's data keys came from, for error messages: ``--data``, the inventory's host
    data, ``group_data/<group>.py`` (or the inventory's group), ``group_data/all.py``."""
    inv = host.inventory
    out: dict[str, str] = {}
    for key in inv.get_data():
        out[key] = "group_data/all.py"
    for group in host.groups:
        for key in inv.get_group_data(group):
            out[key] = f"group {group}"
    for key in inv.get_host_data(host.name):
        out[key] = "inventory host data"
    for key in inv.get_override_data():
        out[key] = "--data"
    return out


def profile_groups() -> dict[str, str]:
    """The host's groups that select a profile (``{"qwen7b": "qwen7b"}``), unless its own data picks one."""
    inv = host.inventory
    if "vlm_profile" in inv.get_host_data(host.name) or "vlm_profile" in inv.get_override_data():
        return {}
    return {g: inv.get_group_data(g)["vlm_profile"] for g in host.groups
            if inv.get_group_data(g).get("vlm_profile")}


def host_config() -> tuple[HostConfig | None, list[Problem]]:
    """This host's configuration, or the problems with its data (built once per host per run)."""
    data = host.data.dict()
    ssh = host.connector_cls.__name__ == "SSHConnector"  # @local, @docker...: no SSH port to keep clear
    try:
        ssh_port = int(data.get("ssh_port") or 22) if ssh else None
    except (TypeError, ValueError):
        ssh_port = 22
    override = host.inventory.get_override_data()
    beneath = {k: v for k, v in data.items() if k not in override}
    beneath.update({k: v for k, v in {**host.inventory.get_data(), **host.inventory.get_groups_data(host.groups),
                                      **host.inventory.get_host_data(host.name)}.items() if k in override})
    return config.build(host.name, data, sources=data_sources(), ssh_port=ssh_port, profile_groups=profile_groups(),
                        beneath=beneath, roles=host_roles())


def config_or_fail() -> tuple[HostConfig | None, dict]:
    """This host's configuration and the bound of its commands (``{"_timeout": ...}``); when its data has
    problems, the preflight gate fails the host naming each key and fix (nothing changes) and the configuration
    is None. For the deploys that run no stages of their own: rollback, monitoring, gateway."""
    from .preflight import preflight

    cfg, problems = host_config()
    bound = {"_timeout": cfg.command_timeout_s if cfg else config.BY_KEY["command_timeout_s"].default}
    if cfg is None:
        preflight(cfg, problems, **bound)
    return cfg, bound


def host_roles() -> tuple[str, ...]:
    """The host's jobs besides serving: its groups among ``monitoring`` and ``gateway`` (vlmfleet.fleet)."""
    from ..fleet import OPS_GROUPS

    return tuple(g for g in OPS_GROUPS if g in host.groups)


# ---- operations ------------------------------------------------------------------------------------------
@operation(is_idempotent=False)
def fail_host(reasons: list[str]):
    """Fail this host now, before any change, printing each reason on its own line.

    + reasons: e.g. ``["h2: data key 'api_port' = 22 (--data): is this host's SSH port — fix: api_port = 8000"]``
    """
    text = "\n".join(reasons)
    yield f"printf '%s\\n' {shlex.quote(text)} >&2; exit 1"


@operation()
def secret_file(src: str, dest: str, mode: str = "600", line_format: str = "{secret}"):
    """Upload a secret from the control machine without ever printing it (not even with --diff).

    + src: local path of the secret, e.g. ``secrets/api-key``; its first line is the secret
    + dest: remote path in a root-only folder, e.g. ``/etc/vlmfleet/secrets/vllm-qwen7b.env``
    + line_format: the line written, e.g. ``"VLLM_API_KEY={secret}"`` for an env file
    """
    secret = Path(src).expanduser().read_text().splitlines()[0].strip()
    body = (line_format.format(secret=secret) + "\n").encode()
    want = hashlib.sha256(body).hexdigest()
    have = host.get_fact(Sha256File, path=dest)
    if have == want:
        host.noop(f"{dest} is already current (contents not shown)")
        return
    if have is not None:
        logger.info(f"    [{host.name}] {dest}: secret changed (contents not shown)")
    # The SSH user uploads into a 0700 folder of its own; root moves it into dest, whose folder is 0700 too
    # (callers create it), so no other user can read the secret at any moment.
    # Not under /var/tmp: it is world-writable, and `install -d` follows a symlink someone planted there.
    updir = UPLOAD_DIR
    yield f'install -d -m 0755 {STATE_DIR} && install -d -m 0700 -o "${{SUDO_USER:-$(id -un)}}" {updir}'
    # a random temp name: a hash of the body would put a fingerprint of the secret into a command line
    yield FileUploadCommand(BytesIO(body), dest, remote_temp_filename=f"{updir}/{token_hex(8)}")
    yield f"chown root:root {shlex.quote(dest)} && chmod {shlex.quote(mode)} {shlex.quote(dest)}"


@operation()
def checked_file(text: str, dest: str, check: str, mode: str = "644"):
    """Replace ``dest`` with ``text`` only once ``check`` accepts it: the new file is uploaded beside ``dest``,
    checked there by the host's own tool, then moved into place (a rejected file is removed; ``dest`` stays).

    + text: the file's contents, e.g. ``monitoring.prometheus_config(...)``
    + dest: e.g. ``/etc/prometheus/prometheus.yml``
    + check: a command with ``{path}`` for the new file, e.g. ``promtool check config {path}``
    """
    body = text.encode()
    if host.get_fact(Sha256File, path=dest) == hashlib.sha256(body).hexdigest():
        host.noop(f"{dest} is already current")
        return
    new = f"{dest}.vlmfleet-new"
    checked = check.format(path=shlex.quote(new))
    yield FileUploadCommand(BytesIO(body), new)
    yield (f"if ! out=$({checked} 2>&1); then rm -f {shlex.quote(new)}; printf '%s\\n' "
           f"{shlex.quote(f'{host.name}: {dest} not replaced: `{check.format(path=new)}` rejects the new file:')} "
           '"$out" >&2; exit 1; fi')
    yield f"chmod {shlex.quote(mode)} {shlex.quote(new)} && mv -f {shlex.quote(new)} {shlex.quote(dest)}"


def bounded(command: str, timeout_s: int, what: str, key: str) -> str:
    """``command`` killed after ``timeout_s`` seconds (SIGTERM, then SIGKILL 30 s later), saying so on stderr.

    + command: a shell command line, e.g. ``docker pull --quiet vllm/vllm-openai:v0.33.0``
    + what: what it does, for the message, e.g. ``docker pull vllm/vllm-openai:v0.33.0``
    + key: the data key that sets the limit, e.g. ``pull_timeout_s``
    """
    message = shlex.quote(f"{what}: no result after {timeout_s}s ({key}); the network or the far end hangs — "
                          f"fix: check it, or raise {key}")
    return (f"timeout -k 30 {timeout_s} {command}; rc=$?; "
            f"if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo {message} >&2; fi; exit $rc")


def pyinfra_timeout(remote_s: int) -> int:
    """The ``_timeout`` of an operation whose command bounds itself at ``remote_s``: pyinfra waits a minute more, so
    the command's own message arrives first; pyinfra's limit stays a backstop for a host that stops answering."""
    return remote_s + 60


def bounded_shell(cfg: HostConfig, key: str, *, name: str, command: str, what: str):
    """A ``server.shell`` operation running ``command`` killed on the host after the limit ``cfg.<key>``, and given
    up by pyinfra a minute later.

    + key: the data key of the limit, e.g. ``"pull_timeout_s"``
    + what: what the command does, for the message, e.g. ``"docker pull vllm/vllm-openai:v0.33.0"``
    """
    limit = int(getattr(cfg, key))
    return server.shell(name=name, commands=[bounded(command, limit, what, key)], _timeout=pyinfra_timeout(limit))


def bounded_apt_update(cfg: HostConfig, name: str, **kwargs):
    """``apt_update`` with its tries bounded by ``cfg.apt_timeout_s`` and pyinfra's backstop beyond them.

    + kwargs: e.g. ``cache_time=3600``, ``_if=repo.did_change``
    """
    return apt_update(name=name, timeout_s=cfg.apt_timeout_s, _timeout=apt_update_bound(cfg.apt_timeout_s), **kwargs)


def apt_update_bound(timeout_s: int, tries: int = 3) -> int:
    """The ``_timeout`` of an apt update whose tries are each bounded by ``timeout_s`` (kill grace and pause included)."""
    return pyinfra_timeout(tries * (timeout_s + 15))


def apt_update_command(timeout_s: int, tries: int = 3) -> str:
    """``apt-get update`` bounded in time and retried: apt has been seen to hang for good with no network
    traffic (its http method idle), and a deploy must not wait forever on one host.

    + timeout_s: each try's limit, e.g. 600; the try is killed after it (SIGTERM, then SIGKILL 10 s later)
    """
    return (f"for try in $(seq 1 {tries}); do timeout -k 10 {timeout_s} apt-get update -q && exit 0; "
            f'echo "apt-get update: try $try of {tries} failed or hung for {timeout_s}s" >&2; sleep 5; done; '
            f"echo 'apt-get update failed {tries} times: check the host can reach its apt sources' >&2; exit 1")


@operation(is_idempotent=False)
def apt_update(timeout_s: int, cache_time: int | None = None):
    """Update apt's package lists, each try bounded by ``timeout_s`` (3 tries), skipped when they were updated
    less than ``cache_time`` seconds ago: pyinfra's own ``apt.update`` decides that (its stamp file, its noop),
    only its unbounded ``apt-get update`` is replaced.

    + timeout_s: e.g. ``cfg.apt_timeout_s``
    + cache_time: e.g. 3600; None: always update
    """
    stamp = None
    for command in apt.update._inner(cache_time=cache_time):
        if str(command) == "apt-get update":
            yield apt_update_command(timeout_s)
        else:
            stamp = command
            yield command
    if stamp is None and cache_time is None:
        yield f"touch {apt.APT_UPDATE_FILENAME}"  # as with a cache_time: the next cached update sees this one
