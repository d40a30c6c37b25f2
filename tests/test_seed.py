"""The seed document's commands through the planner: verdicts, reasons, corrected flags, and the table in docs/seed-audit.md."""

import re
from pathlib import Path

import pytest

from vlmfleet.catalog import vllm_version
from vlmfleet.report import seed_markdown
from vlmfleet.gpus import parse_spec
from vlmfleet.seed import SEED_COMMANDS, parse_command, plan_command, seed_rows

V082, V033 = vllm_version("0.8.2"), vllm_version("0.33.0")
SEED_AUDIT = Path(__file__).resolve().parent.parent / "docs/seed-audit.md"


@pytest.fixture(scope="module")
def rows():
    return {r.seed.id: r for r in seed_rows(V082)}


def test_every_seed_deployment_is_evaluated(rows):
    assert list(rows) == ["7b-1xA10", "7b-2xA10", "7b-4xT4-awq", "72b-awq-4gpu", "72b-awq-4xA100-40", "72b-awq-8xT4"]


def test_verdicts(rows):
    assert {k: r.plan.verdict for k, r in rows.items()} == {
        "7b-1xA10": "does not fit", "7b-2xA10": "fits", "7b-4xT4-awq": "invalid", "72b-awq-4gpu": "fits",
        "72b-awq-4xA100-40": "fits", "72b-awq-8xT4": "fits"}


def test_one_a10_at_the_default_128k_context(rows):
    r = rows["7b-1xA10"]
    assert r.plan.max_model_len == 128000 and r.plan.kv_capacity_tokens < 128000
    assert r.plan.proposal.reason.startswith("lower max_model_len to")
    assert r.final.verdict == "fits"


def test_awq_flag_on_the_bf16_7b_is_the_error(rows):
    r = rows["7b-4xT4-awq"]
    assert [e.key for e in r.plan.errors] == ["quantization"]
    assert "--quantization" not in r.corrected_args()


def test_fp8_kv_on_t4_is_a_warning_in_0_8_2_and_an_error_in_0_33(rows):
    r = rows["72b-awq-8xT4"]
    assert r.plan.errors == []  # 0.8.2 does not refuse it: V0 + XFormers, no compute-capability check
    assert [w.key for w in r.plan.warnings if "fp8" in w.message] == ["kv_cache_dtype"]
    args = r.corrected_args()
    assert args[args.index("--quantization") + 1] == "awq"
    r33 = {x.seed.id: x for x in seed_rows(V033)}["72b-awq-8xT4"]
    assert [e.key for e in r33.plan.errors if e.key == "kv_cache_dtype"] == ["kv_cache_dtype"]


def test_api_key_in_argv_is_flagged_and_never_rendered(rows):
    r = rows["72b-awq-4gpu"]
    assert [f.key for f in r.parsed.findings] == ["flags", "secrets"]
    assert "xxx" not in r.corrected_args() and "--api-key" not in r.corrected_args()


def test_parse_command_reads_env_flags_and_limits():
    parsed = parse_command(SEED_COMMANDS[4].command, V082)
    assert parsed.env == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    w = parsed.wish
    assert (w.tp, w.gpu_memory_utilization, w.max_model_len, w.limit_images, w.limit_videos) == (4, 0.9, 16384, 10, 5)
    assert parsed.model.id == "qwen2.5-vl-72b-instruct-awq"


def test_parse_command_reports_flags_that_do_not_exist():
    parsed = parse_command("vllm serve Qwen/Qwen2.5-VL-7B-Instruct --swap-space 16G --chunked-prefix-reserve-ratio 0.2",
                           V082)
    assert [str(f) for f in parsed.findings] == ["--swap-space expects a number, got '16G'",
                                                 "--chunked-prefix-reserve-ratio does not exist in vLLM 0.8.2"]


def test_the_seed_audit_carries_the_generated_seed_table():
    generated = seed_markdown(seed_rows(V082))
    text = SEED_AUDIT.read_text()
    m = re.search(r"<!-- seed-table:begin -->\n(.*?)<!-- seed-table:end -->", text, re.S)
    assert m, "docs/seed-audit.md lacks the seed-table markers"
    assert m.group(1) == generated, "docs/seed-audit.md's seed table is stale: regenerate with `vlmfleet plan --seed-table --vllm 0.8.2 --format md`"


def test_parse_command_keeps_what_the_version_refuses_apart():
    parsed = parse_command("vllm serve Qwen/Qwen2.5-VL-7B-Instruct --swap-space 4 --api-key x --trust-remote-code",
                           V033)
    assert [str(f) for f in parsed.refused] == ["--swap-space does not exist in vLLM 0.33.0 — fix: drop it"]
    assert [f.key for f in parsed.findings] == ["flags", "secrets", "flags"]  # the refusal, then the warnings


@pytest.mark.parametrize("tail, message", [
    ("--tensor-parallel-size", "--tensor-parallel-size needs a value"),
    ("--tensor-parallel-size two", "--tensor-parallel-size 'two': expects a whole number"),
    ("--max-num-seqs 1.5", "--max-num-seqs '1.5': expects a whole number"),
    ("--mm-processor-kwargs '{bad'", "--mm-processor-kwargs '{bad': not valid JSON"),
    ("--limit-mm-per-prompt '[5]'", "--limit-mm-per-prompt '[5]': expects image=N,video=N"),
])
def test_parse_command_names_the_flag_it_cannot_read(tail, message):
    with pytest.raises(ValueError) as exc:
        parse_command(f"vllm serve Qwen/Qwen2.5-VL-7B-Instruct {tail}", V033)
    assert str(exc.value).startswith(message)


def test_plan_command_makes_refused_flags_invalid_but_the_seed_table_does_not():
    parsed = parse_command(SEED_COMMANDS[1].command + " --foo-bar 1", V082)
    p = plan_command(parsed, parse_spec("2xA10"), V082)
    assert p.verdict == "invalid" and [e.key for e in p.errors] == ["flags"]
    assert p.proposal.changes == {"drop": ["--foo-bar"]} and p.proposal.plan.verdict == "fits"
    p33 = seed_rows(V033)[1].plan  # its 0.8.2 k=v limits are refused by 0.33: still planned, at 0.33's defaults
    assert "flags" not in [e.key for e in p33.errors]
    # 0.33 profiles one dummy video of 14 frames at 128k whatever the video limit: 114,688 tokens
    assert p33.mm_profile.modality == "video" and p33.mm_profile.item_tokens == 114688


def test_parse_command_reads_inline_values_and_size_suffixes():
    w = parse_command("vllm serve Qwen/Qwen2.5-VL-7B-Instruct --tensor-parallel-size=2 --max-model-len 32K "
                      "--max-num-batched-tokens=8k", V033).wish
    assert (w.tp, w.max_model_len, w.max_num_batched_tokens) == (2, 32768, 8000)
