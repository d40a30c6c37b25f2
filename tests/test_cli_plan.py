"""`vlmfleet plan` as an operator runs it: formats, exit codes, one-line errors, the plot."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "gpu" / "h100-device"


def vlmfleet(*args):
    return subprocess.run([sys.executable, "-m", "vlmfleet.cli", *args], capture_output=True, text=True)


def test_table_output_for_the_issue_example():
    proc = vlmfleet("plan", "--model", "qwen2.5-vl-72b-instruct-awq", "--gpus", "8xT4", "--vllm", "0.8.2",
                    "--max-model-len", "4096", "--gpu-memory-utilization", "0.75")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("vlmfleet plan: qwen2.5-vl-72b-instruct-awq on 8xT4 (15360 MiB each, cc 7.5, pcie_no_p2p), "
                          "vLLM 0.8.2 (V0 engine)\n")
    assert "verdict: FITS" in out
    assert "KV cache: 40960 B/token per GPU" in out
    assert "--quantization awq" in out and "NCCL_P2P_DISABLE=1" in out


def test_json_csv_md_formats():
    base = ["plan", "--model", "qwen2.5-vl-7b-instruct", "--gpus", "1xA10", "--max-model-len", "128000"]
    js = vlmfleet(*base, "--format", "json")
    assert js.returncode == 4  # does not fit
    data = json.loads(js.stdout)
    assert data["verdict"] == "does not fit" and data["kv_bytes_per_token_per_gpu"] == 57344
    assert data["proposal"]["verdict"] == "fits" and data["proposal"]["command"][:2] == ["vllm", "serve"]
    rows = list(csv.DictReader(io.StringIO(vlmfleet(*base, "--format", "csv").stdout)))
    assert len(rows) == 1 and rows[0]["verdict"] == "does not fit" and rows[0]["kv_bytes_per_token"] == "57344"
    md = vlmfleet(*base, "--format", "md").stdout
    assert md.startswith("### qwen2.5-vl-7b-instruct on 1xA10") and "| weights | 15.64 |" in md  # 15.45 GiB of parameters + 0.19 of buffers, as logged


def test_plan_from_saved_nvidia_smi_output():
    proc = vlmfleet("plan", "--nvidia-smi-csv", str(FIX / "nvidia-smi-query.csv"), "--nvidia-smi-topo",
                    str(FIX / "nvidia-smi-topo.txt"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["gpus"] == "1xH100 (81559 MiB each, cc 9.0, nvlink)"


def test_from_command_plans_a_pasted_line():
    proc = vlmfleet("plan", "--gpus", "4xT4", "--vllm", "0.8.2", "--from-command",
                    "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --tensor-parallel-size 4 --quantization awq --api-key sk-1")
    assert proc.returncode == 4
    assert "command: --api-key puts the API key in argv" in proc.stderr
    assert "not an AWQ checkpoint" in proc.stdout and "sk-1" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--gpus", "4xV100"], "vlmfleet plan: error: GPU spec '4xV100': unknown GPU 'V100'"),
    (["--gpus", "4xT4", "--model", "llama"], "vlmfleet plan: error: unknown model 'llama'"),
    (["--gpus", "4xT4", "--vllm", "0.5.0"], "vlmfleet plan: error: vLLM 0.5.0 is outside the span the planner knows (0.7.2 to 0.33.0)"),
    (["--gpus", "4xT4", "--vllm", "0.33.1"], "vlmfleet plan: error: vLLM 0.33.1 is outside the span the planner knows"),
    (["--gpus", "4xT4", "--vllm", "0.8"], "vlmfleet plan: error: vLLM version '0.8' is not a release number"),
    (["--gpus", "4xT4", "--vllm", "00.08.02"], "vlmfleet plan: error: vLLM version '00.08.02' is not a release number"),
    (["--gpus", "4xT4", "--vllm", "\uff10.\uff18.\uff12"], "vlmfleet plan: error: vLLM version '\uff10.\uff18.\uff12' is not a release number"),
    (["--gpus", "4xT4", "--vllm", "0.8.2-1"], "vlmfleet plan: error: vLLM version '0.8.2-1' is not a release number"),
    ([], "vlmfleet plan: error: give --gpus COUNTxKIND"),
    (["--gpus", "1xA10", "--config", "/nonexistent/config.json"], "vlmfleet plan: error: config.json not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = vlmfleet("plan", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_seed_table_text():
    proc = vlmfleet("plan", "--seed-table", "--vllm", "0.8.2")
    assert proc.returncode == 0 and proc.stdout.count("== ") == 6


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "plan.png"
    proc = vlmfleet("plan", "--gpus", "2xA10", "--max-model-len", "32768", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
