"""The seed document's deployment commands, evaluated by the planner (``vlmfleet plan --seed-table``).

Each command is quoted from ``shared/seed`` (section 二.2.2) as the user would paste it; ``parse_command`` turns
any ``vllm serve`` line into a planner Wish, flagging what the planner cannot express (secrets in argv,
flags that do not exist in the version).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace

from .catalog import Model, VllmVersion, model
from .flags import serve_args
from .gpus import Inventory, parse_spec
from .planner import Finding, Plan, Proposal, Wish, plan
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
    findings: list[Finding] = field(default_factory=list)  # everything said about the line, warnings included
    refused: list[Finding] = field(default_factory=list)  # what the version's parser rejects (also in findings)


#: Flags parse_command reads that need a value.
VALUE_FLAGS = ("--tensor-parallel-size", "--gpu-memory-utilization", "--dtype", "--max-model-len", "--max-num-seqs",
               "--max-num-batched-tokens", "--kv-cache-dtype", "--quantization", "--limit-mm-per-prompt",
               "--mm-processor-kwargs")
SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "K": 2**10, "M": 2**20, "G": 2**30}  # vLLM's 32k / 32K


def _whole(flag: str, value: str, suffixes: bool = False) -> int:
    """``value`` as an int, or a ValueError naming ``flag``; with suffixes, vLLM's 32k (32000) and 32K (32768)."""
    v = value.strip()
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    if suffixes and re.fullmatch(r"\d+[kKmMgG]", v):
        return int(v[:-1]) * SUFFIXES[v[-1]]
    raise ValueError(f"{flag} {value!r}: expects a whole number" + (" or auto" if suffixes else ""))


def _limits(value: str) -> dict[str, int]:
    try:
        limits = parse_limits(value)
    except (ValueError, TypeError, AttributeError):  # not k=v pairs, a JSON list, a non-number count
        limits = None
    if limits is None:
        raise ValueError(f"--limit-mm-per-prompt {value!r}: expects image=N,video=N or a JSON object like "
                         '\'{"image":5,"video":0}\'')
    return limits


def _max_pixels(value: str) -> int | None:
    try:
        kw = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--mm-processor-kwargs {value!r}: not valid JSON ({exc.msg})") from exc
    if not isinstance(kw, dict):
        raise ValueError(f"--mm-processor-kwargs {value!r}: expects a JSON object like '{{\"max_pixels\":1003520}}'")
    if "max_pixels" not in kw:
        return None
    mp = kw["max_pixels"]
    if isinstance(mp, bool) or not isinstance(mp, int):
        raise ValueError(f"--mm-processor-kwargs {value!r}: max_pixels must be a whole number")
    return mp


