"""vlmfleet's pyinfra facts, tested the way pyinfra tests its own facts.

Part 1, by value: every ``tests/fixtures/facts/<FactName>/<case>.json`` holds

    {"arg": {...}, "command": "<the exact shell command>", "requires_command": "...",
     "output": ["stdout", "lines"], "fact": <the parsed value>}

and ``Fact().command(**arg)`` must be that command, ``Fact().process(output)`` that fact (``description`` is for
the reader). ``arg`` is left out for facts called without arguments; ``requires_command`` is there for facts that
declare one.

Part 2, for real: the commands of GpuQuery, GpuTopology, FreeBytes, JsonFile, VlmfleetUnits, DockerImage and
CommandJson are run by pyinfra's own ``pyinfra.api.facts.get_fact`` (its ``requires_command`` guard, its "no output
means the default" rule, its ``sh -c`` wrapping) on a sandbox host whose ``run_shell_command`` runs the command in a
local shell, with fake ``nvidia-smi``/``docker`` scripts on PATH and files in ``tmp_path``. That proves each
command prints what its ``process()`` expects.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from pyinfra.api import Config, Inventory, State, StringCommand
from pyinfra.api.facts import get_fact
from pyinfra.connectors.util import CommandOutput, OutputLine, make_unix_command

from vlmfleet import facts as F
from vlmfleet.config import UNIT_MARKER
from vlmfleet.gpus import parse_nvidia_smi, topo_has_nvlink

FIXTURES = Path(__file__).parent / "fixtures" / "facts"
CASES = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.json"))
FACT_CLASSES = sorted(n for n, v in vars(F).items()
                      if isinstance(v, type) and issubclass(v, F.FactBase) and v.__module__ == F.__name__)

H100_CSV = "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.159.04, 00000000:00:06.0"
A10_CSV = ("0, NVIDIA A10, 23028, 8.6, 550.54.15, 00000000:17:00.0\n"
           "1, NVIDIA A10, 23028, 8.6, 550.54.15, 00000000:65:00.0")
DRIVER_ERROR = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.")


def load(case: str) -> dict:
    return json.loads((FIXTURES / case).read_text())


# ---- part 1: fixtures ------------------------------------------------------------------------------------
def test_every_fact_has_fixtures():
    """Each fact class in vlmfleet.facts has a fixture folder (and no folder names a fact that is gone)."""
    folders = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    assert folders == FACT_CLASSES


@pytest.mark.parametrize("case", CASES)
def test_fact_fixture(case):
    """The fixture's command is exactly what the fact sends, and its output parses to the fixture's fact."""
    data = load(case)
    fact = getattr(F, case.split("/")[0])()
    command = fact.command(**data.get("arg", {}))
    assert StringCommand(command).get_raw_value() == data["command"]
    requires = fact.requires_command(**data.get("arg", {})) if callable(fact.requires_command) else fact.requires_command
    assert requires == data.get("requires_command")
    parsed = fact.process(list(data["output"]))
    assert json.loads(json.dumps(parsed)) == data["fact"]  # as pyinfra's test does: compare the JSON form


@pytest.mark.parametrize("case", ["GpuQuery/h100.json", "GpuQuery/a10x2.json"])
def test_gpu_query_csv_feeds_the_gpu_parser(case):
    """The CSV a GpuQuery fixture yields is what vlmfleet.gpus parses: the H100 and the 2xA10 box."""
    inv = parse_nvidia_smi(load(case)["fact"]["csv"])
    assert inv.describe() in ("1xH100 (81559 MiB each, cc 9.0, nvlink)", "2xA10 (23028 MiB each, cc 8.6, pcie)")


def test_gpu_topology_fixtures_tell_nvlink():
    """The DGX layout's NV18 rows read as NVLink, the single H100 has no GPU pair."""
    assert topo_has_nvlink(load("GpuTopology/dgx_h100_nv18.json")["fact"])
    assert not topo_has_nvlink(load("GpuTopology/h100_single.json")["fact"])
    csv = "\n".join(f"{i}, NVIDIA H100 80GB HBM3, 81559, 9.0, 580.159.04, 00000000:{i:02x}:00.0" for i in range(8))
    assert parse_nvidia_smi(csv, load("GpuTopology/dgx_h100_nv18.json")["fact"]).interconnect == "nvlink"


