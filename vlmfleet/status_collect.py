"""``vlmfleet status``'s collection: per serving host, a few single commands over one paramiko SSH connection and
HTTP from this machine (``requests``) to /health, /version and /metrics — through an SSH tunnel over the same
connection when the API port is not reachable directly. Hosts are read in parallel, within one time bound.

What the commands print becomes an :class:`~vlmfleet.status.Observed`; ``vlmfleet.status`` judges it. No secret
is read: the env file and the health check's credentials stay on the host (vLLM's /health, /version and
/metrics need no key).
"""

from __future__ import annotations

import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from .fleet import OPS_GROUPS, Member
from .status import GPU_MEMORY_QUERY, Observed, Row, make_row, unreachable_row

#: how long one SSH connect may take (TCP, banner, key exchange and authentication each), at most
CONNECT_TIMEOUT_S = 10.0
#: how long the API port may take to accept a TCP connection before the tunnel is used (``--tunnel auto``)
PROBE_TIMEOUT_S = 2.0
TUNNEL_MODES = ("auto", "always", "never")
#: how long past ``--timeout`` the command waits for a host's row before it writes "no answer" for it
GRACE_S = 5.0


# ---- SSH ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SshTarget:
    """How to reach a host over SSH, from its pyinfra data.

    + hostname: ``ssh_hostname``, else the inventory name, e.g. ``"10.77.0.11"``; port: ``ssh_port``, e.g. 22
    + user: ``ssh_user`` (None: this machine's user); key: ``ssh_key``, e.g. ``"/var/lib/vlmfleet-lab/id_ed25519"``
    + known_hosts: ``ssh_known_hosts_file`` (None: ``~/.ssh/known_hosts``)
    + strict: ``ssh_strict_host_key_checking``: ``"yes"`` refuses a host not in known_hosts; ``"accept-new"``
      (pyinfra's default) accepts it, without writing it down; ``"no"``/``"off"`` accepts any. A changed key is
      always refused.
    + sudo: ``_sudo``: root-only files are read with ``sudo -n``
    """

    hostname: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    key_password: str | None = None
    password: str | None = None
    known_hosts: str | None = None
    strict: str = "accept-new"
    sudo: bool = False
    extra: tuple = ()


def ssh_target(member: Member) -> SshTarget:
    """The member's SSH data as an :class:`SshTarget` (as pyinfra's SSH connector reads it).

    + member: e.g. ``Member("h1", "10.77.0.11", ("qwen7b", "lab"), "qwen7b", {"ssh_user": "vlm", ...})``
    """
    d = member.data
    extra = d.get("ssh_paramiko_connect_kwargs") or {}
    return SshTarget(hostname=str(d.get("ssh_hostname") or member.name), port=int(d.get("ssh_port") or 22),
                     user=d.get("ssh_user") or None, key=d.get("ssh_key") or None,
                     key_password=d.get("ssh_key_password") or None, password=d.get("ssh_password") or None,
                     known_hosts=d.get("ssh_known_hosts_file") or None,
                     strict=str(d.get("ssh_strict_host_key_checking") or "accept-new"), sudo=bool(d.get("_sudo")),
                     extra=tuple(sorted(dict(extra).items())) if isinstance(extra, dict) else ())


