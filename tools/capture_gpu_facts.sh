#!/usr/bin/env bash
# Capture real GPU facts for test fixtures: run on a machine with NVIDIA GPUs, from the repository root.
#   tools/capture_gpu_facts.sh OUTDIR
# Writes the exact preflight query output, `nvidia-smi topo -m`, the plans vlmfleet derives from them on the
# live machine (`vlmfleet plan --gpus local`), and the CUDA context size PyTorch sees (calibrates the planner's
# non-torch overhead). Needs python3 with pyyaml; torch optional.
set -euo pipefail
out=${1:?usage: $0 OUTDIR}
mkdir -p "$out"
q=$(python3 -c 'from vlmfleet.gpus import NVIDIA_SMI_QUERY; print(NVIDIA_SMI_QUERY)')
$q > "$out/nvidia-smi-query.csv"
nvidia-smi topo -m > "$out/nvidia-smi-topo.txt" 2>&1 || true
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
for m in qwen2.5-vl-7b-instruct qwen2.5-vl-72b-instruct-awq; do
  for v in 0.8.2 0.33.0; do
    python3 -m vlmfleet.cli plan --gpus local --model "$m" --vllm "$v" --max-model-len 32768 --max-num-seqs 16 \
      --limit-images 5 --limit-videos 0 --max-pixels 1003520 --format json > "$out/plan-$m-$v.json" || true
  done
done
python3 - > "$out/cuda-context.json" <<'PY' || true
import json
try:
    import torch
    free0, total = torch.cuda.mem_get_info()
    x = torch.ones(1024, 1024, device="cuda", dtype=torch.float16)
    y = x @ x
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info()
    print(json.dumps({"torch": torch.__version__, "total_bytes": total,
                      "used_after_context_and_cublas_bytes": total - free1,
                      "torch_allocated_bytes": torch.cuda.memory_allocated(),
                      "device": torch.cuda.get_device_name(0)}))
except Exception as exc:  # no torch, no GPU
    print(json.dumps({"error": str(exc)}))
PY
ls -la "$out"