def test_h100_topology_fixture_is_the_captured_file():
    """The single-H100 topology fixture is the captured ``nvidia-smi topo -m`` byte for byte (less the final newline)."""
    captured = (Path(__file__).parent / "fixtures/gpu/h100-device/nvidia-smi-topo.txt").read_text()
    assert load("GpuTopology/h100_single.json")["fact"] + "\n" == captured


# ---- part 2: the commands, run -----------------------------------------------------------------------------
class Sandbox:
    """A pyinfra host whose commands run in a local ``sh`` with PATH = ``<tmp>/bin`` first: what pyinfra's
    ``get_fact`` sends (guard and ``sh -c`` wrapping included) is run for real, nothing else is faked."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.sent: list[str] = []
        inventory = Inventory((["sandbox"], {}))
        self.state = State(inventory, Config())
        self.host = inventory.get_host("sandbox")
        self.host.connected = True  # nothing to connect to: run_shell_command below is the connection
        self.host.run_shell_command = self.run_shell_command

    def run_shell_command(self, command, print_output=False, print_input=False, **kwargs):
        raw = make_unix_command(command, _shell_executable=kwargs.get("_shell_executable", "sh")).get_raw_value()
        self.sent.append(raw)
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C"}
        proc = subprocess.run(raw, shell=True, capture_output=True, text=True, env=env, timeout=30)
        lines = [OutputLine("stdout", line) for line in proc.stdout.splitlines()]
        lines += [OutputLine("stderr", line) for line in proc.stderr.splitlines()]
        return proc.returncode == 0, CommandOutput(lines)

    def script(self, name: str, body: str) -> None:
        """A fake binary on the sandbox PATH."""
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)

    def fact(self, cls, **kwargs):
        return get_fact(self.state, self.host, cls, kwargs=kwargs)


@pytest.fixture
def sandbox(tmp_path):
    return Sandbox(tmp_path)


def fake_nvidia_smi(sandbox: Sandbox, stdout: str, rc: int = 0) -> None:
    """nvidia-smi that answers the preflight query (and only it) with ``stdout`` and exits ``rc``."""
    query = shlex.split(F.NVIDIA_SMI_QUERY)[1:]
    sandbox.script("nvidia-smi", f"""\
[ "$*" = {shlex.quote(" ".join(query))} ] || {{ echo "unexpected arguments: $*" >&2; exit 64; }}
printf '%s' {shlex.quote(stdout)}
exit {rc}
""")


def test_gpu_query_runs_on_the_h100_output(sandbox):
    """A working nvidia-smi: the fact is the CSV, as in the H100 fixture."""
    fake_nvidia_smi(sandbox, H100_CSV + "\n")
    assert sandbox.fact(F.GpuQuery) == {"csv": H100_CSV} == load("GpuQuery/h100.json")["fact"]


def test_gpu_query_runs_on_two_a10s(sandbox):
    """Two lines of CSV stay two lines."""
    fake_nvidia_smi(sandbox, A10_CSV + "\n")
    assert sandbox.fact(F.GpuQuery) == {"csv": A10_CSV} == load("GpuQuery/a10x2.json")["fact"]


def test_gpu_query_driver_failure_is_an_error_not_a_failed_fact(sandbox):
    """nvidia-smi printing the driver error and exiting 9: the fact still loads (exit 0), with the error text."""
    fake_nvidia_smi(sandbox, DRIVER_ERROR + "\n", rc=9)
    assert sandbox.fact(F.GpuQuery) == {"error": DRIVER_ERROR} == load("GpuQuery/driver_not_loaded.json")["fact"]


def test_gpu_query_error_on_stderr_is_captured(sandbox):
    """The error is kept when nvidia-smi prints it on stderr (``2>&1`` inside the command)."""
    sandbox.script("nvidia-smi", 'echo "No devices were found" >&2; exit 6\n')
    assert sandbox.fact(F.GpuQuery) == {"error": "No devices were found"}


def test_gpu_query_exit_0_without_output(sandbox):
    """nvidia-smi exiting 0 and printing nothing is an error, not an empty CSV."""
    fake_nvidia_smi(sandbox, "")
    assert sandbox.fact(F.GpuQuery) == load("GpuQuery/rc0_no_output.json")["fact"]


def test_gpu_query_without_nvidia_smi_is_none(sandbox):
    """No nvidia-smi on PATH: pyinfra's requires_command guard gives the default, None, without running it."""
    assert sandbox.fact(F.GpuQuery) is None
    assert "command -v nvidia-smi" in sandbox.sent[0]


