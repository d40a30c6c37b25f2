#!/usr/bin/env python3
"""Measure the non-torch GPU memory vLLM's profiler sees, without vLLM: run on a machine with NVIDIA GPUs.

    python3 tools/capture_cuda_overheads.py OUT.json

Per GPU, in the order vLLM creates them (vllm/v1/worker/gpu_worker.py init_device, then the profiling pass):
  context   CUDA's used memory (total - free) once the context exists, no tensor allocated
  cublas    after a 16-bit matmul (cuBLAS handle and workspace) — the part 0.9 .. 0.32 charge to the KV budget
  nccl      after torch.distributed's NCCL init and one all-reduce, at world size = every visible GPU (>= 2),
            one process per GPU, as vLLM's tensor-parallel workers do — the part 0.8 .. 0.10 charge
"non-torch" is used memory less what PyTorch's allocator has reserved, as vLLM's MemorySnapshot counts it.
Needs torch with CUDA. Set NCCL_NVLS_ENABLE=0 where NVLink multicast must stay off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _snapshot(torch, label: str) -> dict:
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    return {"at": label, "used_bytes": total - free, "torch_reserved_bytes": reserved,
            "non_torch_bytes": total - free - reserved}


def _one_gpu(torch) -> dict:
    torch.cuda.set_device(0)
    free, total = torch.cuda.mem_get_info()  # creates the context
    steps = [_snapshot(torch, "context")]
    x = torch.ones(4096, 4096, device="cuda", dtype=torch.bfloat16)
    y = x @ x
    steps.append(_snapshot(torch, "cublas"))
    del x, y
    torch.cuda.empty_cache()
    steps.append(_snapshot(torch, "cublas, tensors freed"))
    return {"total_bytes": total, "device": torch.cuda.get_device_name(0), "steps": steps}


def _rank(rank: int, world: int, port: str) -> None:
    import torch
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world))
    torch.cuda.set_device(rank)
    torch.cuda.mem_get_info()
    steps = [_snapshot(torch, "context")]
    x = torch.ones(4096, 4096, device="cuda", dtype=torch.bfloat16)
    y = x @ x
    del x, y
    torch.cuda.empty_cache()
    steps.append(_snapshot(torch, "cublas, tensors freed"))
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    t = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(t)
    del t
    torch.cuda.empty_cache()
    steps.append(_snapshot(torch, f"nccl world {world}, after an all-reduce"))
    dist.destroy_process_group()
    print(json.dumps({"rank": rank, "steps": steps}), flush=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--rank":
        _rank(int(sys.argv[2]), int(sys.argv[3]), os.environ["CAPTURE_PORT"])
        return 0
    out = sys.argv[1] if len(sys.argv) > 1 else "-"
    import torch
    result = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
              "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}}
    result["nvidia_smi_total_mib"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True).stdout.split()
    result["single"] = _one_gpu(torch)
    world = torch.cuda.device_count()
    if world >= 2:
        env = dict(os.environ, CAPTURE_PORT="29517")
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), str(world)], env=env,
                                  stdout=subprocess.PIPE, text=True) for r in range(world)]
        result["ranks"] = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    text = json.dumps(result, indent=2) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        with open(out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
