"""Monitoring: `pyinfra inventories/prod.py deploys/monitoring.py`.

Every host: Prometheus' node exporter; hosts that serve with a GPU runtime: NVIDIA's DCGM exporter; hosts of group
`monitoring`: Prometheus (targets from the whole inventory, vlmfleet's alert rules, each file checked by promtool)
and Grafana's provisioning with vlmfleet's dashboard (docs/monitoring.md).
"""

from vlmfleet.stages.monitoring import run_monitoring

run_monitoring()
