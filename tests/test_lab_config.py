"""The lab's settings, connection files and inventory data, by value (no root, no hosts)."""

import json
from pathlib import Path

import pytest

from vlmfleet.lab import LabConfig, LabError
from vlmfleet.lab.hosts import LabHost, lab_hosts
from vlmfleet.lab.inventory import groups, LabNotUp, load, pyinfra_hosts
from vlmfleet.lab.lab import _ssh_config, inventory_data
from vlmfleet.lab.layout import HostLayout, gpus_json, layout


def test_defaults_lay_out_one_slash24_with_the_bridge_on_dot_one():
    cfg = LabConfig.from_env({})
    assert cfg.gateway == "10.77.0.1"
    assert [(h.name, h.address) for h in lab_hosts(cfg, 3)] == [
        ("h1", "10.77.0.11"), ("h2", "10.77.0.12"), ("h3", "10.77.0.13"), ("ops", "10.77.0.10")]
    assert [h.name for h in lab_hosts(cfg, 2, ops=False)] == ["h1", "h2"]
    assert cfg.apt_proxy == "http://10.77.0.1:3142"
    assert cfg.registry == "10.77.0.1:5000"
    assert cfg.cache_dir == Path("/var/lib/vlmfleet-lab/cache")


def test_environment_overrides_every_setting():
    cfg = LabConfig.from_env({"VLMFLEET_LAB_DIR": "/srv/lab", "VLMFLEET_LAB_NET": "10.78.5",
                              "VLMFLEET_LAB_APT_PORT": "3143", "VLMFLEET_LAB_REGISTRY_PORT": "5001",
                              "VLMFLEET_LAB_BRIDGE": "br9", "VLMFLEET_LAB_USER": "ops"})
    assert (cfg.gateway, cfg.apt_proxy, cfg.registry, cfg.bridge, cfg.user) == (
        "10.78.5.1", "http://10.78.5.1:3143", "10.78.5.1:5001", "br9", "ops")
    assert cfg.inventory_file == Path("/srv/lab/run/inventory.json")


@pytest.mark.parametrize("env, words", [
    ({"VLMFLEET_LAB_NET": "10.77"}, "VLMFLEET_LAB_NET='10.77' is not three octets"),
    ({"VLMFLEET_LAB_NET": "10.77.300"}, "is not three octets"),
    ({"VLMFLEET_LAB_BRIDGE": "a-very-long-bridge-name"}, "must be 1-15 characters"),
    ({"VLMFLEET_LAB_DIR": "relative/dir"}, "must be an absolute path"),
    ({"VLMFLEET_LAB_APT_PORT": "http"}, "is not a number"),
])
def test_bad_settings_name_the_variable_and_the_fix(env, words):
    with pytest.raises(LabError, match=words.replace("(", r"\(").replace(")", r"\)")):
        LabConfig.from_env(env)


def test_host_count_is_bounded():
    with pytest.raises(LabError, match="between 1 and 200"):
        lab_hosts(LabConfig(), 0)


def test_ssh_config_pins_user_key_and_known_hosts_per_host():
    cfg = LabConfig(root=Path("/srv/lab"))
    text = _ssh_config(cfg, [LabHost("h1", 1, "10.77.0.11")])
    assert "Host h1 10.77.0.11\n  HostName 10.77.0.11\n  User fleet\n" in text
    assert "  IdentityFile /srv/lab/cache/ssh/id_ed25519\n" in text
    assert "  UserKnownHostsFile /srv/lab/run/known_hosts\n  StrictHostKeyChecking yes\n" in text


def test_inventory_data_becomes_pyinfra_hosts_with_strict_host_keys_and_sudo():
    cfg = LabConfig(root=Path("/srv/lab"))
    data = inventory_data(cfg, lab_hosts(cfg, 2))
    assert pyinfra_hosts(data) == [
        (name, {"ssh_hostname": addr, "ssh_user": "fleet", "ssh_key": "/srv/lab/cache/ssh/id_ed25519",
                "ssh_known_hosts_file": "/srv/lab/run/known_hosts", "ssh_strict_host_key_checking": "yes",
                "_sudo": True})
        for name, addr in (("h1", "10.77.0.11"), ("h2", "10.77.0.12"), ("ops", "10.77.0.10"))
    ]
    # the operations host serves nothing: in groups monitoring and gateway, not in a profile group
    assert {g: [n for n, _ in hs] for g, hs in groups(data).items()} == {
        "qwen7b": ["h1", "h2"], "monitoring": ["ops"], "gateway": ["ops"]}
    assert [h["name"] for h in data["hosts"]] == ["h1", "h2"]


def test_inventory_without_a_running_lab_exits_with_the_command_to_run(tmp_path):
    with pytest.raises(LabNotUp, match=r"no lab is running .*vlmfleet lab up"):
        load(LabConfig(root=tmp_path))


