"""`vlmfleet status`: parsing /metrics, nvidia-smi and systemctl by value; drift as the service stage decides it
(a ladder rung of the wanted release is current); the table and --json by exact text; an unreachable host; the
SSH tunnel and a whole host read over a real in-process SSH server (paramiko) with an HTTP server behind it."""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paramiko
import pytest

from vlmfleet import status as st
from vlmfleet import status_collect as sc
from vlmfleet.cli import main
from vlmfleet.fleet import FleetError, Member, limit
from vlmfleet.service import docker_run_args, release_reasons, render_unit

FIXTURES = Path(__file__).parent / "fixtures"
DATA = {"vlm_profile": "qwen7b", "api_key_file": "/k"}
A10X2 = json.loads((FIXTURES / "facts/GpuQuery/a10x2.json").read_text())["fact"]["csv"].replace(
    "550.54.15", "580.82.07")  # a driver new enough for 0.33's image
OS = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'

# /metrics as the lab stand-in (vlmfleet/lab/standins/vllm_standin.py) and vLLM 0.33 render it
METRICS_033 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="qwen2.5-vl-7b-instruct"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="qwen2.5-vl-7b-instruct"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="qwen2.5-vl-7b-instruct"} 0.4219
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="qwen2.5-vl-7b-instruct"} 12.0
vllm:request_success_total{finished_reason="length",model_name="qwen2.5-vl-7b-instruct"} 5.0
# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{model_name="qwen2.5-vl-7b-instruct",le="0.01"} 17
vllm:e2e_request_latency_seconds_bucket{model_name="qwen2.5-vl-7b-instruct",le="+Inf"} 17
vllm:e2e_request_latency_seconds_sum{model_name="qwen2.5-vl-7b-instruct"} 0.034
vllm:e2e_request_latency_seconds_count{model_name="qwen2.5-vl-7b-instruct"} 17
"""
# vLLM 0.8.2: the old KV cache name, two engines, a timestamp, a label value holding spaces, braces and a quote
METRICS_082 = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0 1733130000000
vllm:num_requests_waiting{engine="0",model_name="a b {c} \\"d\\""} 4.0
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:gpu_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:num_requests_swapped{engine="0",model_name="m"} NaN
"""


# ---- parsing -----------------------------------------------------------------------------------------------------
def test_metrics_of_vllm_033_and_the_lab_stand_in():
    assert st.parse_metrics(METRICS_033) == st.Metrics(running=3.0, waiting=1.0, kv_cache=0.4219,
                                                       kv_metric="vllm:kv_cache_usage_perc", success=17.0)


def test_metrics_of_vllm_082_sum_the_engines_and_take_the_fullest_kv_cache():
    assert st.parse_metrics(METRICS_082) == st.Metrics(running=3.0, waiting=4.0, kv_cache=0.5,
                                                       kv_metric="vllm:gpu_cache_usage_perc", success=None)


def test_a_page_without_vllm_metrics_gives_nothing():
    assert st.parse_metrics("# nothing\ngarbled line\nprocess_cpu_seconds_total 1.5\n") == st.Metrics()


def test_one_sample_line_by_value():
    assert st.parse_sample('vllm:x{a="1,2",b="}"} 7 123') == ("vllm:x", {"a": "1,2", "b": "}"}, 7.0)
    assert st.parse_sample("up 1") == ("up", {}, 1.0)
    assert st.parse_sample('vllm:x{a="unterminated} 1') is None
    assert st.parse_sample("vllm:x{} notanumber") is None


def test_gpu_memory_from_nvidia_smi_csv():
    csv = "0, NVIDIA A10, 21010, 23028\n1, NVIDIA A10, 20998, 23028\n"
    gpus = st.parse_gpu_memory(csv)
    assert gpus == [st.GpuMemory(0, "NVIDIA A10", 21010, 23028), st.GpuMemory(1, "NVIDIA A10", 20998, 23028)]
    assert st.gpu_memory_text(gpus) == "42008/46056 MiB x2"
    assert st.gpu_memory_text([]) == "-"


