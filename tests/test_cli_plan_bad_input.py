"""`vlmfleet plan` keeps its exit promise on bad input: 0 fits, 2 bad input, 3 internal error, 4 does not fit or
invalid; a bad value is one stderr line naming the option (or the --from-command flag) and the value, never a
traceback."""

import json
import sys

import pytest

from vlmfleet.cli import build_parser, main

CMD = "vllm serve Qwen/Qwen2.5-VL-7B-Instruct"


def run(capsys, *args):
    """``vlmfleet plan ARGS`` in-process: (exit status, stdout, stderr); argparse's SystemExit counts as a return."""
    try:
        rc = main(["plan", *args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def plan_json(capsys, gpus: str, flags: str, *extra: str):
    """``vlmfleet plan --gpus GPUS [EXTRA] --format json --from-command "vllm serve MODEL FLAGS"``: (exit status,
    the plan as JSON, stderr)."""
    rc, out, err = run(capsys, "--gpus", gpus, *extra, "--format", "json", "--from-command", f"{CMD} {flags}")
    return rc, json.loads(out), err


def fill(text: str, files: dict) -> str:
    """``text`` with each {name} of ``files`` replaced by its path (other braces, e.g. JSON, left alone)."""
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return text


@pytest.fixture
def files(tmp_path):
    """Paths of the broken inputs the cases name as {folder}, {list}, ...: each file written here."""
    paths = {"folder": tmp_path, "missing": tmp_path / "nowhere" / "config.json", "list": tmp_path / "list.json",
             "bad": tmp_path / "bad.json", "notqwen": tmp_path / "llama.json", "zero": tmp_path / "zero.json",
             "heads": tmp_path / "heads.json", "csv": tmp_path / "missing.csv"}
    paths["list"].write_text("[1, 2]")
    paths["bad"].write_text('{"hidden_size": 3584,')
    paths["notqwen"].write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    paths["zero"].write_text(json.dumps({"num_hidden_layers": 0}))
    paths["heads"].write_text(json.dumps({"hidden_size": 3584, "num_attention_heads": 0}))
    return {k: str(v) for k, v in paths.items()}


# (arguments after `plan`, text stderr must hold: the option or flag and the bad value); {name}: a path of `files`
BAD = [
    (["--gpus", "1xA10", "--tp", "-2"], "vlmfleet plan: error: --tp -2: must be a whole number >= 1 (e.g. --tp 2)"),
    (["--gpus", "1xA10", "--tp", "0"], "--tp 0: must be a whole number >= 1"),
    (["--gpus", "1xA10", "--tp", "two"], "--tp 'two': must be a whole number >= 1"),
    (["--gpus", "1xA10", "--tp", "1.5"], "--tp 1.5: must be a whole number >= 1"),
    (["--gpus", "1xA10", "--max-model-len", "0"], "--max-model-len 0: must be a whole number of tokens >= 1, or auto"),
    (["--gpus", "1xA10", "--max-model-len", "-5"], "--max-model-len -5: must be a whole number of tokens"),
    (["--gpus", "1xA10", "--max-model-len", "abc"],
     "vlmfleet plan: error: --max-model-len 'abc': must be a whole number of tokens >= 1, or auto"),
    (["--gpus", "1xA10", "--max-num-seqs", "0"], "--max-num-seqs 0: must be a whole number >= 1"),
    (["--gpus", "1xA10", "--max-num-seqs", "-16"], "--max-num-seqs -16: must be a whole number >= 1"),
    (["--gpus", "1xA10", "--max-num-batched-tokens", "0"], "--max-num-batched-tokens 0: must be a whole number of tokens >= 1"),
    (["--gpus", "1xA10", "--max-num-batched-tokens", "lots"], "--max-num-batched-tokens 'lots': must be"),
    (["--gpus", "1xA10", "--max-pixels", "0"], "--max-pixels 0: must be a whole number of pixels >= 3136"),
    (["--gpus", "1xA10", "--max-pixels", "1"], "--max-pixels 1: must be a whole number of pixels >= 3136"),
    (["--gpus", "1xA10", "--limit-images", "99999999999"], "--limit-images 99999999999: must be a whole number <= 999"),
    (["--gpus", "1xA10", "--tp", "65"], "--tp 65: must be a whole number <= 64"),
    (["--gpus", "1xA10", "--max-pixels", "-1003520"], "--max-pixels -1003520: must be"),
    (["--gpus", "1xA10", "--limit-images", "-1"], "--limit-images -1: must be a whole number >= 0"),
    (["--gpus", "1xA10", "--limit-videos", "-2"], "--limit-videos -2: must be a whole number >= 0"),
    (["--gpus", "1xA10", "--gpu-memory-utilization", "0"], "--gpu-memory-utilization 0: must be a fraction in (0, 1]"),
    (["--gpus", "1xA10", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization 1.5: must be a fraction in (0, 1]"),
    (["--gpus", "1xA10", "--gpu-memory-utilization", "-0.5"], "--gpu-memory-utilization -0.5: must be a fraction"),
    (["--gpus", "1xA10", "--gpu-memory-utilization", "nan"], "--gpu-memory-utilization 'nan': must be a fraction"),
    (["--gpus", "1xA10", "--gpu-memory-utilization", "high"], "--gpu-memory-utilization 'high': must be a fraction"),
    (["--gpus", "1xA10", "--config", "{folder}"], "--config {folder}: is a folder"),
    (["--gpus", "1xA10", "--config", "{missing}"], "config.json not found at {missing} (--config)"),
    (["--gpus", "1xA10", "--config", "{list}"], "--config {list}: holds a JSON list, not the object a config.json is"),
    (["--gpus", "1xA10", "--config", "{bad}"], "--config {bad}: not valid JSON"),
    (["--gpus", "1xA10", "--config", "{notqwen}"], "--config {notqwen}: architectures ['LlamaForCausalLM'] is not Qwen2.5-VL"),
    (["--gpus", "1xA10", "--config", "{zero}"], "--config {zero}: text.layers 0: every size must be >= 1"),
    (["--gpus", "1xA10", "--config", "{heads}"], "--config {heads}: not a usable Qwen2.5-VL config.json (ZeroDivisionError"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --tensor-parallel-size"],
     "vlmfleet plan: error: --from-command: --tensor-parallel-size needs a value"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --tensor-parallel-size two"],
     "--from-command: --tensor-parallel-size 'two': expects a whole number"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --max-model-len lots"], "--max-model-len 'lots': expects a whole number or auto"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --gpu-memory-utilization high"],
     "--gpu-memory-utilization 'high': expects a number"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --dtype"], "--from-command: --dtype needs a value"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --mm-processor-kwargs {{max_pixels:1}}"],
     "--mm-processor-kwargs '{max_pixels:1}': not valid JSON"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --mm-processor-kwargs [1]"], "--mm-processor-kwargs '[1]': expects a JSON object"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --mm-processor-kwargs '{{\"max_pixels\":\"big\"}}'"],
     "max_pixels must be a whole number"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --limit-mm-per-prompt image5"], "--limit-mm-per-prompt 'image5': expects"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --limit-mm-per-prompt image=five"], "--limit-mm-per-prompt 'image=five'"),
    (["--gpus", "1xA10", "--from-command", "vllm serve Qwen/Qwen9-VL"], "--from-command: unknown model 'Qwen/Qwen9-VL'"),
    (["--gpus", "1xA10", "--from-command", "vllm serve --tensor-parallel-size 2"], "the model must follow `vllm serve`"),
    (["--gpus", "1xA10", "--from-command", "python -m vllm"], "--from-command: not a `vllm serve MODEL ...` command"),
    (["--gpus", "1xA10", "--from-command", f"{CMD} --served-model-name 'qwen"], "--from-command: cannot split"),
    (["--gpus", "1xA10", "--plot", "{missing}.png"], "--plot {missing}.png: folder"),
    (["--gpus", "1xA10", "--plot", "{folder}"], "--plot {folder}: is a folder"),
    (["--gpus", "1xA10", "--plot", "{folder}/plan.docx"], "--plot {folder}/plan.docx: matplotlib cannot write .docx"),
    (["--gpus", "1xA10", "--format", "yaml"], "argument --format: invalid choice: 'yaml'"),
    (["--gpus", "1xA10", "--tp"], "argument --tp: expected one argument"),
    (["--gpus", "1xA10", "--tensor-parallel-size", "2"], "unrecognized arguments: --tensor-parallel-size 2"),
    (["--gpus", "4xV100"], "GPU spec '4xV100': unknown GPU 'V100'"),
    (["--nvidia-smi-csv", "{csv}"], "--nvidia-smi-csv {csv}: no such file"),
    (["--gpus", "1xA10", "--model", "llama"], "unknown model 'llama'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[2:] or a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_naming_the_option_and_exit_2(capsys, files, args, message):
    rc, out, err = run(capsys, *[fill(a, files) for a in args])
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("vlmfleet plan: error: ") and fill(message, files) in err, err
    assert out == ""


@pytest.mark.parametrize("version, flag", [
    ("0.33.0", "--foo-bar 1"), ("0.33.0", "--swap-space 4"), ("0.33.0", "--task generate"),
    ("0.33.0", "--chunked-prefix-reserve-ratio 0.2"), ("0.8.2", "--chunked-prefix-reserve-ratio 0.2"),
])
def test_a_flag_the_version_does_not_have_is_invalid_exit_4(capsys, version, flag):
    rc, data, err = plan_json(capsys, "1xA10", f"--max-model-len 8192 {flag}", "--vllm", version)
    name = flag.split()[0]
    assert rc == 4
    assert f"command: {name} does not exist in vLLM {version}" in err
    assert data["verdict"] == "invalid"
    assert data["errors"] == [f"{name} does not exist in vLLM {version} — fix: drop it"]
    assert data["proposal"]["changes"] == {"drop": [name]} and data["proposal"]["verdict"] == "fits"
    assert name not in data["proposal"]["command"]


def test_the_table_says_invalid_and_why(capsys):
    rc, out, _ = run(capsys, "--gpus", "1xA10", "--from-command", f"{CMD} --max-model-len 8192 --swap-space 4")
    assert rc == 4
    assert "verdict: INVALID" in out and "  - --swap-space does not exist in vLLM 0.33.0 — fix: drop it" in out


def test_a_value_the_version_refuses_is_invalid_and_rendered_afresh(capsys):
    rc, data, _ = plan_json(capsys, "1xA10", "--max-model-len 8192 --limit-mm-per-prompt image=5,video=0")
    assert rc == 4 and data["verdict"] == "invalid"
    assert data["errors"][0].startswith("--limit-mm-per-prompt expects JSON")
    assert data["proposal"]["changes"] == {"rewrite": ["--limit-mm-per-prompt"]}
    cmd = data["proposal"]["command"]
    assert cmd[cmd.index("--limit-mm-per-prompt") + 1] == '{"image":5,"video":0}'


def test_out_of_range_values_in_a_command_are_invalid_exit_4(capsys):
    rc, data, _ = plan_json(capsys, "1xA10", "--max-model-len 8192 --tensor-parallel-size -2")
    assert rc == 4 and data["verdict"] == "invalid"
    assert data["errors"] == ["tensor_parallel_size -2 is invalid: it must be a whole number from 1 to 64 — fix: tp >= 1"]
    assert data["memory_per_gpu_bytes"]["weights"] > 0 and data["proposal"]["changes"] == {"tp": 1}


def test_secrets_and_trust_remote_code_stay_warnings(capsys):
    rc, _, err = run(capsys, "--gpus", "1xA10", "--from-command",
                     f"{CMD} --max-model-len 8192 --api-key sk-1 --trust-remote-code")
    assert rc == 0
    assert "command: --api-key puts the API key in argv" in err and "command: --trust-remote-code" in err


def test_inline_flag_values_are_read(capsys):
    rc, data, _ = plan_json(capsys, "2xA10", "--tensor-parallel-size=2 --max-model-len=16k")
    assert rc == 0 and data["tp"] == 2 and data["resolved"]["max_model_len"] == 16000


@pytest.mark.parametrize("version", ["0.8.2", "0.33.0"])
def test_seed_table_still_exits_0(capsys, version):
    rc, out, _ = run(capsys, "--seed-table", "--vllm", version)
    assert rc == 0 and out.count("== ") == 6


def test_plot_without_matplotlib_is_exit_2_with_the_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    rc, out, err = run(capsys, "--gpus", "1xA10", "--plot", str(tmp_path / "plan.png"))
    assert rc == 2 and out == ""
    assert err.strip() == f"vlmfleet plan: error: --plot {tmp_path / 'plan.png'}: needs matplotlib: pip install 'vlmfleet[plot]'"


def test_unexpected_exception_is_one_line_exit_3(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("planner fell over")

    monkeypatch.setattr("vlmfleet.planner.plan", boom)
    rc, _, err = run(capsys, "--gpus", "1xA10")
    assert rc == 3
    assert err == "vlmfleet plan: internal error: RuntimeError: planner fell over (please report)\n"


def test_plan_help_documents_the_exit_codes():
    plan_parser = build_parser()._subparsers._group_actions[0].choices["plan"]
    text = " ".join(plan_parser.format_help().split())
    for code in ("0 fits", "2 bad input", "3 internal error", "4 does not fit, or invalid"):
        assert code in text