def test_gpu_topology_runs(sandbox):
    """``nvidia-smi topo -m``'s text comes back as it was printed, tabs and escape codes included."""
    text = load("GpuTopology/dgx_h100_nv18.json")["fact"]
    sandbox.script("nvidia-smi", f'[ "$*" = "topo -m" ] || exit 64\nprintf "%s\\n" {shlex.quote(text)}\n')
    assert sandbox.fact(F.GpuTopology) == text


def test_gpu_topology_failing_is_none(sandbox):
    """A failing ``topo -m`` prints nothing on stdout and does not fail the fact."""
    sandbox.script("nvidia-smi", f"echo {shlex.quote(DRIVER_ERROR)} >&2; exit 9\n")
    assert sandbox.fact(F.GpuTopology) is None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_free_bytes_walks_up_to_an_existing_parent(sandbox, tmp_path):
    """A model dir that does not exist yet: the free space of the filesystem holding its nearest parent."""
    got = sandbox.fact(F.FreeBytes, path=str(tmp_path / "srv" / "models" / "Qwen2.5-VL-7B-Instruct"))
    assert isinstance(got, int)
    assert abs(got - free_bytes(tmp_path)) < 256 * 2**20  # the disk is shared: allow for other writers


def test_free_bytes_of_an_odd_path(sandbox, tmp_path):
    """A path with blanks, quotes and ``$`` reaches df intact."""
    odd = tmp_path / "my models" / "it's $HOME"
    odd.mkdir(parents=True)
    assert abs(sandbox.fact(F.FreeBytes, path=str(odd)) - free_bytes(tmp_path)) < 256 * 2**20


@pytest.mark.parametrize("text, want", [
    (None, {"exists": False}),
    ("", {"exists": True, "valid": True, "data": {}}),
    ('{"registry-mirrors": ["https://mirror.gcr.io"]}\n',
     {"exists": True, "valid": True, "data": {"registry-mirrors": ["https://mirror.gcr.io"]}}),
    ('{"data-root": "/data/docker"}', {"exists": True, "valid": True, "data": {"data-root": "/data/docker"}}),
    ('{\n  // our mirror\n  "registry-mirrors": []\n}\n',
     {"exists": True, "valid": False, "error": "Expecting property name enclosed in double quotes at line 2"}),
    ('["https://mirror.gcr.io"]\n', {"exists": True, "valid": False, "error": "top level is not an object"}),
], ids=["missing", "empty", "valid", "no-final-newline", "invalid", "list"])
def test_json_file_runs(sandbox, tmp_path, text, want):
    """daemon.json missing, empty, valid (with or without a final newline), invalid, or a list."""
    path = tmp_path / "etc docker" / "daemon.json"
    if text is not None:
        path.parent.mkdir()
        path.write_text(text)
    assert sandbox.fact(F.JsonFile, path=str(path)) == want


def test_json_file_on_a_directory_is_missing(sandbox, tmp_path):
    """A directory where the file should be reads as missing (``[ -f ]``), not as an error."""
    assert sandbox.fact(F.JsonFile, path=str(tmp_path)) == {"exists": False}


