"""Public vLLM startup logs of Qwen2-VL / Qwen2.5-VL, kept as fixtures for calibrating the planner (issue 8:
the planner's available-KV figure against vLLM's own profiler). This checks the fixtures are what they claim —
every logged number literally in the quoted log lines, the serve arguments those of the quoted command — so a
calibration built on them (tests/test_calibration.py) cannot rest on an invented figure."""

import json
import re
from pathlib import Path

import pytest

LOGS = sorted((Path(__file__).parent / "fixtures" / "vllm-logs").glob("*.json"))
KEYS = {"id", "url", "source_title", "vllm_version", "engine", "gpu", "gpu_count", "gpu_total_gib_logged", "model",
        "serve_args", "logged", "outcome", "log_excerpt"}


def numbers_in(text: str) -> set[float]:
    return {round(float(n), 6) for n in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?", text.replace(",", ""))}


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_a_startup_log_fixture_quotes_every_number_it_records(path):
    log = json.loads(path.read_text())
    assert KEYS <= set(log), KEYS - set(log)
    assert log["id"] == path.stem and log["url"].startswith("https://")
    # profiled: the KV cache was sized, then the engine failed for a reason that is not memory
    assert log["outcome"] in ("started", "profiled", "oom", "refused") and log["engine"] in ("V0", "V1", "unknown")
    quoted = numbers_in(log["log_excerpt"])
    recorded = {k: v for k, v in log["logged"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    recorded["gpu_total_gib_logged"] = log["gpu_total_gib_logged"]
    for key, value in recorded.items():
        if value is not None:
            assert round(float(value), 6) in quoted, f"{path.name}: {key} = {value} is not in the quoted log"
    if "vllm serve" in log["log_excerpt"]:
        command = log["log_excerpt"].split("vllm serve", 1)[1].splitlines()[0]
        for arg in log["serve_args"]:
            assert arg in command, f"{path.name}: serve argument {arg!r} is not in the quoted command"


def test_the_collection_is_not_empty():
    assert LOGS, "tests/fixtures/vllm-logs/ holds no startup log"
