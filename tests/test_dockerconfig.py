"""daemon.json is merged, never clobbered."""

from vlmfleet.dockerconfig import NVIDIA_RUNTIME, merge, ours, render

from cfgs import cfg


def test_merge_keeps_every_foreign_key_and_unions_lists():
    existing = {"log-driver": "journald", "registry-mirrors": ["https://theirs.example"],
                "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "live-restore": True}
    wanted = {"registry-mirrors": ["https://ours.example"], "runtimes": NVIDIA_RUNTIME,
              "insecure-registries": ["10.0.0.1:5000"]}
    assert merge(existing, wanted) == {
        "log-driver": "journald", "live-restore": True,
        "registry-mirrors": ["https://ours.example", "https://theirs.example"],
        "runtimes": {"crun": {"path": "/usr/bin/crun"},
                     "nvidia": {"args": [], "path": "nvidia-container-runtime"}},
        "insecure-registries": ["10.0.0.1:5000"],
    }


def test_merge_is_idempotent():
    once = merge({"a": 1, "registry-mirrors": ["x"]}, {"registry-mirrors": ["y", "x"]})
    assert merge(once, {"registry-mirrors": ["y", "x"]}) == once == {"a": 1, "registry-mirrors": ["y", "x"]}


def test_ours_follows_the_settings():
    assert ours(cfg()) == {"runtimes": NVIDIA_RUNTIME}
    assert ours(cfg(nvidia_runtime=False)) == {}
    assert ours(cfg(nvidia_runtime=False, docker_registry_mirrors=["https://m"],
                    docker_insecure_registries=["r:5000"], docker_daemon_options={"live-restore": True})) == {
        "registry-mirrors": ["https://m"], "insecure-registries": ["r:5000"], "live-restore": True}


def test_render_is_stable_json():
    assert render({"b": 1, "a": [2]}) == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'


def test_daemon_options_cannot_replace_the_nvidia_runtime():
    """Other runtimes merge beside nvidia; the configuration refuses options that would replace it."""
    got = ours(cfg(docker_daemon_options={"runtimes": {"crun": {"path": "/usr/bin/crun"}}, "live-restore": True}))
    assert got == {"runtimes": {"crun": {"path": "/usr/bin/crun"}, **NVIDIA_RUNTIME}, "live-restore": True}


def test_an_option_vlmfleet_set_and_no_longer_wants_is_taken_out_again():
    """docker_daemon_options = {"debug": True} last run, {} now: debug goes — unless someone changed it since."""
    assert merge({"debug": True, "log-driver": "journald"}, {}, retired={"debug": True}) == {"log-driver": "journald"}
    assert merge({"debug": False}, {}, retired={"debug": True}) == {"debug": False}  # someone else's value now
    assert merge({"debug": True}, {"debug": True}, retired={"debug": True}) == {"debug": True}  # still wanted


def test_list_items_vlmfleet_added_and_dropped_go_again_theirs_stay():
    """An old registry mirror vlmfleet set goes when the data drops it; one someone else added stays."""
    existing = {"registry-mirrors": ["https://new.example", "https://old.example", "https://theirs.example"],
                "dns": ["1.1.1.1"]}
    got = merge(existing, {"registry-mirrors": ["https://new.example"], "dns": ["8.8.8.8"]},
                retired={"registry-mirrors": ["https://old.example"], "dns": ["1.1.1.1"]})
    assert got == {"registry-mirrors": ["https://new.example", "https://theirs.example"], "dns": ["8.8.8.8"]}
    assert merge({"insecure-registries": ["r:5000"]}, {}, retired={"insecure-registries": ["r:5000"]}) == {}