def test_gpu_memory_says_which_line_it_cannot_read():
    with pytest.raises(ValueError, match=r"nvidia-smi line 1: index or memory not numeric .*'0, NVIDIA H100 80GB "
                                         r"HBM3, 1 MiB, 81559 MiB'"):
        st.parse_gpu_memory("0, NVIDIA H100 80GB HBM3, 1 MiB, 81559 MiB\n")
    preflight_shape = (FIXTURES / "gpu/h100-device/nvidia-smi-query.csv").read_text()
    with pytest.raises(ValueError, match="has 6 columns, expected index, name, memory.used, memory.total"):
        st.parse_gpu_memory(preflight_shape)


def test_systemctl_show_and_os_release():
    text = "LoadState=loaded\nActiveState=active\nSubState=running\nActiveEnterTimestamp=Wed 2026-12-02 07:00:00 UTC\n"
    assert st.parse_systemctl_show(text) == {"LoadState": "loaded", "ActiveState": "active", "SubState": "running",
                                             "ActiveEnterTimestamp": "Wed 2026-12-02 07:00:00 UTC"}
    assert st.parse_os_release(OS) == ("debian", "12")


# ---- the unit read back, flags compared ----------------------------------------------------------------------------
def wanted(data=None, obs=None) -> st.Wanted:
    return st.wanted_release("h1", {**DATA, **(data or {})}, obs or st.Observed(gpu_csv=A10X2, os_release=OS))


def test_the_unit_file_reads_back_into_the_docker_run_words_it_was_rendered_from():
    w = wanted({"vllm_max_pixels": 1003520})
    args = st.unit_exec_args(w.unit_text)
    assert args == docker_run_args(w.cfg, w.plan)
    image, words = st.split_docker_args(args)
    assert image == "vllm/vllm-openai:v0.33.0"
    assert st.flag_values(words)["--limit-mm-per-prompt"] == '{"image":5,"video":0}'
    assert st.flag_values(words)["model"] == "/models/Qwen2.5-VL-7B-Instruct"


def test_unit_words_unescape_systemd_specifiers():
    unit = 'ExecStart=/usr/bin/docker run \\\n    --env "A=100%%" \\\n    --env "B=$$HOME x"\n'
    assert st.unit_exec_args(unit) == ["/usr/bin/docker", "run", "--env", "A=100%", "--env", "B=$HOME x"]
    assert st.unit_exec_args("[Unit]\nDescription=x\n") is None


def test_describe_diff_names_flags_and_image_running_to_wanted():
    running = ("vllm/vllm-openai:v0.8.2", ["serve", "/models/x", "--max-num-seqs", "64", "--enforce-eager",
                                           "--swap-space", "4"])
    want = ("vllm/vllm-openai:v0.33.0", ["serve", "/models/x", "--max-num-seqs", "32", "--kv-cache-dtype", "fp8"])
    assert st.describe_diff(running, want) == ("--max-num-seqs 64 -> 32; --kv-cache-dtype <unset> -> fp8; "
                                               "--enforce-eager on -> <unset>; --swap-space 4 -> <unset>; "
                                               "image vllm/vllm-openai:v0.8.2 -> vllm/vllm-openai:v0.33.0")
    assert st.describe_diff(want, want) == ""


# ---- drift --------------------------------------------------------------------------------------------------------
def host_running(w: st.Wanted, rung: int = 0, **active) -> st.Observed:
    """A host whose active release is ``w`` (on ``rung``), its unit file that rung's."""
    text = render_unit(w.cfg, {r.rung: r for r in w.rungs}[rung].plan) if rung else w.unit_text
    return st.Observed(gpu_csv=A10X2, os_release=OS, unit_text=text,
                       release_status={"active": {"id": w.release_id, "rung": rung, **active},
                                       "unit_sha256": hashlib.sha256(text.encode()).hexdigest()})


