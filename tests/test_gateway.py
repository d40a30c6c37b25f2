"""The gateway: HAProxy's configuration from the fleet (checked by the real `haproxy -c`), the drain agent, and the
data checks of its keys."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmfleet import gateway as gw
from vlmfleet.config import build
from vlmfleet.fleet import Member
from vlmfleet.paths import PACKAGE_DIR

from unitverify import verify, verify_root

HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy missing: `make deps` installs Debian's haproxy "
                                   "(CI does)")


def member(name, address, profile=None, groups=(), **data):
    return Member(name, address, tuple(groups), profile, {"vlm_profile": profile, **data})


FLEET = [member("h1", "10.0.0.11", "qwen7b"), member("h2", "10.0.0.12", "qwen7b"),
         member("h3", "10.0.0.13", "qwen72b_awq", api_port=8100), member("ops", "10.0.0.10", groups=("gateway",))]


def test_backends_one_per_profile_with_its_port_and_replicas():
    got = gw.backends(FLEET, FLEET[-1])
    assert got == [
        gw.Backend("qwen72b_awq", 8001, (gw.Server("h3", "10.0.0.13", 8100),)),
        gw.Backend("qwen7b", 8000, (gw.Server("h1", "10.0.0.11", 8000), gw.Server("h2", "10.0.0.12", 8000))),
    ]
    assert gw.has_gateway(FLEET) and not gw.has_gateway(FLEET[:3])


def test_a_profile_without_a_port_names_host_key_and_fix():
    ops = member("ops", "10.0.0.10", groups=("gateway",), gateway_ports={"qwen7b": 8000})
    with pytest.raises(gw.GatewayError) as exc:
        gw.backends(FLEET[:3] + [ops], ops)
    assert str(exc.value) == ("ops: data key 'gateway_ports' gives no port to profile qwen72b_awq (served by h3) — "
                              "fix: add 'qwen72b_awq': <port> to gateway_ports in group_data/gateway.py")


def test_haproxy_config_health_checks_and_drain_agent_per_replica():
    text = gw.haproxy_config(gw.backends(FLEET, FLEET[-1]), stats_port=8404, agent_port=9101)
    assert "frontend vlm_qwen7b\n    bind :8000\n    default_backend vlm_qwen7b\n" in text
    assert "    server h1 10.0.0.11:8000 check\n    server h2 10.0.0.12:8000 check\n" in text
    assert "    server h3 10.0.0.13:8100 check\n" in text
    assert text.count("http-check send meth GET uri /health") == 2
    assert text.count("agent-check agent-port 9101 agent-inter 1s") == 2
    assert "retry-on conn-failure empty-response" in text and "option redispatch 1" in text
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text


@needs_haproxy
def test_haproxy_accepts_the_config_and_rejects_a_broken_one(tmp_path):
    text = gw.haproxy_config(gw.backends(FLEET, FLEET[-1]), stats_port=8404, agent_port=9101)
    (tmp_path / "haproxy.cfg").write_text(text)
    proc = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert proc.returncode == 0 and "Configuration file is valid" in proc.stdout + proc.stderr, proc.stderr
    (tmp_path / "haproxy.cfg").write_text(text.replace("balance leastconn", "balance fewestconn", 1))
    proc = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Fatal errors found in configuration" in proc.stdout + proc.stderr


def test_agent_unit_passes_systemd_analyze_verify(tmp_path):
    unit = gw.agent_unit("/opt/vlmfleet/bin/vlmfleet-agent", "/run/vlmfleet/gateway-agent", 9101)
    assert "--port 9101 --state /run/vlmfleet/gateway-agent" in unit and "DynamicUser=yes" in unit
    root = verify_root(tmp_path, ("usr/bin/python3", "opt/vlmfleet/bin/vlmfleet-agent"), docker=False)
    proc = verify(root, "vlmfleet-agent.service", unit)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(port: int) -> str:
    for _ in range(50):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(100).decode()
        except ConnectionRefusedError:
            time.sleep(0.1)
    raise AssertionError("vlmfleet-agent did not answer")


def test_the_agent_answers_haproxy_with_the_state_file(tmp_path):
    state, port = tmp_path / "gateway-agent", _free_port()
    proc = subprocess.Popen([sys.executable, str(PACKAGE_DIR / "remote" / "vlmfleet_agent.py"), "--port", str(port),
                             "--state", str(state), "--bind", "127.0.0.1"], stderr=subprocess.PIPE)
    try:
        assert _ask(port) == "ready\n"  # no state file: ready (the health check decides up or down)
        state.write_text("drain\n")
        assert _ask(port) == "drain\n"
        state.write_text("rm -rf /\n")  # not a word HAProxy knows: ready
        assert _ask(port) == "ready\n"
    finally:
        proc.terminate()
        proc.wait(5)


# ---- the data keys --------------------------------------------------------------------------------------
def _problems(data, roles=("gateway",), ssh_port=22):
    _, problems = build("ops", data, roles=roles, ssh_port=ssh_port, check_files=False)
    return [(p.key, p.why) for p in problems]


def test_a_gateway_host_needs_no_profile_but_sound_ports():
    assert _problems({}) == []
    assert _problems({"gateway_ports": {"qwen7b": 8000, "qwen72b_awq": 8000}}) == [
        ("gateway_ports", "gives port 8000 to more than one profile: each profile needs its own port")]
    assert _problems({"gateway_ports": {"qwen8b": 8000}})[0][1].startswith("'qwen8b' is not a profile")
    assert _problems({"gateway_ports": {"qwen7b": 22}}) == [
        ("gateway_ports", "gives qwen7b port 22, which is its SSH port on this host")]
    assert _problems({"gateway_ports": {"qwen7b": 8404}}) == [
        ("gateway_ports", "gives qwen7b port 8404, which is gateway_stats_port on this host")]


def test_the_stats_and_agent_ports_must_be_free_on_their_host():
    assert _problems({"gateway_stats_port": 22}) == [
        ("gateway_stats_port", "is its SSH port on this host: HAProxy could not bind it")]
    _, problems = build("h1", {"vlm_profile": "qwen7b", "gateway_agent_port": 8000, "api_allow_unauthenticated": True},
                        check_files=False)
    assert [(p.key, p.why, p.fix.set) for p in problems] == [
        ("gateway_agent_port", "is api_port on this host: the drain agent could not listen",
         {"gateway_agent_port": 9101})]


def test_a_host_in_no_group_still_must_serve_something():
    assert [k for k, _ in _problems({}, roles=())] == ["vlm_profile"]


def test_the_deploys_exist_and_call_their_stage():
    for deploy, call in (("gateway", "run_gateway()"), ("monitoring", "run_monitoring()")):
        assert Path(f"deploys/{deploy}.py").read_text().rstrip().endswith(call)
