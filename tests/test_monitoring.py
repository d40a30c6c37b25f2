"""Prometheus and Grafana files from the fleet: by value, and checked by the real promtool and systemd-analyze."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vlmfleet import monitoring as mon
from vlmfleet.catalog import vllm_version, vllm_versions
from vlmfleet.fleet import Member

from unitverify import verify, verify_root

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make deps` installs Debian's "
                                    "prometheus package (CI does)")


def member(name, profile=None, groups=(), **data):
    return Member(name, f"10.0.0.{name[-1]}" if name[-1].isdigit() else name, tuple(groups), profile,
                  {"vlm_profile": profile, **data})


FLEET = [member("h1", "qwen7b", ("qwen7b",)), member("h2", "qwen7b", ("qwen7b",), nvidia_runtime=False),
         member("h3", "qwen72b_awq", ("qwen72b_awq",), api_port=8100, vllm_version="0.8.2"),
         member("ops", None, ("monitoring", "gateway"))]


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd)


# ---- names ----------------------------------------------------------------------------------------------
def test_renamed_metrics_come_from_the_catalog_per_version():
    assert mon.metric_name("kv_cache_usage", "0.33.0") == "vllm:kv_cache_usage_perc"
    assert mon.metric_name("kv_cache_usage", "0.8.2") == "vllm:gpu_cache_usage_perc"
    assert mon.metric_name("inter_token_latency", "0.8.2") == "vllm:time_per_output_token_seconds"
    assert mon.metric("kv_cache_usage", ["0.33.0"]) == "vllm:kv_cache_usage_perc"
    assert mon.metric("kv_cache_usage", ["0.8.2", "0.33.0"]) == \
        "(vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)"
    assert mon.fleet_versions(FLEET) == ["0.33.0", "0.8.2"]


def test_every_vllm_metric_queried_is_one_the_version_exposes():
    """No seed name (vllm:requests_processed_total...) and no renamed name under the wrong version."""
    for versions in (["0.33.0"], ["0.8.2"], ["0.33.0", "0.8.2"]):
        exposed = set()
        for v in versions:
            for name in vllm_version(v).metrics:
                exposed |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        exprs = [a.expr for a in mon.alerts(mon.Thresholds(), versions)]
        exprs += [q for _, q in mon.dashboard_queries(mon.dashboard(versions))]
        used = set(re.findall(r"vllm:[a-z0-9_]+", " ".join(exprs)))
        assert used and used <= exposed, (versions, used - exposed)
    assert "vllm:requests_processed_total" not in mon.dashboard_json(list(vllm_versions()))


# ---- targets and prometheus.yml ---------------------------------------------------------------------------
def test_targets_from_the_fleet():
    got = [(t.job, t.address, dict(t.labels)) for t in mon.targets(FLEET)]
    assert got == [
        ("vllm", "10.0.0.1:8000", {"host": "h1", "profile": "qwen7b"}),
        ("dcgm", "10.0.0.1:9400", {"host": "h1", "profile": "qwen7b"}),
        ("node", "10.0.0.1:9100", {"host": "h1", "profile": "qwen7b"}),
        ("vllm", "10.0.0.2:8000", {"host": "h2", "profile": "qwen7b"}),  # no GPU runtime: no DCGM target
        ("node", "10.0.0.2:9100", {"host": "h2", "profile": "qwen7b"}),
        ("vllm", "10.0.0.3:8100", {"host": "h3", "profile": "qwen72b_awq"}),
        ("dcgm", "10.0.0.3:9400", {"host": "h3", "profile": "qwen72b_awq"}),
        ("node", "10.0.0.3:9100", {"host": "h3", "profile": "qwen72b_awq"}),
        ("node", "ops:9100", {"host": "ops"}),
        ("haproxy", "ops:8404", {"host": "ops"}),
    ]


@needs_promtool
def test_prometheus_config_passes_promtool_and_a_broken_one_does_not(tmp_path):
    rules = tmp_path / "alerts.yml"
    rules.write_text(mon.alert_rules(mon.Thresholds(), ["0.33.0"]))
    text = mon.prometheus_config(mon.targets(FLEET), scrape_interval_s=15, alertmanagers=["am.example:9093"],
                                 rule_files=[str(rules)])
    cfg = yaml.safe_load(text)
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["prometheus", "vllm", "node", "dcgm", "haproxy"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["am.example:9093"]
    (tmp_path / "prometheus.yml").write_text(text)
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "prometheus.yml").write_text(text.replace("scrape_interval: 15s", "scrape_interval: soon"))
    assert promtool("check", "config", str(tmp_path / "prometheus.yml")).returncode != 0


# ---- alert rules and their unit tests ------------------------------------------------------------------------
ALERTS = ["VllmServerDown", "VllmNoHealthyReplica", "VllmRequestsWaiting", "VllmKvCacheAlmostFull",
          "VllmTtftP95High", "GpuMemoryAlmostFull", "GpuTemperatureHigh", "HostDown", "GatewayDown"]


def test_the_alerts_the_issue_asks_for():
    rules = yaml.safe_load(mon.alert_rules(mon.Thresholds(), ["0.33.0"]))["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == ALERTS
    by = {r["alert"]: r for r in rules}
    assert by["VllmKvCacheAlmostFull"]["expr"] == "max by (host, profile) (vllm:kv_cache_usage_perc) > 0.9"
    assert by["VllmNoHealthyReplica"]["labels"] == {"severity": "critical"}
    assert all(r["annotations"]["summary"] and r["annotations"]["description"] for r in rules)


def _write_rules(tmp_path: Path, th, versions) -> Path:
    (tmp_path / "alerts.yml").write_text(mon.alert_rules(th, versions))
    (tmp_path / "alerts.test.yml").write_text(mon.alert_tests(th, versions))
    return tmp_path


@needs_promtool
@pytest.mark.parametrize("th, versions", [
    (mon.Thresholds(), ["0.33.0"]),
    (mon.Thresholds(), ["0.33.0", "0.8.2"]),
    (mon.Thresholds(requests_waiting=0, kv_cache_usage=0.5, ttft_p95_s=40.0, gpu_memory_used=0.9, gpu_temp_c=70),
     ["0.8.2"]),
])
def test_each_alert_fires_and_stays_quiet_under_promtool_test_rules(tmp_path, th, versions):
    d = _write_rules(tmp_path, th, versions)
    check = promtool("check", "rules", "alerts.yml", cwd=d)
    assert check.returncode == 0 and "SUCCESS: 9 rules found" in check.stdout, check.stdout + check.stderr
    tests = yaml.safe_load((d / "alerts.test.yml").read_text())["tests"]
    firing = {t["alert_rule_test"][0]["alertname"] for t in tests if t["alert_rule_test"][0]["exp_alerts"]}
    quiet = {t["alert_rule_test"][0]["alertname"] for t in tests if not t["alert_rule_test"][0]["exp_alerts"]}
    assert firing == quiet == set(ALERTS)
    proc = promtool("test", "rules", "alerts.test.yml", cwd=d)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
@pytest.mark.parametrize("alert, before, after", [
    ("VllmKvCacheAlmostFull", "> 0.9", "> 0.99"),        # a threshold the data does not ask for
    ("VllmNoHealthyReplica", "sum by (profile)", "sum by (host)"),  # the wrong grouping
    ("VllmServerDown", "for: 2m", "for: 10m"),          # a hold time the annotation does not say
])
def test_the_rule_tests_catch_a_broken_rule(tmp_path, alert, before, after):
    d = _write_rules(tmp_path, mon.Thresholds(), ["0.33.0"])
    text = (d / "alerts.yml").read_text()
    start = text.index(f"alert: {alert}")
    end = text.find("- alert:", start)
    end = len(text) if end < 0 else end
    assert before in text[start:end]
    (d / "alerts.yml").write_text(text[:start] + text[start:end].replace(before, after, 1) + text[end:])
    proc = promtool("test", "rules", "alerts.test.yml", cwd=d)
    assert proc.returncode != 0 and alert in proc.stdout + proc.stderr


def test_annotations_render_like_prometheus():
    assert mon.render_annotation("{{ $labels.host }} at {{ $value }} C", {"host": "h1"}, 86) == "h1 at 86 C"
    assert mon.render_annotation("{{ $value | humanizePercentage }}", {}, 0.982) == "98.2%"
    assert mon.render_annotation("{{ $value | humanizeDuration }}", {}, 19.5) == "19.5s"
    assert mon.render_annotation("{{ $value | humanizeDuration }}", {}, 156) == "2m 36s"
    with pytest.raises(ValueError, match="humanize1024"):
        mon.render_annotation("{{ $value | humanize1024 }}", {}, 1)


# ---- the dashboard -----------------------------------------------------------------------------------------
def test_dashboard_panels_and_variables():
    dash = mon.dashboard(["0.33.0"])
    titles = [p["title"] for p in dash["panels"]]
    for want in ("Requests running", "Requests waiting", "KV cache usage", "Time to first token",
                 "End-to-end latency", "Tokens per second", "GPU memory used", "GPU temperature"):
        assert want in titles
    assert [v["name"] for v in dash["templating"]["list"]] == ["profile", "host"]
    assert {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]} == {mon.DATASOURCE_UID}
    assert json.loads(mon.dashboard_json(["0.33.0"])) == dash
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


@needs_promtool
@pytest.mark.parametrize("versions", [["0.33.0"], ["0.8.2"], ["0.33.0", "0.8.2"]])
def test_every_dashboard_query_parses_with_promtool(tmp_path, versions):
    dash = mon.dashboard(versions)
    queries = mon.dashboard_queries(dash)
    assert len(queries) == sum(len(p["targets"]) for p in dash["panels"])
    assert all("$" not in q for _, q in queries)  # Grafana's variables replaced
    (tmp_path / "dash.yml").write_text(mon.dashboard_rules(dash))
    proc = promtool("check", "rules", "dash.yml", cwd=tmp_path)
    assert proc.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in proc.stdout, proc.stdout + proc.stderr
    # and the check can fail: a query with a range on an expression
    (tmp_path / "dash.yml").write_text(mon.dashboard_rules(dash).replace("rate(vllm:", "rate((vllm:", 1))
    assert promtool("check", "rules", "dash.yml", cwd=tmp_path).returncode != 0


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    ds = yaml.safe_load(mon.grafana_datasource(9090))["datasources"][0]
    assert ds == {"name": "Prometheus (vlmfleet)", "type": "prometheus", "uid": mon.DATASOURCE_UID,
                  "access": "proxy", "url": "http://localhost:9090", "isDefault": True, "editable": False}
    prov = yaml.safe_load(mon.grafana_dashboards_provider())["providers"][0]
    assert prov["options"]["path"] == mon.GRAFANA_DASHBOARDS_DIR and prov["type"] == "file"
    assert mon.grafana_repo_line("https://apt.grafana.com/", "/k.asc") == \
        "deb [signed-by=/k.asc] https://apt.grafana.com stable main\n"


# ---- the package defaults and the DCGM exporter's unit -----------------------------------------------------
def test_defaults_files_of_debians_units():
    assert mon.node_exporter_defaults(9100).endswith('ARGS="--web.listen-address=:9100"\n')
    assert mon.prometheus_defaults(9091, "30d").endswith(
        'ARGS="--web.listen-address=:9091 --storage.tsdb.retention.time=30d"\n')


def test_dcgm_unit_passes_systemd_analyze_verify(tmp_path):
    unit = mon.dcgm_unit("nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04", 9400)
    assert "--gpus all --cap-add SYS_ADMIN" in unit and "--publish 9400:9400" in unit
    assert unit.startswith("# Managed by vlmfleet (monitoring)")
    proc = verify(verify_root(tmp_path), "vlmfleet-dcgm-exporter.service", unit)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