def test_vlmfleet_units_runs(sandbox, tmp_path):
    """Only ``vllm-*.service`` files whose first line is the marker are vlmfleet's."""
    units = tmp_path / "system"
    units.mkdir()
    (units / "vllm-qwen7b.service").write_text(f"{UNIT_MARKER}\n[Unit]\n")
    (units / "vllm-qwen72b_awq.service").write_text(f"{UNIT_MARKER} (profile qwen72b_awq)\n[Unit]\n")
    (units / "vllm-handmade.service").write_text("[Unit]\nDescription=not ours\n")
    (units / "vllm-late.service").write_text(f"[Unit]\n{UNIT_MARKER}\n")  # the marker on line 2 does not count
    (units / "docker.service").write_text(f"{UNIT_MARKER}\n")  # not a vllm-* unit
    (units / "vllm-dir.service").mkdir()  # not a file
    (units / "vllm-empty.service").write_text("")
    assert sandbox.fact(F.VlmfleetUnits, unit_dir=str(units)) == ["vllm-qwen72b_awq.service", "vllm-qwen7b.service"]


def test_vlmfleet_units_none_on_the_host(sandbox, tmp_path):
    """No unit: the command prints nothing and exits 0, so pyinfra returns the fact's default, [] (as
    ``process`` itself would)."""
    assert sandbox.fact(F.VlmfleetUnits, unit_dir=str(tmp_path)) == []
    assert F.VlmfleetUnits().process([]) == []


def test_vlmfleet_units_in_a_folder_with_a_blank(sandbox, tmp_path):
    """The unit folder is quoted, the glob still expands."""
    units = tmp_path / "unit dir"
    units.mkdir()
    (units / "vllm-qwen7b.service").write_text(f"{UNIT_MARKER}\n")
    assert sandbox.fact(F.VlmfleetUnits, unit_dir=str(units)) == ["vllm-qwen7b.service"]


def test_docker_image_runs(sandbox):
    """docker receives the Go template with single braces pairs intact; its answer parses (fake docker)."""
    case = load("DockerImage/present.json")
    sandbox.script("docker", f"""\
[ "$1 $2 $3" = "image inspect --format" ] && [ "$4" = '{{{{.Id}}}} {{{{json .RepoDigests}}}}' ] || exit 64
[ "$5" = {shlex.quote(case["arg"]["ref"])} ] || {{ echo "Error: No such image: $5" >&2; exit 1; }}
printf '%s\\n' {shlex.quote(case["output"][0])}
""")
    assert sandbox.fact(F.DockerImage, **case["arg"]) == case["fact"]
    assert sandbox.fact(F.DockerImage, ref="vllm/vllm-openai:v0.8.2") is None  # absent: exit 1, stderr only


def test_docker_image_without_docker_is_none(sandbox):
    """No docker on PATH (before the base stage installs it): None, via pyinfra's requires_command guard."""
    assert sandbox.fact(F.DockerImage, ref="vllm/vllm-openai:v0.33.0") is None


def test_command_json_runs(sandbox):
    """A command printing JSON gives the object; one that fails or prints junk gives None, never a failed fact.
    Commands are one simple command, as ``shlex.join`` builds them for the weights and health stages."""
    sandbox.script("vlmfleet-fetch", """\
case "$1" in
  ok) printf '{"state": "verified", "bad": []}\\n' ;;
  fail) echo "Traceback (most recent call last):" >&2; exit 3 ;;
  junk) echo "Fetching 5 files: 100%"; echo '{}' ;;
esac
""")
    assert sandbox.fact(F.CommandJson, command="vlmfleet-fetch ok") == {"state": "verified", "bad": []}
    assert sandbox.fact(F.CommandJson, command="vlmfleet-fetch fail") is None
    assert sandbox.fact(F.CommandJson, command="vlmfleet-fetch junk") is None
