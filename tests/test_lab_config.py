"""The lab's settings, connection files and inventory data, by value (no root, no hosts)."""

from pathlib import Path

import pytest

from vlmfleet.lab import LabConfig, LabError
from vlmfleet.lab.hosts import LabHost, lab_hosts
from vlmfleet.lab.inventory import groups, LabNotUp, load, pyinfra_hosts
from vlmfleet.lab.lab import _ssh_config, inventory_data


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
