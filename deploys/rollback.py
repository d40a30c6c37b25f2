"""Roll back on demand: `pyinfra inventories/prod.py deploys/rollback.py [--limit HOST]`.

Each host returns to the release before the one it runs (kept on the host by vlmfleet-release), in the same
batches as a rollout and under the host's rollout lock, and is checked healthy; a host that cannot stops the
batches after it. The next run of deploys/vlm.py rolls forward again unless the data changed back.
"""

from vlmfleet.stages.run import run_rollback

run_rollback()