def test_a_host_running_the_wanted_release_has_no_drift():
    w = wanted()
    assert w.release_id == "bb8995859fc6" and [r.rung for r in w.rungs] == [1, 2]
    assert st.decide_drift(w, host_running(w)) == st.Drift(False)


def test_a_ladder_rung_of_the_wanted_release_is_not_drift():
    w = wanted()
    assert st.decide_drift(w, host_running(w, rung=2)) == st.Drift(False)


def test_new_data_is_drift_naming_the_flag():
    obs = host_running(wanted())
    w = wanted({"vllm_max_num_seqs": 32})
    assert st.decide_drift(w, obs) == st.Drift(True, "--max-num-seqs 16 -> 32 (release bb8995859fc6 -> "
                                                     f"{w.release_id})")


def test_new_data_on_a_host_on_a_rung_says_the_rung_too():
    obs = host_running(wanted(), rung=1)
    w = wanted({"vllm_max_num_seqs": 32})
    assert st.decide_drift(w, obs) == st.Drift(True, "--max-num-seqs 16 -> 32; --gpu-memory-utilization 0.87 -> "
                                                     f"0.92 (release bb8995859fc6 -> {w.release_id}; the host is "
                                                     "on ladder rung 1)")


def test_a_new_image_is_drift_naming_the_image():
    obs = host_running(wanted())
    w = wanted({"vllm_image": "registry.example.internal/vllm/vllm-openai:v0.33.0"})
    assert st.decide_drift(w, obs).detail.startswith("image vllm/vllm-openai:v0.33.0 -> "
                                                     "registry.example.internal/vllm/vllm-openai:v0.33.0 (release ")


def test_a_unit_file_edited_on_the_host_is_drift():
    w = wanted()
    obs = host_running(w)
    obs.unit_text = obs.unit_text.replace("--max-num-seqs 16", "--max-num-seqs 8")
    obs.release_status["unit_sha256"] = hashlib.sha256(obs.unit_text.encode()).hexdigest()
    assert st.decide_drift(w, obs) == st.Drift(True, "--max-num-seqs 8 -> 16 (/etc/systemd/system/"
                                                     "vllm-qwen7b.service differs from release bb8995859fc6)")


def test_a_failed_release_and_no_release_are_drift():
    w = wanted()
    failed = host_running(w, failed=True)
    assert st.decide_drift(w, failed) == st.Drift(True, "release bb8995859fc6 failed last time")
    fresh = st.Observed(gpu_csv=A10X2, os_release=OS, release_status={"unit_sha256": None})
    assert st.decide_drift(w, fresh) == st.Drift(True, "release none -> bb8995859fc6")


def test_drift_cannot_be_told_without_sound_data_or_a_plan():
    bad = wanted({"api_port": "http"})
    assert bad.problem.startswith("the data has 1 problem(s): h1: data key 'api_port' = 'http'")
    assert st.decide_drift(bad, st.Observed()).drifted is None
    old_driver = st.Observed(gpu_csv=A10X2.replace("580.82.07", "550.54.15"), os_release=OS)
    w = wanted(obs=old_driver)
    assert w.problem.startswith("preflight would fail: h1: profile qwen7b on 2xA10")
    assert "driver 550.54.15 is older than 580.65" in w.problem
    unread = st.decide_drift(wanted(), st.Observed(release_error="sudo -n failed (exit 1)"))
    assert unread == st.Drift(None, "the release state was not read (sudo -n failed (exit 1))")


def test_release_reasons_is_what_the_service_stage_restarts_for():
    w = wanted()
    obs = host_running(w, rung=2)
    reasons, record = release_reasons(w.cfg, w.plan, obs.release_status, list(w.rungs), w.unit_text)
    assert reasons == [] and record is w.rungs[1].plan  # the rung's plan is recorded, nothing restarts
    reasons, record = release_reasons(w.cfg, w.plan, {"active": {"id": w.release_id, "rung": 5}}, list(w.rungs))
    assert reasons == ["the ladder no longer has rung 5",
                       "/etc/systemd/system/vllm-qwen7b.service differs from release bb8995859fc6"]
    assert record is w.plan
    reasons, record = release_reasons(w.cfg, w.plan, {"active": {"id": w.release_id, "env_not_applied": True}},
                                      list(w.rungs))
    assert reasons == ["release bb8995859fc6 with its new env file failed last time (the old one serves)"]
    assert record is None


