"""Run one stage alone (after preflight, which changes nothing): `pyinfra inventories/prod.py deploys/preflight.py`."""

from vlmfleet.stages.run import run_stages

run_stages(["preflight"])
