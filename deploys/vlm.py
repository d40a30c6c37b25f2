"""The main job: `pyinfra inventories/prod.py deploys/vlm.py`.

Stages run in order; for now the first proof deploy (stage ``hello``) — the real stages (preflight, base,
weights, image, service, health) land with the issue "The main job".
"""

from vlmfleet.stages.hello import hello

hello()