# ---- rows, the table, --json ----------------------------------------------------------------------------------------
def healthy_obs(w: st.Wanted, **kw) -> st.Observed:
    obs = host_running(w)
    obs.systemctl = "LoadState=loaded\nActiveState=active\nSubState=running\nActiveEnterTimestamp=Wed 2026-12-02 07:00:00 UTC\n"
    obs.gpu_memory_csv = "0, NVIDIA A10, 21010, 23028\n1, NVIDIA A10, 20998, 23028\n"
    obs.health_status, obs.version, obs.metrics_text, obs.via = 200, "0.33.0", METRICS_033, "direct"
    for k, v in kw.items():
        setattr(obs, k, v)
    return obs


def rows() -> list[st.Row]:
    w = wanted()
    h1 = st.make_row("h1", "10.77.0.11", "qwen7b", DATA, healthy_obs(w))
    h2 = st.make_row("h2", "10.77.0.12", "qwen7b", {**DATA, "vllm_max_num_seqs": 32},
                     healthy_obs(w, via="ssh tunnel"))
    h3 = st.unreachable_row("h3", "10.77.0.13", "qwen72b_awq", "ssh vlm@10.77.0.13:22: no answer within 10s")
    return [h1, h2, h3]


def test_the_table_by_exact_text():
    assert st.table(rows()) == """\
HOST  PROFILE      UNIT            RELEASE       IMAGE / VLLM                  DRIFT  HEALTH                  RUN/WAIT  KV %  GPU MEM
h1    qwen7b       active/running  bb8995859fc6  vllm-openai:v0.33.0 / 0.33.0  no     healthy                 3/1       42.2  42008/46056 MiB x2
h2    qwen7b       active/running  bb8995859fc6  vllm-openai:v0.33.0 / 0.33.0  yes    healthy via ssh tunnel  3/1       42.2  42008/46056 MiB x2
h3    qwen72b_awq  unreachable     -             -                             ?      -                       -         -     -

h2: drift: --max-num-seqs 16 -> 32 (release bb8995859fc6 -> 93af4bcf5f3e)
h3: unreachable: ssh vlm@10.77.0.13:22: no answer within 10s
"""


def test_json_by_exact_value():
    out = json.loads(st.as_json(rows()))
    assert [r["host"] for r in out] == ["h1", "h2", "h3"]
    assert out[0] == {
        "address": "10.77.0.11", "drift": False, "drift_detail": "", "error": None, "gpu_error": None,
        "gpus": [{"index": 0, "memory_total_mib": 23028, "memory_used_mib": 21010, "name": "NVIDIA A10"},
                 {"index": 1, "memory_total_mib": 23028, "memory_used_mib": 20998, "name": "NVIDIA A10"}],
        "health_detail": "healthy", "healthy": True, "host": "h1", "image": "vllm/vllm-openai:v0.33.0",
        "kv_cache_usage": 0.4219, "ok": True, "profile": "qwen7b", "reachable": True,
        "release": {"id": "bb8995859fc6", "rung": 0}, "requests_running": 3.0, "requests_succeeded": 17.0,
        "requests_waiting": 1.0, "service": "vllm-qwen7b",
        "unit": {"since": "Wed 2026-12-02 07:00:00 UTC", "state": "active/running"}, "via": "direct",
        "vllm_version": "0.33.0"}
    assert out[1]["drift"] is True and out[1]["via"] == "ssh tunnel" and out[1]["ok"] is False
    assert out[2] == {
        "address": "10.77.0.13", "drift": None, "drift_detail": "not read (unreachable)",
        "error": "ssh vlm@10.77.0.13:22: no answer within 10s", "gpu_error": None, "gpus": [], "health_detail": "",
        "healthy": None, "host": "h3", "image": None, "kv_cache_usage": None, "ok": False, "profile": "qwen72b_awq",
        "reachable": False, "release": {"id": None, "rung": None}, "requests_running": None,
        "requests_succeeded": None, "requests_waiting": None, "service": "vllm-qwen72b-awq",
        "unit": {"since": None, "state": None}, "via": None, "vllm_version": None}


