"""The parser tier: every command line the planner renders, parsed by the real vLLM of that version.

0.33.0 is installed from PyPI into .cache/vllm-0.33.0 (`make vllm-parsers`, ~6 min, ~9 GB) and its own parser
is used. 0.8.2 no longer installs (its pinned xgrammar==0.1.16 is gone from PyPI): its flag table is extracted
from the wheel's source by tools/vllm_flags.py, and this tier proves the committed table is what that script
extracts from the real 0.8.2 wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmfleet.catalog import HERE as CATALOG, vllm_version
from vlmfleet.flags import serve_args
from vlmfleet.profiles import accepted
from vlmfleet.seed import SEED_COMMANDS

pytestmark = pytest.mark.parser

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("vllm_parse_runner.py")
VLLM_033 = Path(os.environ.get("VLMFLEET_VLLM_0_33_0_PYTHON", REPO / ".cache/vllm-0.33.0/bin/python"))
WHEEL_082 = Path(os.environ.get("VLMFLEET_VLLM_0_8_2_WHEEL",
                                REPO / ".cache/wheels/vllm-0.8.2-cp38-abi3-manylinux1_x86_64.whl"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make vllm-parsers` (the parser tier never skips)")
    return path


def real_parse(argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(_need(VLLM_033)), str(RUNNER)], input=json.dumps(argvs), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_accepted_profile_parses_with_real_vllm_0_33():
    v = vllm_version("0.33.0")
    rows = list(accepted(v))
    assert len(rows) > 100
    argvs = [serve_args(p, f"/models/{p.model.repo_dir}", pid) for pid, _, p in rows]
    results = real_parse(argvs)
    bad = [(rows[i][0], rows[i][1], r["error"]) for i, r in enumerate(results) if not r["ok"]]
    assert bad == []
    assert {r["tp"] for r in results} >= {1, 2, 4, 8}


def test_real_parser_rejects_what_the_seed_and_old_versions_wrote():
    argvs = [
        ["vllm", "serve", "/m", "--limit-mm-per-prompt", "image=5,video=5"],  # kv form, rejected since 0.10
        ["vllm", "serve", "/m", "--chunked-prefix-reserve-ratio", "0.2"],  # never existed
        ["vllm", "serve", "/m", "--task", "generate"],  # removed
        ["vllm", "serve", "/m", "--swap-space", "16"],  # removed
        ["vllm", "serve", "/m", "--kv-cache-dtype", "fp4"],  # not a cache dtype
        ["vllm", "serve", "/m", "--quantization", "awq4"],  # not a method
        ["vllm", "serve", "/m", "--limit-mm-per-prompt", '{"image":5,"video":0}'],  # the good form
    ]
    results = real_parse(argvs)
    assert [r["ok"] for r in results] == [False, False, False, False, False, False, True], results


def test_flags_the_catalog_calls_removed_are_rejected_and_log_requests_is_not():
    v = vllm_version("0.33.0")
    argvs = [["vllm", "serve", "/m", flag, "1"] for flag in v.removed_flags]
    argvs.append(["vllm", "serve", "/m", "--disable-log-requests"])
    results = real_parse(argvs)
    assert [r["ok"] for r in results] == [False] * len(v.removed_flags) + [True], results


def test_corrected_seed_commands_parse_on_0_33():
    from vlmfleet.seed import evaluate

    v = vllm_version("0.33.0")
    argvs = [evaluate(sc, v).corrected_args() for sc in SEED_COMMANDS]
    assert all(r["ok"] for r in real_parse(argvs))


def test_committed_0_33_flag_table_is_what_the_real_parser_says():
    proc = subprocess.run([str(_need(VLLM_033)), str(REPO / "tools/vllm_flags.py"), "--installed"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout)
    committed = json.loads((CATALOG / "vllm-flags-0.33.0.json").read_text())
    assert fresh["version"] == "0.33.0"
    assert fresh["flags"] == committed["flags"]


def test_committed_0_8_2_flag_table_is_what_the_script_extracts_from_the_wheel():
    proc = subprocess.run([sys.executable, str(REPO / "tools/vllm_flags.py"), "--wheel", str(_need(WHEEL_082))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout)
    committed = json.loads((CATALOG / "vllm-flags-0.8.2.json").read_text())
    assert fresh == committed
    flags = fresh["flags"]
    assert flags["--limit-mm-per-prompt"]["kind"] == "kv" and "--disable-log-requests" in flags
    assert "awq_marlin" in flags["--quantization"]["choices"]
