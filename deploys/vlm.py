"""The main job: `pyinfra inventories/prod.py deploys/vlm.py`.

Stages, in order: preflight -> base -> weights -> image -> service -> health. Each is a packaged @deploy in
vlmfleet.stages; `vlm_stages` (data) picks a subset, e.g. --data vlm_stages=preflight,health.
"""

from vlmfleet.stages.run import run_stages

run_stages()