def test_exit_status_unhealthy_beats_drift():
    h1, h2, h3 = rows()
    assert st.exit_status([h1]) == st.EXIT_OK == 0
    assert st.exit_status([h1, h2]) == st.EXIT_DRIFT == 3
    assert st.exit_status([h1, h2, h3]) == st.EXIT_UNHEALTHY == 1
    down = st.make_row("h1", "a", "qwen7b", DATA, healthy_obs(wanted(), health_status=503))
    assert (down.healthy, down.health, st.exit_status([down])) == (False, "HTTP 503", 1)
    stopped = st.make_row("h1", "a", "qwen7b", DATA, healthy_obs(wanted(), systemctl="LoadState=loaded\n"
                                                                 "ActiveState=failed\nSubState=failed\n"))
    assert (stopped.unit, st.exit_status([stopped])) == ("failed/failed", 1)
    gone = st.make_row("h1", "a", "qwen7b", DATA, healthy_obs(wanted(), systemctl="LoadState=not-found\n"
                                                              "ActiveState=inactive\nSubState=dead\n"))
    assert gone.unit == "not installed"


def test_limit_by_host_or_group_and_an_unknown_name():
    fleet = [Member("h1", "a", ("qwen7b", "lab"), "qwen7b"), Member("h3", "c", ("qwen72b_awq",), "qwen72b_awq")]
    assert [m.name for m in limit(fleet, ["qwen72b_awq"])] == ["h3"]
    assert [m.name for m in limit(fleet, [])] == ["h1", "h3"]
    with pytest.raises(FleetError, match=r"--limit h9: no host or group of that name in the inventory \(hosts: "
                                         r"h1, h3\)"):
        limit(fleet, ["h9", "h1"])


def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["status", str(tmp_path / "nope.py")]) == 2
    assert capsys.readouterr().err == (f"vlmfleet status: error: inventory '{tmp_path / 'nope.py'}' is not a file; "
                                       "give one like inventories/prod.py\n")
    assert main(["status", "inventories/prod.py", "--data", "novalue"]) == 2
    assert capsys.readouterr().err == ("vlmfleet status: error: --data 'novalue': must be KEY=VALUE (e.g. --data "
                                       "vllm_max_num_seqs=32)\n")
    assert main(["status", "inventories/prod.py", "--timeout", "0"]) == 2
    assert "--timeout 0: must be a number of seconds > 0" in capsys.readouterr().err


# ---- SSH: an in-process server, a real tunnel, a whole host ------------------------------------------------------
class Api(BaseHTTPRequestHandler):
    """vLLM's /health, /version and /metrics (no key)."""

    def do_GET(self):
        body = {"/health": b"", "/version": b'{"version": "0.33.0"}', "/metrics": METRICS_033.encode()}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class FakeHost(paramiko.ServerInterface):
    """One SSH host: public-key login of one key, exec answered from ``outputs`` (by the command as run, a
    ``sudo -n sh -c`` wrapper unwrapped), ``direct-tcpip`` forwarded to 127.0.0.1 at the asked port."""

    def __init__(self, key, outputs):
        self.key, self.outputs, self.ran, self.forwards = key, outputs, [], {}

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key == self.key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        try:  # as sshd does: the channel opens only when something listens there
            socket.create_connection(destination, timeout=2).close()
        except OSError:
            return paramiko.OPEN_FAILED_CONNECT_FAILED
        self.forwards[chanid] = destination
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        command = command.decode()
        self.ran.append(command)
        words = shlex.split(command)
        inner = words[4] if words[:4] == ["sudo", "-n", "sh", "-c"] else command
        rc, out = self.outputs.get(inner, (127, ""))

        def answer():
            channel.sendall(out.encode())
            channel.send_exit_status(rc)
            channel.close()
        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture
