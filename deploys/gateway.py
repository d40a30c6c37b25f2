"""The gateway: `pyinfra inventories/prod.py deploys/gateway.py`.

Hosts of group `gateway`: HAProxy with one address per serving group (its port from gateway_ports), each replica
health-checked on /health; every serving host: the drain agent a rollout uses to take a replica out of the
gateway before it restarts (docs/gateway.md).
"""

from vlmfleet.stages.gateway import run_gateway

run_gateway()
