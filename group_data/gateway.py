"""Group gateway: the hosts that put each serving group behind one address with HAProxy (deploys/gateway.py).

Clients use http://<gateway>:<port>/v1/... with the fleet's API key; the port of each profile comes from
gateway_ports (default: qwen7b 8000, qwen72b_awq 8001, the other catalog profiles 8002-8006; docs/data-keys.md).
Examples (uncomment and edit):
"""

# gateway_ports = {"qwen7b": 8000, "qwen72b_awq": 8001}
# gateway_stats_port = 8404       # /stats and HAProxy's Prometheus metrics