def ssh_host(tmp_path):
    """A listening SSH server on 127.0.0.1; yields (port, client key file, known_hosts file, FakeHost factory)."""
    host_key = paramiko.RSAKey.generate(1024)
    user_key = paramiko.RSAKey.generate(1024)
    key_file = tmp_path / "id_rsa"
    user_key.write_private_key_file(str(key_file))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    known = tmp_path / "known_hosts"
    keys = paramiko.HostKeys()
    keys.add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    keys.save(str(known))
    state = {"outputs": {}, "hosts": []}
    transports = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=session, args=(conn,), daemon=True).start()

    def session(conn):
        t = paramiko.Transport(conn)
        t.add_server_key(host_key)
        fake = FakeHost(user_key, state["outputs"])
        transports.append(t)
        try:
            t.start_server(server=fake)
        except (paramiko.SSHException, EOFError, OSError):
            return  # the client refused the host key, or hung up
        state["hosts"].append(fake)
        forward(t, fake)

    def forward(t, fake):
        while t.is_active():
            chan = t.accept(0.2)
            if chan is None or chan.get_id() not in fake.forwards:
                continue
            sock = socket.create_connection(("127.0.0.1", fake.forwards[chan.get_id()][1]))
            threading.Thread(target=sc.pump, args=(sock, chan, threading.Event()), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield port, key_file, known, state
    listener.close()
    for t in transports:
        t.close()


def target(port, key_file, known, strict="yes") -> sc.SshTarget:
    return sc.SshTarget("127.0.0.1", port, "vlm", str(key_file), known_hosts=str(known), strict=strict, sudo=True)


def test_the_tunnel_forwards_http_through_a_direct_tcpip_channel(ssh_host, api):
    import requests

    port, key_file, known, state = ssh_host
    client = sc.connect(target(port, key_file, known), timeout=5)
    try:
        with sc.Tunnel(client.get_transport(), ("127.0.0.1", api)) as t:
            assert t.url != f"http://127.0.0.1:{api}"
            r = requests.get(f"{t.url}/version", timeout=5)
            assert r.json() == {"version": "0.33.0"}
            assert requests.get(f"{t.url}/metrics", timeout=5).text == METRICS_033
        assert list(state["hosts"][0].forwards.values()) == [("127.0.0.1", api), ("127.0.0.1", api)]
    finally:
        client.close()


def test_a_tunnel_to_a_port_nothing_listens_on_says_the_host_refused(ssh_host):
    import requests

    port, key_file, known, _ = ssh_host
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed = free.getsockname()[1]
    free.close()
    client = sc.connect(target(port, key_file, known), timeout=5)
    try:
        with sc.Tunnel(client.get_transport(), ("127.0.0.1", closed)) as t:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{t.url}/health", timeout=5)
            assert t.error == f"the host refused 127.0.0.1:{closed} (Connect failed)"
    finally:
        client.close()


def test_known_hosts_is_honoured_strictly(ssh_host, tmp_path):
    port, key_file, known, _ = ssh_host
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(sc.StatusError, match=rf"ssh vlm@127.0.0.1:{port}: not in known_hosts {empty} and "
                                             "ssh_strict_host_key_checking is yes"):
        sc.connect(target(port, key_file, empty), timeout=5)
    other = paramiko.HostKeys()
    other.add(f"[127.0.0.1]:{port}", "ssh-rsa", paramiko.RSAKey.generate(1024))
    changed = tmp_path / "changed_known_hosts"
    other.save(str(changed))
    for strict in ("yes", "accept-new"):
        with pytest.raises(sc.StatusError, match="its host key changed"):
            sc.connect(target(port, key_file, changed, strict), timeout=5)
    sc.connect(target(port, key_file, empty, "accept-new"), timeout=5).close()
    assert empty.read_text() == ""  # accepted, not written down


def lab_like_member(port, key_file, known, api_port) -> Member:
    data = {**DATA, "ssh_hostname": "127.0.0.1", "ssh_port": port, "ssh_user": "vlm", "ssh_key": str(key_file),
            "ssh_known_hosts_file": str(known), "ssh_strict_host_key_checking": "yes", "_sudo": True,
            "api_port": api_port}
    return Member("h1", "127.0.0.1", ("qwen7b", "lab"), "qwen7b", data)


@pytest.mark.parametrize("mode,via", [("auto", "direct"), ("always", "ssh tunnel")])
def test_a_whole_host_read_over_ssh_and_http(ssh_host, api, mode, via):
    port, key_file, known, state = ssh_host
    member = lab_like_member(port, key_file, known, api)
    w = st.wanted_release("h1", member.data, st.Observed(gpu_csv=A10X2, os_release=OS))
    sha = hashlib.sha256(w.unit_text.encode()).hexdigest()
    commands = sc.host_commands(member)
    outputs = {
        "systemctl": "LoadState=loaded\nActiveState=active\nSubState=running\nActiveEnterTimestamp=Wed 2026-12-02 07:00:00 UTC\n",
        "release_status": json.dumps({"active": {"id": w.release_id, "rung": 0}, "lock": None}) + f"\n{sha}\n",
        "unit_text": w.unit_text, "gpu_memory_csv": "0, NVIDIA A10, 21010, 23028\n1, NVIDIA A10, 20998, 23028\n",
        "gpu_csv": A10X2 + "\n", "gpu_topo": "", "os_release": OS,
    }
    state["outputs"].update({commands[k][0]: (0, v) for k, v in outputs.items()})  # no manifest: catalog numbers
    row = sc.collect(member, timeout=10, tunnel=mode, connector=sc.connect)
    assert (row.error, row.unit, row.release, row.drift, row.healthy, row.via) == \
        (None, "active/running", w.release_id, st.Drift(False), True, via)
    assert (row.running, row.waiting, row.kv_cache, row.vllm) == (3.0, 1.0, 0.4219, "0.33.0")
    assert row.ok and st.gpu_memory_text(row.gpus) == "42008/46056 MiB x2"
    ran = state["hosts"][0].ran
    assert len(ran) == len(commands) and not any("for " in c or "while " in c for c in ran)
    assert ran[0].startswith("systemctl show vllm-qwen7b.service")  # as the SSH user
    assert ran[1].startswith("sudo -n sh -c ") and "vlmfleet-release status" in ran[1]  # root-only state
    assert list(state["hosts"][0].forwards.values()) == ([("127.0.0.1", api)] * 3 if via == "ssh tunnel" else [])


def test_an_unreachable_host_gets_a_row_not_a_traceback(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    member = lab_like_member(port, tmp_path / "key", tmp_path / "known", port + 1 if port < 65535 else 1024)
    row = sc.collect(member, timeout=3, tunnel="auto")
    assert row.error.startswith(f"ssh vlm@127.0.0.1:{port}: ") and not row.ok
    assert row.healthy is False and row.health == "/health: connection refused"
    assert st.cells(row)[2] == "unreachable"


def test_a_host_that_hangs_is_bounded_by_the_timeout(monkeypatch):
    monkeypatch.setattr(sc, "GRACE_S", 0.2)

    def hang(target, timeout):
        time.sleep(3)
        raise sc.StatusError("late")

    fleet = [Member("h1", "127.0.0.1", ("qwen7b",), "qwen7b", dict(DATA)),
             Member("ops", "127.0.0.1", ("monitoring",), None, {})]
    t0 = time.monotonic()
    out = sc.collect_all(fleet, timeout=0.3, connector=hang)
    assert time.monotonic() - t0 < 2
    assert [(r.host, r.error) for r in out] == [("h1", "no answer within 0.3s (--timeout)")]