def parse_command(command: str, version: VllmVersion) -> ParsedCommand:
    """``[VAR=x ...] vllm serve MODEL --flag value ...`` → model, Wish, env and what is wrong with the line.

    A line the planner cannot read (a flag it reads without a value or with a malformed one, an unknown model)
    is a ValueError naming the flag; what the version's parser refuses (unknown or removed flags, values of
    the wrong kind) is in ``refused``, for the caller to count as invalid."""
    try:
        tokens = shlex.split(command)
    except ValueError as exc:  # unbalanced quotes
        raise ValueError(f"cannot split {command!r} into arguments ({exc})") from exc
    env = {}
    while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
        k, _, v = tokens.pop(0).partition("=")
        env[k] = v
    if tokens[:2] != ["vllm", "serve"] or len(tokens) < 3:
        raise ValueError(f"not a `vllm serve MODEL ...` command: {command!r}")
    if tokens[2].startswith("-"):
        raise ValueError(f"the model must follow `vllm serve` (vllm serve MODEL --flag ...), not {tokens[2]!r}")
    # a version without a flag table (vlmfleet plan --vllm 0.9.2) is not checked: the plan notes it
    problems = check(tokens, version.version) if version.has_flag_table else []
    findings = [Finding("flags", p) for p in problems]
    refused = [Finding("flags", p, "drop it" if _dropped(p) else f"write it as vLLM {version.version} expects")
               for p in problems]
    m = model(tokens[2])
    w: dict = {}
    i = 3
    while i < len(tokens):
        flag, eq, inline = tokens[i].partition("=") if tokens[i].startswith("--") else (tokens[i], "", "")
        if eq:
            value, step = inline, 1
        else:
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None
            step = 2 if value is not None else 1
        if flag in VALUE_FLAGS and not value:
            raise ValueError(f"{flag} needs a value")
        if flag == "--tensor-parallel-size":
            w["tp"] = _whole(flag, value)
        elif flag == "--gpu-memory-utilization":
            try:
                w["gpu_memory_utilization"] = float(value)
            except ValueError:
                raise ValueError(f"{flag} {value!r}: expects a number (e.g. 0.90)") from None
        elif flag == "--dtype":
            w["dtype"] = "float16" if value == "half" else value
        elif flag == "--max-model-len":
            w["max_model_len"] = -1 if value == "auto" else _whole(flag, value, suffixes=True)
        elif flag == "--max-num-seqs":
            w["max_num_seqs"] = _whole(flag, value)
        elif flag == "--max-num-batched-tokens":
            w["max_num_batched_tokens"] = _whole(flag, value, suffixes=True)
        elif flag == "--kv-cache-dtype":
            w["kv_cache_dtype"] = value
        elif flag == "--quantization":
            w["quantization"] = value
        elif flag == "--enforce-eager":
            w["enforce_eager"] = True
        elif flag == "--limit-mm-per-prompt":
            limits = _limits(value)
            w["limit_images"] = int(limits.get("image", 0))
            w["limit_videos"] = int(limits.get("video", 0))
        elif flag == "--mm-processor-kwargs":
            mp = _max_pixels(value)
            if mp is not None:
                w["max_pixels"] = mp
        elif flag == "--api-key":
            findings.append(Finding("secrets", "--api-key puts the API key in argv (visible in ps, the unit file and "
                                    "logs)", "pass it as VLLM_API_KEY from a root-only env file"))
        elif flag == "--trust-remote-code":
            findings.append(Finding("flags", "--trust-remote-code is not needed: vLLM implements Qwen2.5-VL itself",
                                    "drop it"))
        i += step
    return ParsedCommand(m, Wish(**w), env, findings, refused)


def plan_command(parsed: ParsedCommand, inv: Inventory, version: VllmVersion, m: Model | None = None) -> Plan:
    """Plan a pasted command line (on ``m``, e.g. the model with its config.json, default the line's): what the
    version's parser refuses makes the plan invalid, and the proposal says to render the flags afresh."""
    p = plan(m or parsed.model, inv, version, parsed.wish)
    if not parsed.refused:
        return p
    names = list(dict.fromkeys(_flag_of(f.message) for f in parsed.refused))
    rendered = {a for a in serve_args(p, "/models/x", "x") if a.startswith("--")}
    drop = [n for n in names if n not in rendered]
    rewrite = [n for n in names if n in rendered]
    changes = ({"drop": drop} if drop else {}) | ({"rewrite": rewrite} if rewrite else {})
    reason = "; ".join(([f"drop {' '.join(drop)}"] if drop else [])
                       + ([f"write {' '.join(rewrite)} as vLLM {version.version} expects"] if rewrite else []))
    proposal = p.proposal
    if p.verdict == "fits":
        proposal = Proposal(changes, reason, p)
    elif proposal is not None:
        proposal = replace(proposal, changes={**proposal.changes, **changes}, reason=f"{proposal.reason}; {reason}")
    return replace(p, errors=[*parsed.refused, *p.errors], proposal=proposal)


def _dropped(problem: str) -> bool:
    """Whether a ``vllm_flags.check`` problem is a flag (or argument) the version does not have at all."""
    return " does not exist in vLLM " in problem or problem.startswith("unexpected argument ")


def _flag_of(problem: str) -> str:
    """The flag (or stray argument) a ``vllm_flags.check`` problem is about."""
    if problem.startswith("unexpected argument "):
        return problem.removeprefix("unexpected argument ").strip("'\"")
    return problem.split()[0]


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
        from .report import model_path

        return serve_args(p, model_path(p), p.model.id)


def evaluate(sc: SeedCommand, version: VllmVersion) -> SeedRow:
    parsed = parse_command(sc.command, version)
    p = plan(parsed.model, parse_spec(sc.gpus), version, parsed.wish)
    return SeedRow(sc, parsed, p)


def seed_rows(version: VllmVersion) -> list[SeedRow]:
    return [evaluate(sc, version) for sc in SEED_COMMANDS]