def connect(target: SshTarget, timeout: float = CONNECT_TIMEOUT_S):
    """A connected ``paramiko.SSHClient``; raises ``StatusError`` with one line naming the host, what failed and
    the bound (never a traceback).

    + timeout: seconds for each of TCP connect, banner, authentication, e.g. ``10``
    """
    import logging
    import os

    import paramiko

    # paramiko logs a refused tunnel channel at ERROR; with no handler Python would print it: the row says it
    quiet = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in quiet.handlers):
        quiet.addHandler(logging.NullHandler())
    client = paramiko.SSHClient()
    where = f"ssh {target.user + '@' if target.user else ''}{target.hostname}:{target.port}"
    try:
        if target.known_hosts:
            client.load_host_keys(os.path.expanduser(target.known_hosts))
        else:
            client.load_system_host_keys()
    except (OSError, paramiko.SSHException) as exc:
        if target.strict == "yes":
            raise StatusError(f"{where}: cannot read known_hosts {target.known_hosts or '~/.ssh/known_hosts'} "
                              f"({exc}) and ssh_strict_host_key_checking is yes") from None
    # "yes" (and "ask": nobody is there to answer) refuses an unknown host; the others accept it without writing
    # it down; a key that differs from the file's is refused by paramiko in every mode (BadHostKeyException)
    strict = target.strict in ("yes", "ask")
    client.set_missing_host_key_policy(paramiko.RejectPolicy() if strict else _accept_policy(paramiko))
    kwargs: dict[str, Any] = dict(target.extra)
    kwargs.update(hostname=target.hostname, port=target.port, username=target.user, timeout=timeout,
                  banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                  look_for_keys=target.key is None, allow_agent=True)
    if target.key:
        kwargs["key_filename"] = os.path.expanduser(target.key)
    if target.key_password:
        kwargs["passphrase"] = target.key_password
    if target.password:
        kwargs["password"] = target.password
    try:
        client.connect(**kwargs)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise StatusError(f"{where}: its host key changed ({exc.key.get_name()} in known_hosts "
                          f"{target.known_hosts or '~/.ssh/known_hosts'} differs) — fix: check the host; if it "
                          "was reinstalled, remove its old line there") from None
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise StatusError(f"{where}: not in known_hosts {target.known_hosts or '~/.ssh/known_hosts'} and "
                              "ssh_strict_host_key_checking is yes — fix: add its key there "
                              "(ssh-keyscan), as pyinfra would need too") from None
        raise StatusError(f"{where}: {exc.__class__.__name__}: {exc or 'no answer'} (bound {timeout:g}s)") from None
    except (socket.timeout, TimeoutError):
        client.close()
        raise StatusError(f"{where}: no answer within {timeout:g}s") from None
    except OSError as exc:
        client.close()
        raise StatusError(f"{where}: {exc.strerror or exc}") from None
    return client


