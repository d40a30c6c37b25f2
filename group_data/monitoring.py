"""Group monitoring: the hosts that run Prometheus (and Grafana) for the whole inventory (deploys/monitoring.py).

Every key and its default: docs/data-keys.md ("monitoring"). Examples (uncomment and edit):
"""

# prometheus_retention = "30d"
# scrape_interval_s = 15
# alertmanager_urls = ["alertmanager.example.internal:9093"]
# alert_ttft_p95_s = 5.0          # multimodal prompts with large images take longer to their first token
# alert_kv_cache_usage = 0.9
# grafana_apt_url = "https://apt.grafana.com"
