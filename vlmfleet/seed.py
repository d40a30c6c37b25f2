"""The seed document's deployment commands, evaluated by the planner (``vlmfleet plan --seed-table``).

Each command is quoted from ``shared/seed`` (section 二.2.2) as the user would paste it; ``parse_command`` turns
any ``vllm serve`` line into a planner Wish, flagging what the planner cannot express (secrets in argv,
flags that do not exist in the version).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from .catalog import Model, VllmVersion, model
from .flags import serve_args
from .gpus import parse_spec
from .planner import Finding, Plan, Wish, plan
from .vllm_flags import check, parse_limits


@dataclass(frozen=True)
class SeedCommand:
    id: str
    section: str
    gpus: str
    command: str
    gpus_note: str = ""


SEED_COMMANDS = (
    SeedCommand(
        "7b-1xA10", "二.2.2.1 (first command; 单卡 A10 24GB in 四.2.1)", "1xA10",
        "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --host 0.0.0.0 --dtype float16 "
        "--limit-mm-per-prompt image=5,video=5",
    ),
    SeedCommand(
        "7b-2xA10", "二.2.2.1 双卡部署 (2*A10 24GB)", "2xA10",
        "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --tensor-parallel-size 2 --gpu-memory-utilization 0.9 "
        "--dtype bfloat16 --limit-mm-per-prompt image=8,video=4 --max-num-batched-tokens 8192",
    ),
    SeedCommand(
        "7b-4xT4-awq", "二.2.2.1 四卡部署 (4*T4 16GB)", "4xT4",
        "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --tensor-parallel-size 4 --quantization awq "
        "--gpu-memory-utilization 0.85 --dtype float16 --limit-mm-per-prompt image=3,video=2",
    ),
    SeedCommand(
        "72b-awq-4gpu", "二.2.2.2 (4卡张量并行)", "4xA10",
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True vllm serve Qwen/Qwen2.5-VL-72B-Instruct-AWQ "
        "--tensor-parallel-size 4 --gpu-memory-utilization 0.85 --quantization awq --dtype float16 "
        "--max-model-len 8192 --enforce-eager --trust-remote-code --host 0.0.0.0 --port 8678 --api-key xxx",
        gpus_note="the seed names no GPU model; evaluated on 4xA10 24GB",
    ),
    SeedCommand(
        "72b-awq-4xA100-40", "二.2.2.2 4卡 A100 40GB", "4xA100-40",
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True vllm serve Qwen/Qwen2.5-VL-72B-Instruct-AWQ "
        "--tensor-parallel-size 4 --gpu-memory-utilization 0.9 --max-model-len 16384 "
        "--limit-mm-per-prompt image=10,video=5",
    ),
    SeedCommand(
        "72b-awq-8xT4", "二.2.2.2 8卡 T4 (16GB)", "8xT4",
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True vllm serve Qwen/Qwen2.5-VL-72B-Instruct-AWQ "
        "--tensor-parallel-size 8 --quantization awq --gpu-memory-utilization 0.75 --dtype float16 "
        "--max-model-len 4096 --kv-cache-dtype fp8 --enforce-eager --trust-remote-code --host 0.0.0.0 --port 8678",
    ),
)


@dataclass
class ParsedCommand:
    model: Model
    wish: Wish
    env: dict[str, str]
    findings: list[Finding] = field(default_factory=list)


def parse_command(command: str, version: VllmVersion) -> ParsedCommand:
    """``[VAR=x ...] vllm serve MODEL --flag value ...`` → model, Wish, env and what is wrong with the line."""
    tokens = shlex.split(command)
    env = {}
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        k, _, v = tokens.pop(0).partition("=")
        env[k] = v
    if tokens[:2] != ["vllm", "serve"] or len(tokens) < 3:
        raise ValueError(f"not a `vllm serve MODEL ...` command: {command!r}")
    findings = [Finding("flags", p) for p in check(tokens, version.version)]
    m = model(tokens[2])
    w: dict = {}
    i = 3
    while i < len(tokens):
        flag = tokens[i]
        value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None
        step = 2 if value is not None else 1
        if flag == "--tensor-parallel-size":
            w["tp"] = int(value)
        elif flag == "--gpu-memory-utilization":
            w["gpu_memory_utilization"] = float(value)
        elif flag == "--dtype":
            w["dtype"] = "float16" if value == "half" else value
        elif flag == "--max-model-len":
            w["max_model_len"] = -1 if value == "auto" else int(value)
        elif flag == "--max-num-seqs":
            w["max_num_seqs"] = int(value)
        elif flag == "--max-num-batched-tokens":
            w["max_num_batched_tokens"] = int(value)
        elif flag == "--kv-cache-dtype":
            w["kv_cache_dtype"] = value
        elif flag == "--quantization":
            w["quantization"] = value
        elif flag == "--enforce-eager":
            w["enforce_eager"] = True
        elif flag == "--limit-mm-per-prompt":
            limits = parse_limits(value)
            w["limit_images"] = int(limits.get("image", 0))
            w["limit_videos"] = int(limits.get("video", 0))
        elif flag == "--mm-processor-kwargs":
            kw = json.loads(value)
            if "max_pixels" in kw:
                w["max_pixels"] = int(kw["max_pixels"])
        elif flag == "--api-key":
            findings.append(Finding("secrets", "--api-key puts the API key in argv (visible in ps, the unit file and "
                                    "logs)", "pass it as VLLM_API_KEY from a root-only env file"))
        elif flag == "--trust-remote-code":
            findings.append(Finding("flags", "--trust-remote-code is not needed: vLLM implements Qwen2.5-VL itself",
                                    "drop it"))
        i += step
    return ParsedCommand(m, Wish(**w), env, findings)


@dataclass
class SeedRow:
    seed: SeedCommand
    parsed: ParsedCommand
    plan: Plan

    @property
    def final(self) -> Plan:
        """The plan to run: the seed's own when it fits, else the proposal's."""
        return self.plan if self.plan.verdict == "fits" else (self.plan.proposal.plan if self.plan.proposal else self.plan)

    def corrected_args(self) -> list[str]:
        p = self.final
        return serve_args(p, f"/models/{p.model.repo_dir}", p.model.id)


def evaluate(sc: SeedCommand, version: VllmVersion) -> SeedRow:
    parsed = parse_command(sc.command, version)
    p = plan(parsed.model, parse_spec(sc.gpus), version, parsed.wish)
    return SeedRow(sc, parsed, p)


def seed_rows(version: VllmVersion) -> list[SeedRow]:
    return [evaluate(sc, version) for sc in SEED_COMMANDS]
