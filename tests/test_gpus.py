"""GPU inventories from specs and from real nvidia-smi output."""

from pathlib import Path

import pytest

from vlmfleet.gpus import InventoryError, parse_nvidia_smi, parse_spec, topo_has_nvlink

FIX = Path(__file__).parent / "fixtures" / "gpu"

TOPO_NVLINK = """\
\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV18\t0-47\t0
GPU1\tNV18\t X \t0-47\t0

Legend:
  NV#  = Connection traversing a bonded set of # NVLinks
"""
TOPO_PCIE = TOPO_NVLINK.replace("NV18", "PHB")


@pytest.mark.parametrize("spec, count, kind", [("4xT4", 4, "T4"), ("8 x A100-40", 8, "A100-40"), ("H100", 1, "H100"),
                                                ("2×A10", 2, "A10")])
def test_specs(spec, count, kind):
    inv = parse_spec(spec)
    assert (inv.count, inv.kind.id) == (count, kind)


def test_spec_errors_say_what_is_wrong():
    with pytest.raises(InventoryError, match="count must be 1-16"):
        parse_spec("32xT4")
    with pytest.raises(InventoryError, match="unknown GPU 'V100'"):
        parse_spec("4xV100")
    with pytest.raises(InventoryError, match="interconnect 'infiniband'"):
        parse_spec("2xH100", "infiniband")


def test_live_h100_fixture_parses_to_the_real_values():
    inv = parse_nvidia_smi((FIX / "h100-device/nvidia-smi-query.csv").read_text(),
                           (FIX / "h100-device/nvidia-smi-topo.txt").read_text())
    g = inv.gpus[0]
    assert (inv.count, g.name, g.memory_mib, g.cc, g.driver, g.bus_id) == (
        1, "NVIDIA H100 80GB HBM3", 81559, "9.0", "580.159.04", "00000000:00:06.0")
    assert inv.kind.id == "H100" and inv.interconnect == "nvlink"  # one GPU: the catalog's class stands


def test_topology_decides_the_interconnect():
    csv = "0, NVIDIA A100-PCIE-40GB, 40960, 8.0, 550.54.15\n1, NVIDIA A100-PCIE-40GB, 40960, 8.0, 550.54.15\n"
    assert topo_has_nvlink(TOPO_NVLINK) and not topo_has_nvlink(TOPO_PCIE)
    assert parse_nvidia_smi(csv, TOPO_NVLINK).interconnect == "nvlink"
    assert parse_nvidia_smi(csv, TOPO_PCIE).interconnect == "nvlink"  # no NV#: the catalog's class for A100
    assert parse_nvidia_smi(csv, TOPO_PCIE, interconnect="pcie").interconnect == "pcie"


def test_eight_t4_box():
    csv = "".join(f"{i}, Tesla T4, 15360, 7.5, 535.183.01, 00000000:{i:02x}:00.0\n" for i in range(8))
    inv = parse_nvidia_smi(csv, TOPO_PCIE)
    assert (inv.count, inv.kind.id, inv.interconnect, inv.memory_mib, inv.driver) == (8, "T4", "pcie_no_p2p", 15360, "535.183.01")


def test_bad_nvidia_smi_output_is_explained():
    with pytest.raises(InventoryError, match="listed no GPUs"):
        parse_nvidia_smi("\n")
    with pytest.raises(InventoryError, match="has 2 columns"):
        parse_nvidia_smi("0, Tesla T4\n")
    with pytest.raises(InventoryError, match="mixed GPU kinds on one host"):
        parse_nvidia_smi("0, Tesla T4, 15360, 7.5, 550.1\n1, NVIDIA L4, 23034, 8.9, 550.1\n")
    with pytest.raises(InventoryError, match="not in the GPU catalog"):
        parse_nvidia_smi("0, NVIDIA GeForce RTX 3090, 24576, 8.6, 550.1\n")
