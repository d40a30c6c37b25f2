#!/usr/bin/env bash
# Capture the driver stage's facts and its --dry plan on a real GPU machine, for test fixtures:
#   tools/capture_driver_facts.sh OUTDIR [BRANCH]
# Run from the repository root with pyinfra importable (python3 -m pyinfra). Writes what the facts' commands
# print (the PCI bus, the driver's state), `pyinfra @local fact` of them, and `pyinfra @local deploys/driver.py
# --dry` with nvidia_driver_branch = BRANCH (default: the branch of the loaded driver).
set -uo pipefail
out=${1:?usage: $0 OUTDIR [BRANCH]}
mkdir -p "$out"
python3 - "$out" <<'PY'
import subprocess, sys
from vlmfleet.driver import PCI_QUERY, STATE_SCRIPT
for name, cmd in (("pci.txt", PCI_QUERY), ("driver-state.txt", STATE_SCRIPT)):
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    open(f"{sys.argv[1]}/{name}", "w").write(r.stdout)
PY
branch=${2:-$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 | cut -d. -f1)}
data=(--data vlm_profile=qwen7b --data api_bind=127.0.0.1 --data "nvidia_driver_branch=$branch")
python3 -m pyinfra @local fact vlmfleet.facts.NvidiaPci vlmfleet.facts.NvidiaDriverState vlmfleet.facts.GpuQuery \
  server.LinuxDistribution > "$out/pyinfra-local-driver-facts.txt" 2>&1
echo "rc=$?" >> "$out/pyinfra-local-driver-facts.txt"
python3 -m pyinfra -v @local deploys/driver.py --dry "${data[@]}" > "$out/pyinfra-local-driver-dry.txt" 2>&1
echo "rc=$?" >> "$out/pyinfra-local-driver-dry.txt"
ls -la "$out"
