"""How vlmfleet.stages.run wires the stages, planned on a real pyinfra State with fixture facts (no connection):
the service stage alone refuses a profile whose weights or image are not on the host."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

from pyinfra.api import Config, Inventory, State
from pyinfra.context import ctx_host, ctx_state
from test_operations import FakeFacts, recorded_ops

from vlmfleet.stages.run import run_stages

FIX = Path(__file__).parent / "fixtures" / "operations" / "stage.preflight" / "h100_passes.json"
DATA = {"vlm_profile": "qwen7b", "api_bind": "127.0.0.1"}


@contextmanager
def planned(facts: dict, data: dict):
    inventory = Inventory(([("h1", data)], {}))
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    with patch.object(host, "get_fact", FakeFacts(facts).get), patch.object(host, "noop", lambda _: None):
        with ctx_state.use(state), ctx_host.use(host):
            yield state, host


def test_the_service_stage_alone_refuses_a_profile_whose_weights_and_image_are_missing():
    facts = json.loads(FIX.read_text())["facts"]  # a real H100, no verified weights, no image, no server yet
    facts = {**facts, "systemd.SystemdStatus": {}}
    with planned(facts, DATA) as (state, host):
        run_stages(["service"])
        ops = recorded_ops(state, host)
    # preflight passed (a noop); the lock is taken at execution (no command planned); the host fails before any
    # change, and the lock is released by the error callback (vlmfleet/stages/rollout.py)
    assert [op["name"] for op in ops] == ["Take the host's rollout lock (one rollout at a time)",
                                          "Check the service has what it runs"]
    assert ops[0]["commands"] == []
    assert ops[1]["timeout"] == 900  # command_timeout_s: every operation of a run is bounded
    (command,) = ops[1]["commands"]
    assert "h1: the service stage would start vllm-qwen7b without its verified weights and image on the host " \
           "(stages run: service)" in command
    assert "fix: run deploys/vlm.py first" in command


def test_every_operation_is_bounded_and_the_pull_by_its_own_key():
    """Issue 9, bounded waits: the pull is killed on the host after pull_timeout_s (and says so), pyinfra gives up
    a minute later; anything without its own bound gets command_timeout_s, a deploy-wide argument."""
    facts = json.loads(FIX.read_text())["facts"]
    with planned(facts, {**DATA, "pull_timeout_s": 100}) as (state, host):
        run_stages(["image"])
        lock, pull, unlock = recorded_ops(state, host)
    assert [lock["commands"], unlock["commands"]] == [[], []]  # bookkeeping at execution time, not changes
    assert pull["name"] == "Image | Pull vllm/vllm-openai:v0.33.0" and pull["timeout"] == 160
    assert pull["commands"] == [
        "timeout -k 30 100 docker pull --quiet vllm/vllm-openai:v0.33.0; rc=$?; if [ $rc -eq 124 ] || [ $rc -eq 137 ]; "
        "then echo 'docker pull vllm/vllm-openai:v0.33.0: no result after 100s (pull_timeout_s); the network or the "
        "far end hangs — fix: check it, or raise pull_timeout_s' >&2; fi; exit $rc"]
