"""vlmfleet's pyinfra operations and stages, tested the way pyinfra tests its own operations.

Operations (``tests/fixtures/operations/<module>.<op>/<case>.json``), as pyinfra's ``tests/test_operations.py``
does: a fake host answers ``get_fact`` from the fixture's ``facts`` (``{"files.Sha256File": {"path=/x": ...}}``,
keyed by the fact's name and its arguments as pyinfra prints them) and records ``noop``; the undecorated
generator ``op._inner(*args, **kwargs)`` runs under ``ctx_host``/``ctx_state`` and what it yields must equal
``commands``: a string per shell command, ``["upload", <bytes as text>, dest, remote_temp_filename]`` per upload
(pyinfra's own form plus the temp name, which matters here). ``noop_description`` and ``logs`` (pyinfra's logger,
INFO and up) are compared when given; ``local_files`` are written to a temp folder, and an argument
``"tmp:<name>"`` is that file's path.

Stages (``tests/fixtures/operations/stage.<stage>/<case>.json``): the whole ``@deploy`` is planned in pyinfra's
API mode, with a real ``State`` and ``Inventory`` and no connection: the host's ``get_fact`` reads the fixture's
``facts`` (a fact not listed is an error), and ``ops`` lists each operation pyinfra recorded, in order, with the
commands its generator yields for that host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from contextlib import contextmanager
from inspect import signature
from pathlib import Path
from unittest.mock import patch

import pytest
from cfgs import BASE
from pyinfra.api import Config, FileUploadCommand, Inventory, State, StringCommand
from pyinfra.api.util import get_kwargs_str
from pyinfra.context import ctx_host, ctx_state

from vlmfleet import config
from vlmfleet.stages import common
from vlmfleet.stages.image import image
from vlmfleet.stages.preflight import preflight

FIXTURES = Path(__file__).parent / "fixtures" / "operations"
OP_CASES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("common.*/*.json"))
STAGE_CASES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("stage.*/*.json"))
OPERATIONS = {"common.fail_host": common.fail_host, "common.secret_file": common.secret_file}
STAGES = {"image": lambda cfg, problems: image(cfg), "preflight": preflight}


def load(case: str) -> dict:
    return json.loads((FIXTURES / case).read_text())


# ---- pyinfra-style fakes ---------------------------------------------------------------------------------
class FakeFacts:
    """Fact values by the fact's name (``files.Sha256File``, ``vlmfleet.facts.GpuQuery``) and, for facts with
    arguments, by pyinfra's argument string (``path=/etc/x``). Asking for one that is not there raises."""

    def __init__(self, facts: dict):
        self.facts = facts
        self.asked: list[tuple[str, str]] = []

    def get(self, fact_cls, **kwargs):
        for key in kwargs:  # as pyinfra's FakeHost: a fake argument must be a real one of the fact's command
            assert key in signature(fact_cls.command).parameters, f"{fact_cls.name}.command() has no {key!r}"
        self.asked.append((fact_cls.name, get_kwargs_str(kwargs)))
        if fact_cls.name not in self.facts:
            raise KeyError(f"missing test fact data: {fact_cls.name}")
        value = self.facts[fact_cls.name]
        if not kwargs:
            return value
        key = get_kwargs_str(kwargs)
        if key not in value:
            raise KeyError(f"missing test fact data: {fact_cls.name} ({key})")
        return value[key]


class FakeHost:
    """The host an operation sees: pyinfra's tests' FakeHost, reduced to what vlmfleet's operations use."""

    in_op = True
    current_deploy_name = None

    def __init__(self, facts: dict, name: str = "somehost"):
        self.name = name
        self.data = {}
        self.fact = FakeFacts(facts)
        self.noop_description = None

    def noop(self, description: str) -> None:
        self.noop_description = description

    def get_fact(self, fact_cls, **kwargs):
        return self.fact.get(fact_cls, **kwargs)


class FakeState:
    is_executing = False

    def __init__(self):
        self.inventory = Inventory(([], {}))
        self.config = Config()