def _accept_policy(paramiko):
    """A policy that accepts a host missing from known_hosts, silently and without writing it down."""
    class Accept(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            return None
    return Accept()


class StatusError(Exception):
    """A host that cannot be read: one line, shown in its row."""


def run(client, command: str, timeout: float) -> tuple[int, str, str]:
    """One command on the host: ``(exit status, stdout, stderr)``; raises StatusError past ``timeout`` seconds.

    + command: one command line, e.g. ``"systemctl show vllm-qwen7b.service -p ActiveState"``
    """
    try:
        _, out, err = client.exec_command(command, timeout=max(timeout, 0.1))
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        return out.channel.recv_exit_status(), stdout, stderr
    except (socket.timeout, TimeoutError):
        raise StatusError(f"`{command[:60]}` gave no answer within {timeout:.0f}s") from None


def as_root(command: str, sudo: bool) -> str:
    """``command`` run as root when the host's data says ``_sudo`` (``sudo -n``: never a password prompt).

    + command: e.g. ``"cat /var/lib/vlmfleet/releases/vllm-qwen7b/good/release.json"``
    """
    return f"sudo -n sh -c {shlex.quote(command)}" if sudo else command


def host_commands(member: Member) -> dict[str, tuple[str, bool]]:
    """The commands read from a host, each ``name -> (command, as root)``: single commands, no shell loop.

    + member: a serving member, e.g. h1 in profile qwen7b
    """
    from .gpus import NVIDIA_SMI_QUERY, NVIDIA_SMI_TOPO

    paths = member_paths(member)
    from .facts import ReleaseStatus

    release = ReleaseStatus().command(release_bin=paths.release_bin, release_dir=paths.release_dir,
                                      lock_file=paths.lock_file, unit_path=paths.unit_path)
    return {
        "systemctl": (f"systemctl show {shlex.quote(paths.unit_name)} -p LoadState -p ActiveState -p SubState "
                      "-p ActiveEnterTimestamp", False),
        "release_status": (release, True),  # the service stage's ReleaseStatus fact, read the same way
        "release_json": (f"cat {shlex.quote(paths.release_dir)}/good/release.json", True),
        "unit_text": (f"cat {shlex.quote(paths.unit_path)}", False),
        "gpu_memory_csv": (GPU_MEMORY_QUERY, False),
        "gpu_csv": (NVIDIA_SMI_QUERY, False),
        "gpu_topo": (NVIDIA_SMI_TOPO, False),
        "os_release": ("cat /etc/os-release", False),
        "manifest": (f"cat {shlex.quote(paths.manifest)}", True),
        "config_json": (f"cat {shlex.quote(paths.config_json)}", True),
    }


def member_paths(member: Member):
    """The member's remote paths (``HostConfig.paths``); from its tools_dir, model_dir and profile alone when its
    data does not build (the row then says why)."""
    from .catalog import model, profile
    from .config import build, remote_paths, service_name

    cfg, _ = build(member.name, member.data, check_files=False, verify_fixes=False, roles=_roles(member))
    if cfg is not None:
        return cfg.paths
    return remote_paths(member.get("tools_dir"), member.get("model_dir"), service_name(member.profile),
                        model(profile(member.profile).model_id).repo_dir)


def _roles(member: Member) -> tuple[str, ...]:
    return tuple(g for g in OPS_GROUPS if g in member.groups)


def read_host(client, member: Member, sudo: bool, deadline: float) -> Observed:
    """Run :func:`host_commands` one after the other over ``client``; what each printed goes into an Observed.

    + deadline: ``time.monotonic()`` by which every command must have answered
    """
    obs = Observed()
    for name, (command, root) in host_commands(member).items():
        left = deadline - time.monotonic()
        if left <= 0:
            raise StatusError(f"no time left to read {name} (--timeout)")
        rc, out, err = run(client, as_root(command, root and sudo), left)
        if name == "release_status":
            if rc != 0 or "password is required" in err:
                obs.release_error = (f"sudo -n failed ({err.strip()[:120] or f'exit {rc}'}): status reads "
                                     "/var/lib/vlmfleet as root — fix: passwordless sudo for the SSH user, or "
                                     "ssh_user root")
            else:
                obs.release_status = _release_status(out)
        elif name == "gpu_csv":
            if rc == 0 and out.strip():
                obs.gpu_csv = out.strip()
            else:
                obs.gpu_error = (out + err).strip() or f"nvidia-smi exited with {rc} and printed nothing"
        elif name == "gpu_memory_csv":
            if rc == 0:
                obs.gpu_memory_csv = out
        elif name == "gpu_topo":
            obs.gpu_topo = out if rc == 0 and out.strip() else None
        elif name == "systemctl":
            obs.systemctl = out
        else:
            setattr(obs, name, out if rc == 0 else None)
    return obs


def _release_status(output: str) -> dict:
    """The ReleaseStatus fact's value from its command's output (the fact's own parser)."""
    from .facts import ReleaseStatus

    return ReleaseStatus().process(output.splitlines())


# ---- the tunnel --------------------------------------------------------------------------------------------------
class Tunnel:
    """A local listening socket on 127.0.0.1 whose connections are forwarded, each through its own
    ``direct-tcpip`` channel of ``transport``, to ``dest`` as the host sees it. Used as a context manager.

    + transport: a connected ``paramiko.Transport`` (``client.get_transport()``)
    + dest: e.g. ``("127.0.0.1", 8000)``: the API port on the host's loopback
    + timeout: seconds to open one channel, e.g. ``5``
    """

    def __init__(self, transport, dest: tuple[str, int], timeout: float = 5.0):
        self.transport, self.dest, self.timeout = transport, dest, timeout
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self.error: str | None = None  # why the host refused the last channel, e.g. "Connection refused"
        self._thread = threading.Thread(target=self._accept, name=f"tunnel-{dest[0]}:{dest[1]}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(conn, peer), daemon=True).start()

    def _forward(self, conn: socket.socket, peer) -> None:
        try:
            chan = self.transport.open_channel("direct-tcpip", self.dest, peer, timeout=self.timeout)
        except Exception as exc:  # the host refused (nothing listens there) or the connection dropped
            self.error = f"the host refused {self.dest[0]}:{self.dest[1]} ({getattr(exc, 'text', None) or exc})"
            conn.close()  # the client sees the connection closed
            return
        pump(conn, chan, self._closed)

    def close(self) -> None:
        self._closed.set()
        try:
            self.listener.close()
        except OSError:
            pass

    def __enter__(self) -> "Tunnel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pump(sock: socket.socket, chan, stop: threading.Event, idle_s: float = 0.5) -> None:
    """Copy bytes both ways between a socket and a channel until either side closes (or ``stop`` is set)."""
    try:
        while not stop.is_set():
            ready, _, _ = select.select([sock, chan], [], [], idle_s)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                chan.sendall(data)
            if chan in ready:
                data = chan.recv(65536)
                if not data:
                    break
                sock.sendall(data)
    except OSError:
        pass
    finally:
        chan.close()
        sock.close()


# ---- HTTP --------------------------------------------------------------------------------------------------------
def port_open(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_http(obs: Observed, base: str, via: str, deadline: float) -> None:
    """GET /health, /version and /metrics at ``base`` into ``obs`` (no key sent: vLLM asks none for these).

    + base: e.g. ``"http://10.77.0.11:8000"`` or a tunnel's ``"http://127.0.0.1:40123"``
    + via: ``"direct"`` or ``"ssh tunnel"``
    """
    import requests

    obs.via = via
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not stand between this machine and the fleet

    def get(path: str):
        left = max(deadline - time.monotonic(), 0.5)
        return session.get(f"{base}{path}", timeout=min(left, 10.0))

    try:
        obs.health_status = get("/health").status_code
    except requests.RequestException as exc:
        obs.health_error = f"/health: {_short(exc)}"
        return
    try:
        r = get("/version")
        obs.version = r.json().get("version") if r.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError):
        obs.version = None
    try:
        r = get("/metrics")
        if r.status_code == 200:
            obs.metrics_text = r.text
        else:
            obs.metrics_error = f"/metrics: HTTP {r.status_code}"
    except requests.RequestException as exc:
        obs.metrics_error = f"/metrics: {_short(exc)}"


def _short(exc: Exception) -> str:
    """An exception of requests as a short phrase: ``connection refused``, ``timed out``."""
    text = str(exc)
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("RemoteDisconnected", "connection closed"), ("Connection aborted", "connection closed"),
                         ("No route to host", "no route to host")):
        if needle in text:
            return said
    return f"{exc.__class__.__name__}"


def api_dest(member: Member) -> tuple[str, int]:
    """Where the server listens as the host sees it (the tunnel's far end): its api_bind, loopback when it binds
    every address (``service.health_url``). E.g. ``("127.0.0.1", 8000)``."""
    from .config import build
    from .service import health_url

    cfg, _ = build(member.name, member.data, check_files=False, verify_fixes=False, roles=_roles(member))
    if cfg is None:
        return "127.0.0.1", member.api_port
    u = urlsplit(health_url(cfg))
    return u.hostname or "127.0.0.1", u.port or member.api_port


def direct_url(member: Member) -> str:
    """``http://ADDRESS:PORT`` of the member (IPv6 addresses bracketed)."""
    host = f"[{member.address}]" if ":" in member.address else member.address
    return f"http://{host}:{member.api_port}"


# ---- one host, every host ----------------------------------------------------------------------------------------
def collect(member: Member, timeout: float, tunnel: str = "auto",
            connector: Callable[[SshTarget, float], Any] = connect) -> Row:
    """One member's row: its commands over SSH, its HTTP directly or through the tunnel; never raises.

    + timeout: seconds for the whole host, e.g. 20
    + tunnel: ``"auto"`` (the tunnel when the port does not answer directly), ``"always"``, ``"never"``
    + connector: how to connect (tests pass one to an in-process SSH server)
    """
    deadline = time.monotonic() + timeout
    roles = _roles(member)
    target = ssh_target(member)
    client = None
    try:
        client = connector(target, min(CONNECT_TIMEOUT_S, timeout))
        obs = read_host(client, member, target.sudo, deadline)
    except StatusError as exc:
        obs = Observed(error=str(exc))
    except Exception as exc:  # paramiko's own errors mid-read: the row says so, the others go on
        obs = Observed(error=f"ssh {target.hostname}:{target.port}: {exc.__class__.__name__}: {exc}")
    try:
        _http(obs, member, client, tunnel, deadline)
    finally:
        if client is not None:
            client.close()
    try:
        return make_row(member.name, member.address, member.profile, member.data, obs, roles)
    except Exception as exc:  # data the planner chokes on: this host's row says so, the others are shown
        row = make_row(member.name, member.address, member.profile, {}, Observed(
            error=f"cannot judge what was read: {exc.__class__.__name__}: {exc}"))
        return row


def _http(obs: Observed, member: Member, client, tunnel: str, deadline: float) -> None:
    """The HTTP half of :func:`collect`: direct when it answers (or must), else through the tunnel."""
    direct = tunnel == "never" or client is None or (
        tunnel == "auto" and port_open(member.address, member.api_port,
                                       min(PROBE_TIMEOUT_S, max(deadline - time.monotonic(), 0.1))))
    if direct:
        if tunnel != "always":
            read_http(obs, direct_url(member), "direct", deadline)
        return
    try:
        with Tunnel(client.get_transport(), api_dest(member)) as t:
            read_http(obs, t.url, "ssh tunnel", deadline)
            if obs.health_error and t.error:
                obs.health_error = f"/health: {t.error}"
    except Exception as exc:  # the transport dropped between the commands and the tunnel
        obs.via, obs.health_error = "ssh tunnel", f"the ssh tunnel failed: {exc.__class__.__name__}: {exc}"


def collect_all(fleet: list[Member], timeout: float, tunnel: str = "auto", workers: int = 32,
                connector: Callable[[SshTarget, float], Any] = connect) -> list[Row]:
    """Every serving member's row, in inventory order, read in parallel; a host with no row within ``timeout``
    (plus a few seconds) gets one saying so.

    + fleet: e.g. ``vlmfleet.fleet.load("inventories/lab.py")``; members that serve nothing are skipped
    + workers: hosts read at once, e.g. 32
    """
    serving = [m for m in fleet if m.serves]
    rows: dict[int, Row] = {}
    gate = threading.Semaphore(max(1, workers))
    lock = threading.Lock()
    started: dict[int, float] = {}

    def work(i: int, m: Member) -> None:
        with gate:
            with lock:
                started[i] = time.monotonic()
            row = collect(m, timeout, tunnel, connector)
            with lock:
                rows[i] = row

    threads = [threading.Thread(target=work, args=(i, m), name=f"status-{m.name}", daemon=True)
               for i, m in enumerate(serving)]
    for t in threads:
        t.start()
    waves = -(-len(serving) // max(1, workers))
    end = time.monotonic() + waves * (timeout + GRACE_S)
    for t in threads:
        t.join(max(end - time.monotonic(), 0))
    with lock:
        return [rows.get(i) or unreachable_row(m.name, m.address, m.profile,
                                               f"no answer within {timeout:g}s (--timeout)")
                for i, m in enumerate(serving)]


__all__ = ["SshTarget", "ssh_target", "connect", "run", "as_root", "host_commands", "read_host", "Tunnel", "pump",
           "read_http", "collect", "collect_all", "StatusError", "TUNNEL_MODES"]
