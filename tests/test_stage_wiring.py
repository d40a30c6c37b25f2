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
    facts = json.loads(FIX.read_text())["facts"]  # a real H100, no verified weights, no image
    with planned(facts, DATA) as (state, host):
        run_stages(["service"])
        ops = recorded_ops(state, host)
    assert [op["name"] for op in ops] == ["Check the service has what it runs"]  # preflight passed: a noop
    (command,) = ops[0]["commands"]
    assert "h1: the service stage would start vllm-qwen7b without its verified weights and image on the host " \
           "(stages run: service)" in command
    assert "fix: run deploys/vlm.py first" in command