def test_gpu_layout_takes_a_bare_flag_for_hosts_without_a_driver():
    env = {"VLMFLEET_LAB_GPUS": "h1=8xH100:qwen72b_awq:bare,h2=1xL40S::bare,h3=4xA100-40"}
    assert layout(1, env) == HostLayout("8xH100", "qwen72b_awq", True)
    assert layout(2, env) == HostLayout("1xL40S", "qwen7b", True)  # the default group kept
    assert layout(3, env) == HostLayout("4xA100-40", "qwen72b_awq", False)
    assert layout(4, {}) == HostLayout("2xA10", "qwen7b", False)
    with pytest.raises(LabError, match=r"unknown flag 'naked'; known: bare"):
        layout(1, {"VLMFLEET_LAB_GPUS": "h1=1xA10:qwen7b:naked"})
    with pytest.raises(LabError, match=r"is not hN=COUNTxKIND\[:group\[:flags\]\]"):
        layout(1, {"VLMFLEET_LAB_GPUS": "h1=1xA10:qwen7b:bare:x"})


@pytest.mark.parametrize("spec, switches, gpu_id", [
    ("8xH100", 4, "2330"), ("8xH200", 4, "2335"), ("8xA100-40", 6, "20b0"), ("8xA100-80", 6, "20b2"),
    ("4xA100-40", 0, "20b0"), ("8xL40S", 0, "26b9"), ("2xA10", 0, "2236"), ("1xT4", 0, "1eb8"),
])
def test_gpus_json_carries_the_pci_view_and_the_nvswitches(spec, switches, gpu_id):
    cfg = json.loads(gpus_json(spec))
    assert cfg["nvswitches"] == switches == sum(d["class"] == "0680" for d in cfg["pci"])
    gpus = [d for d in cfg["pci"] if d["class"] == "0302"]
    assert len(gpus) == len(cfg["gpus"]) and {d["device"] for d in gpus} == {gpu_id}
    # GPU i sits at the bus id the nvidia-smi stand-in reports for it
    assert gpus[0]["slot"] == "0000:17:00.0" and gpus[-1]["slot"] == f"0000:{0x17 + len(gpus) - 1:02x}:00.0"


def test_lab_pci_ids_are_the_catalogs():
    from vlmfleet.catalog import gpu_kinds
    from vlmfleet.lab.layout import PCI_DEVICE_IDS, PCI_DEVICE_NAMES

    assert set(PCI_DEVICE_IDS) == set(gpu_kinds())
    for kind_id, kind in gpu_kinds().items():
        ids = getattr(kind, "pci_ids", ())
        assert not ids or PCI_DEVICE_IDS[kind_id] in ids, kind_id
        assert PCI_DEVICE_IDS[kind_id] in PCI_DEVICE_NAMES


def test_a_bare_host_gets_the_pci_view_but_no_nvidia_smi(tmp_path):
    from vlmfleet.lab.hosts import install_gpu_standin

    cfg = LabConfig(root=tmp_path)
    bare, ready = LabHost("h1", 1, "10.77.0.11"), LabHost("h2", 2, "10.77.0.12")
    install_gpu_standin(cfg, bare, "8xH100", bare=True)
    install_gpu_standin(cfg, ready, "1xL40S")  # h2's layout: not bare
    for h in (bare, ready):
        lspci = h.root(cfg) / "usr/local/sbin/lspci"
        assert lspci.stat().st_mode & 0o755 == 0o755 and b"lspci STAND-IN" in lspci.read_bytes()
        assert (h.root(cfg) / "etc/vlmfleet-lab/gpus.json").exists()
    assert not (bare.root(cfg) / "usr/bin/nvidia-smi").exists()
    assert b"nvidia-smi STAND-IN" in (ready.root(cfg) / "usr/bin/nvidia-smi").read_bytes()


def test_nvidia_repo_standin_has_its_port_daemon_and_inventory_entry():
    from vlmfleet.lab.services import PORT_VARS, daemons

    cfg = LabConfig.from_env({"VLMFLEET_LAB_NVIDIA_REPO_PORT": "8099", "VLMFLEET_LAB_DIR": "/srv/lab"})
    repo = next(d for d in daemons(cfg) if d.name == "nvidia-repo-standin")
    assert (repo.port, repo.program, PORT_VARS[repo.name]) == (8099, "http.server", "NVIDIA_REPO")
    assert len({d.port for d in daemons(LabConfig())}) == len(daemons(LabConfig()))  # one owner per port
    data = inventory_data(cfg, lab_hosts(cfg, 1))
    assert data["nvidia_repo"] == {"url": "http://10.77.0.1:8099/compute/cuda/repos/{distro}/{arch}/",
                                   "key_url": "http://10.77.0.1:8099/compute/cuda/repos/{distro}/{arch}/3bf863cc.pub",
                                   "fingerprint": None}  # before the first build
    assert data["hosts"] == [{"name": "h1", "address": "10.77.0.11", "gpus": "2xA10", "group": "qwen7b",
                              "bare": False}]
