"""Inventories load as an operator loads them: the production one needs no lab, the lab one says when it is down."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def debug_inventory(inventory: str, lab_dir: str):
    return subprocess.run([PYINFRA, inventory, "debug-inventory"], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, VLMFLEET_LAB_DIR=lab_dir))


def test_prod_inventory_loads_without_a_lab(tmp_path):
    proc = debug_inventory("inventories/prod.py", str(tmp_path / "no-lab"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    for name in ("gpu-a10-01.example.internal", "gpu-a10-02.example.internal", "gpu-a100-01.example.internal"):
        assert f"[{name}]" in out
    assert "--> Groups: qwen7b, prod" in out and "--> Groups: qwen72b_awq, prod" in out
    assert "10.77.0" not in out  # no lab value leaks into production data


def test_lab_inventory_without_a_lab_says_what_to_run(tmp_path):
    proc = debug_inventory("inventories/lab.py", str(tmp_path / "no-lab"))
    assert proc.returncode == 1
    assert "no lab is running" in proc.stdout + proc.stderr and "vlmfleet lab up" in proc.stdout + proc.stderr
