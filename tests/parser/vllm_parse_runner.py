"""Run inside a vLLM virtualenv: parse each command line with vLLM's real `vllm serve` parser.

stdin: JSON list of argv lists (["vllm", "serve", MODEL, ...]); stdout: JSON list of {"ok": bool, "error": str}.
Beyond the parser, the values vLLM validates later are checked with vLLM's own classes: CacheConfig (KV cache
dtype, memory utilisation), MultiModalConfig (per-prompt limits), the quantization registry.
"""

import contextlib
import io
import json
import sys

import vllm.platforms as platforms
from vllm.platforms.cpu import CpuPlatform

platforms._current_platform = CpuPlatform()  # FACTS.md: the parser needs a platform; no GPU here

from vllm.config import CacheConfig, MultiModalConfig  # noqa: E402
from vllm.entrypoints.common.cli_args import make_arg_parser  # noqa: E402
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def check(parser, argv):
    args = argv[2:] if argv[:2] == ["vllm", "serve"] else argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(args)
    except SystemExit:
        return {"ok": False, "error": err.getvalue().strip().splitlines()[-1] if err.getvalue() else "rejected"}
    try:
        CacheConfig(cache_dtype=ns.kv_cache_dtype, gpu_memory_utilization=ns.gpu_memory_utilization)
        MultiModalConfig(limit_per_prompt=ns.limit_mm_per_prompt or {}, mm_processor_kwargs=ns.mm_processor_kwargs)
        if ns.quantization is not None and ns.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"unknown quantization {ns.quantization}")
    except Exception as exc:  # noqa: BLE001 - report any validation failure
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    return {"ok": True, "error": "", "model": ns.model_tag, "tp": ns.tensor_parallel_size}


def main():
    parser = make_arg_parser(FlexibleArgumentParser())
    argvs = json.load(sys.stdin)
    json.dump([check(parser, a) for a in argvs], sys.stdout)


if __name__ == "__main__":
    main()