def parse_commands(commands) -> list:
    """What an operation yielded, in the fixtures' form (strings stripped and wrapped as pyinfra's decorator does)."""
    out = []
    for command in commands:
        if isinstance(command, str):
            command = StringCommand(command.strip())
        if isinstance(command, StringCommand):
            out.append(command.get_raw_value())
        elif isinstance(command, FileUploadCommand):
            command.src.seek(0)
            data = command.src.read()
            command.src.seek(0)
            temp = str(command.remote_temp_filename)
            assert re.fullmatch(r".*/[0-9a-f]{16}", temp), temp  # random: no fingerprint of the secret
            out.append(["upload", data.decode() if isinstance(data, bytes) else data, str(command.dest),
                        re.sub(r"[0-9a-f]{16}$", "<random>", temp)])
        else:
            raise AssertionError(f"unexpected command {command!r}")
    return out


def parse_value(value, tmp: Path):
    """``"tmp:<name>"`` -> the path of that local file; lists and dicts recursively."""
    if isinstance(value, str) and value.startswith("tmp:"):
        return str(tmp / value[4:])
    if isinstance(value, list):
        return [parse_value(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: parse_value(v, tmp) for k, v in value.items()}
    return value


def run_op(case: str, tmp: Path, caplog) -> tuple[list, FakeHost, list[str]]:
    data = load(case)
    for name, text in data.get("local_files", {}).items():
        (tmp / name).write_text(text)
    op = OPERATIONS[case.split("/")[0]]
    host = FakeHost(data.get("facts", {}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pyinfra"), ctx_state.use(FakeState()), ctx_host.use(host):
        commands = list(op._inner(*parse_value(data.get("args", []), tmp), **parse_value(data.get("kwargs", {}), tmp)))
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("pyinfra")]
    return parse_commands(commands), host, logs


def secrets_of(data: dict) -> list[str]:
    return [text.splitlines()[0].strip() for text in data.get("local_files", {}).values()]


# ---- operations ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", OP_CASES)
def test_operation_fixture(case, tmp_path, caplog):
    """The operation yields exactly the fixture's commands, sets its noop and logs its lines."""
    data = load(case)
    commands, host, logs = run_op(case, tmp_path, caplog)
    assert commands == data["commands"]
    if "noop_description" in data or not commands:
        assert host.noop_description == data["noop_description"]
    else:
        assert host.noop_description is None
    if "logs" in data:
        assert logs == data["logs"]


@pytest.mark.parametrize("case", [c for c in OP_CASES if c.startswith("common.secret_file/")])
def test_secret_never_in_a_shell_command_or_log(case, tmp_path, caplog):
    """The secret travels only inside the upload's bytes: not in a shell command, the temp name, a noop or a log."""
    data = load(case)
    commands, host, logs = run_op(case, tmp_path, caplog)
    visible = [c for c in commands if isinstance(c, str)] + [c[3] for c in commands if isinstance(c, list)]
    visible += [host.noop_description or "", *logs]
    for secret in secrets_of(data):
        assert all(secret not in text for text in visible)
        assert all(secret in c[1] for c in commands if isinstance(c, list))


def test_secret_file_reads_the_fact_of_dest_only(tmp_path, caplog):
    """secret_file asks for one fact, the sha256 of dest, before deciding anything."""
    _, host, _ = run_op("common.secret_file/env_new.json", tmp_path, caplog)
    assert host.fact.asked == [("files.Sha256File", "path=/etc/vlmfleet/secrets/vllm-qwen7b.env")]


def test_secret_file_is_current_after_its_own_upload(tmp_path, caplog):
    """Idempotent as pyinfra means it: with the sha256 of what it uploaded as the fact, a second run yields nothing."""
    commands, _, _ = run_op("common.secret_file/env_new.json", tmp_path, caplog)
    uploaded = commands[1][1].encode()
    data = load("common.secret_file/env_new.json")
    host = FakeHost({"files.Sha256File": {f"path={data['kwargs']['dest']}": hashlib.sha256(uploaded).hexdigest()}})
    with ctx_state.use(FakeState()), ctx_host.use(host):
        assert list(common.secret_file._inner(**parse_value(data["kwargs"], tmp_path))) == []
    assert host.noop_description.endswith("is already current (contents not shown)")


@pytest.mark.parametrize("case", [c for c in OP_CASES if c.startswith("common.fail_host/")])
def test_fail_host_command_prints_the_reasons_and_fails(case):
    """Run in ``sh`` (what pyinfra runs it with), the command prints each reason verbatim on stderr and exits 1."""
    data = load(case)
    (command,) = data["commands"]
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "\n".join(data["args"][0]) + "\n")


def test_fail_host_is_not_idempotent():
    """fail_host always yields its command (pyinfra's idempotence check is off for it); secret_file's is on."""
    assert common.fail_host._inner.is_idempotent is False
    assert common.secret_file._inner.is_idempotent is True


# ---- through pyinfra's decorator: a real State, no connection --------------------------------------------
@contextmanager
def planning(facts: dict, name: str = "h1"):
    """A pyinfra API-mode State with one host whose facts come from ``facts``; yields (state, host, noops, facts)."""
    inventory = Inventory(([name], {}))
    state = State(inventory, Config())
    host = inventory.get_host(name)
    noops: list[str] = []
    fake = FakeFacts(facts)
    with patch.object(host, "get_fact", fake.get), patch.object(host, "noop", noops.append):
        with ctx_state.use(state), ctx_host.use(host):
            yield state, host, noops, fake


def recorded_ops(state: State, host) -> list[dict]:
    """The operations pyinfra recorded for ``host``, in order: names, the commands they would run, and the
    ``_timeout`` pyinfra bounds each command by (when one is set).
    (Call inside ``planning()``: the generators read the host from pyinfra's context.)"""
    ops = []
    for op_hash in state.get_op_order():
        if op_hash not in state.ops[host]:
            continue
        op_data = state.get_op_data_for_host(host, op_hash)
        op = {"name": ", ".join(sorted(state.get_op_meta(op_hash).names)),
              "commands": parse_commands(op_data.command_generator())}
        if op_data.global_arguments.get("_timeout") is not None:
            op["timeout"] = op_data.global_arguments["_timeout"]  # pyinfra's bound on each of its commands
        ops.append(op)
    return ops


def test_secret_file_through_pyinfra_records_no_secret(tmp_path):
    """Called as deploy code does, the operation is recorded with its name and the same three commands, and
    nothing pyinfra stores about it (names, args it attaches when unnamed) holds the secret."""
    data = load("common.secret_file/env_new.json")
    (tmp_path / "api-key").write_text(data["local_files"]["api-key"])
    kwargs = parse_value(data["kwargs"], tmp_path)
    with planning(data["facts"]) as (state, host, noops, _):
        named = common.secret_file(name="Install the API key", **kwargs)
        ops = recorded_ops(state, host)
        meta = state.get_op_meta(named._hash)
        assert named.will_change
    assert noops == []
    assert ops == [{"name": "Install the API key", "commands": data["commands"]}]
    secret = secrets_of(data)[0]
    assert secret not in json.dumps({"names": sorted(meta.names), "args": meta.args})


def test_unnamed_secret_file_args_hold_paths_not_the_secret(tmp_path):
    """Unnamed, pyinfra names the operation ``common.secret_file`` and attaches its arguments: paths and the
    format, never the secret."""
    data = load("common.secret_file/env_new.json")
    (tmp_path / "api-key").write_text(data["local_files"]["api-key"])
    with planning(data["facts"]) as (state, host, _, _):
        op = common.secret_file(**parse_value(data["kwargs"], tmp_path))
        meta = state.get_op_meta(op._hash)
    assert meta.names == {"common.secret_file"}
    assert f"dest={data['kwargs']['dest']}" in meta.args
    assert all(secrets_of(data)[0] not in a for a in meta.args)


# ---- stages ----------------------------------------------------------------------------------------------
def plan_stage(case: str) -> tuple[list[dict], list[str], object, FakeFacts]:
    data = load(case)
    cfg, problems = config.build("h1", {**BASE, **data["data"]}, check_files=False)
    stage = STAGES[case.split("/")[0].removeprefix("stage.")]
    with planning(data["facts"]) as (state, host, noops, facts):
        returned = stage(cfg, problems)
        ops = recorded_ops(state, host)
    return ops, noops, returned, facts


@pytest.mark.parametrize("case", STAGE_CASES)
def test_stage_fixture(case):
    """The stage records exactly the fixture's operations (names and commands) and noops."""
    data = load(case)
    ops, noops, _, _ = plan_stage(case)
    assert ops == data["ops"]
    assert noops == data["noops"]


def test_image_stage_returns_the_pull_for_the_service_stage():
    """The pull is returned (the service restarts when it changed); nothing when the image is there."""
    _, _, returned, _ = plan_stage("stage.image/absent.json")
    assert len(returned) == 1 and returned[0].will_change
    assert plan_stage("stage.image/present.json")[2] == []


def test_preflight_on_bad_data_reads_no_fact():
    """Bad data fails the host before anything is asked of it."""
    _, _, verdict, facts = plan_stage("stage.preflight/bad_data.json")
    assert facts.asked == []
    assert not verdict.ok


def test_preflight_on_the_h100_reads_each_fact_once():
    """The facts preflight gathers, in order, each once; the verdict carries the plan."""
    _, _, verdict, facts = plan_stage("stage.preflight/h100_passes.json")
    assert facts.asked == [
        ("server.LinuxDistribution", ""),
        ("vlmfleet.facts.JsonFile", "path=/srv/models/Qwen2.5-VL-7B-Instruct/.vlmfleet-verified.json"),
        ("vlmfleet.facts.GpuQuery", ""),
        ("vlmfleet.facts.GpuTopology", ""),
        ("vlmfleet.facts.FreeBytes", "path=/srv/models"),
        ("vlmfleet.facts.FreeBytes", "path=/var/lib/docker"),
        ("vlmfleet.facts.DockerImage", "ref=vllm/vllm-openai:v0.33.0"),
        ("vlmfleet.facts.JsonFile", "path=/etc/docker/daemon.json"),
    ]
    assert verdict.ok


def test_preflight_noop_matches_the_live_h100_run():
    """The noop planned from the H100's facts is the line the live ``pyinfra @local`` run printed, up to its KV
    token count (the planner's of that time: tests/test_live_gpu_fixture.py says why)."""
    live = (Path(__file__).parent / "fixtures/gpu/h100-device/pyinfra-local-preflight-qwen7b.txt").read_text()
    (noop,) = load("stage.preflight/h100_passes.json")["noops"]
    assert f"[@local] noop: {noop.split(' fits, ')[0]} fits, " in live


@pytest.mark.parametrize("case", ["stage.preflight/driver_not_loaded.json", "stage.preflight/bad_data.json"])
def test_preflight_failure_command_runs(case):
    """The fail_host command preflight records prints its reason on stderr and exits 1 in ``sh``."""
    (op,) = load(case)["ops"]
    (command,) = op["commands"]
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and proc.stderr.startswith("h1: ") and proc.stderr.count("\n") == 1


def test_apt_update_is_bounded_and_retried_and_really_gives_up(tmp_path):
    """The command kills a hung try and tries again, three times; a fake apt-get that hangs makes it fail in
    bounded time with a line that says so (the real command, run by sh)."""
    cmd = common.apt_update_command(2, tries=3)
    assert cmd.startswith("for try in $(seq 1 3); do timeout -k 10 2 apt-get update -q && exit 0; ")
    fake = tmp_path / "apt-get"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    import os
    import time

    t0 = time.monotonic()
    proc = subprocess.run(["sh", "-c", cmd.replace("sleep 5", "sleep 0")], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 20
    assert proc.stderr.count("failed or hung for 2s") == 3 and "failed 3 times" in proc.stderr
    fake.write_text("#!/bin/sh\nexit 0\n")
    ok = subprocess.run(["sh", "-c", cmd], env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert ok.returncode == 0


# ---- bounded waits (issue 9) -------------------------------------------------------------------------------
def test_a_bounded_command_is_killed_and_says_which_key_to_raise():
    cmd = common.bounded("sleep 5", 1, "sleeping", "nap_timeout_s")
    assert cmd == ("timeout -k 30 1 sleep 5; rc=$?; if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo 'sleeping: no "
                   "result after 1s (nap_timeout_s); the network or the far end hangs — fix: check it, or raise "
                   "nap_timeout_s' >&2; fi; exit $rc")
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 124 and proc.stderr == ("sleeping: no result after 1s (nap_timeout_s); the network or "
                                                      "the far end hangs — fix: check it, or raise nap_timeout_s\n")
    ok = subprocess.run(["sh", "-c", common.bounded("echo fine", 5, "x", "k")], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "fine\n", "")
    failed = subprocess.run(["sh", "-c", common.bounded("false", 5, "x", "k")], capture_output=True, text=True)
    assert (failed.returncode, failed.stderr) == (1, "")  # a failure that is not a timeout keeps its own code


def test_pyinfra_waits_a_minute_longer_than_the_command_bounds_itself():
    assert common.pyinfra_timeout(3600) == 3660
    assert common.apt_update_bound(600) == 3 * 615 + 60  # three tries, each with its kill grace and pause
