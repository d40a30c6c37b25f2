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


def test_the_example_fleet_is_a_valid_configuration_as_shipped():
    """inventories/prod.py with group_data/ as committed: every host's merged data passes the configuration's
    checks (the API key file itself lives on the operator's machine, so it is not read here)."""
    import runpy

    from vlmfleet.config import build

    def public(path):
        return {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("_")}

    everyone = public(REPO / "group_data/all.py")
    prod = runpy.run_path(str(REPO / "inventories/prod.py"))
    for group in ("qwen7b", "qwen72b_awq"):
        for name, host_data in prod[group]:
            data = {**everyone, **public(REPO / f"group_data/{group}.py"), **host_data}
            cfg, problems = build(name, data, check_files=False, profile_groups={group: group})
            assert problems == [], [p.render(name) for p in problems]
            assert cfg.vlm_profile == group and cfg.api_key_file == "secrets/api-key"
