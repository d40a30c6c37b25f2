"""What Prometheus and Grafana get, derived from the fleet: scrape targets, alert rules with their unit tests, and
the dashboard — pure Python, no pyinfra (deploys/monitoring.py writes what this returns).

Metric names come from the vLLM version catalog (vlmfleet/catalog/vllm.yaml ``metrics:``, checked against
FACTS.md): a name vLLM renamed between versions (the KV cache usage, the time per output token) is queried under
the name of each version the fleet runs, joined with ``or``. Every expression here is checked by the real
``promtool`` in the tests (``promtool check config``, ``check rules``, ``test rules``; the dashboard's queries
as recording rules), and queried against a real Prometheus in the lab.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import yaml

from .catalog import vllm_version, vllm_versions
from .fleet import Member

#: metrics vLLM renamed: the role, and its name in each version (FACTS.md)
RENAMED = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "inter_token_latency": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
}
RULES_DIR = "/etc/prometheus/vlmfleet"
ALERTS_FILE = f"{RULES_DIR}/alerts.yml"
CONFIG_FILE = "/etc/prometheus/prometheus.yml"


# ---- metric names --------------------------------------------------------------------------------------
def metric_name(role: str, version: str) -> str:
    """The name ``version`` exposes for a renamed metric, from the catalog.

    + role: a key of RENAMED, e.g. ``"kv_cache_usage"``
    + version: e.g. ``"0.8.2"`` -> ``vllm:gpu_cache_usage_perc``
    """
    names = set(vllm_version(version).metrics)
    found = [n for n in RENAMED[role] if n in names]
    if len(found) != 1:
        raise ValueError(f"vLLM {version} in vlmfleet/catalog/vllm.yaml lists {found or 'none'} of "
                         f"{', '.join(RENAMED[role])}: list exactly one")
    return found[0]


def metric(role: str, versions: Iterable[str], suffix: str = "") -> str:
    """A selector for a renamed metric across the fleet's versions, e.g. ``vllm:kv_cache_usage_perc`` for a fleet
    on 0.33.0 alone, ``(vllm:kv_cache_usage_perc or vllm:gpu_cache_usage_perc)`` for a mixed one.

    + versions: the vLLM versions the fleet runs, e.g. ``["0.33.0", "0.8.2"]``
    + suffix: e.g. ``"_bucket"`` for a histogram's buckets
    """
    names = sorted({metric_name(role, v) + suffix for v in versions}, key=lambda n: RENAMED[role].index(
        n.removesuffix(suffix)))
    return names[0] if len(names) == 1 else "(" + " or ".join(names) + ")"


def fleet_versions(fleet: Iterable[Member]) -> list[str]:
    """The vLLM versions the fleet's servers run (every catalog version when none serves yet)."""
    found = sorted({str(m.get("vllm_version")) for m in fleet if m.serves})
    return found or list(vllm_versions())


# ---- scrape targets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One scrape target.

    + job: ``vllm``, ``node``, ``dcgm`` or ``haproxy``
    + address: ``host:port``, e.g. ``"10.77.0.11:8000"``
    + labels: e.g. ``{"host": "h1", "profile": "qwen7b"}``
    """

    job: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


def targets(fleet: Iterable[Member]) -> list[Target]:
    """Every target of the fleet: vLLM's /metrics on each server, the node exporter on every host, the DCGM exporter
    on every host with a GPU runtime (``nvidia_runtime``), HAProxy's exporter on every gateway."""
    out = []
    for m in fleet:
        base = {"host": m.name, **({"profile": m.profile} if m.serves else {})}
        if m.serves:
            out.append(Target("vllm", f"{m.address}:{m.api_port}", base))
            if m.get("nvidia_runtime"):
                out.append(Target("dcgm", f"{m.address}:{m.get('dcgm_exporter_port')}", base))
        out.append(Target("node", f"{m.address}:{m.get('node_exporter_port')}", base))
        if m.balances:
            out.append(Target("haproxy", f"{m.address}:{m.get('gateway_stats_port')}", {"host": m.name}))
    return out


def prometheus_config(tgts: Iterable[Target], *, scrape_interval_s: int, alertmanagers: Iterable[str] = (),
                      rule_files: Iterable[str] = (ALERTS_FILE,)) -> str:
    """``/etc/prometheus/prometheus.yml``: one scrape job per kind of target, a static target per host.

    + scrape_interval_s: e.g. 15 (the evaluation interval too)
    + alertmanagers: e.g. ``["am.example.internal:9093"]``
    """
    jobs: dict[str, list[dict]] = {}
    for t in tgts:
        jobs.setdefault(t.job, []).append({"targets": [t.address], "labels": dict(t.labels)})
    scrape = [{"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]}]
    for job in ("vllm", "node", "dcgm", "haproxy"):
        if job in jobs:
            scrape.append({"job_name": job, "metrics_path": "/metrics", "static_configs": jobs[job]})
    cfg = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s",
                   "external_labels": {"fleet": "vlmfleet"}},
        "rule_files": list(rule_files),
        "scrape_configs": scrape,
    }
    if alertmanagers:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return "# written by vlmfleet (deploys/monitoring.py) from the inventory; edits are overwritten\n" + _yaml(cfg)


def _yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


# ---- alert rules -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds (data keys ``alert_*``, docs/data-keys.md)."""

    requests_waiting: int = 10
    kv_cache_usage: float = 0.9
    ttft_p95_s: float = 5.0
    gpu_memory_used: float = 0.98
    gpu_temp_c: int = 85

    @classmethod
    def from_member(cls, m: Member) -> "Thresholds":
        return cls(int(m.get("alert_requests_waiting")), float(m.get("alert_kv_cache_usage")),
                   float(m.get("alert_ttft_p95_s")), float(m.get("alert_gpu_memory_used")),
                   int(m.get("alert_gpu_temp_c")))


@dataclass(frozen=True)
class Alert:
    """One alert rule: its name, PromQL, how long it must hold, severity and what the operator reads."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    fix: str

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr, "for": self.for_, "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.fix}}


def alerts(th: Thresholds, versions: Iterable[str]) -> list[Alert]:
    """The fleet's alerts, in the order the dashboard shows them.

    + versions: the vLLM versions the fleet runs (names of renamed metrics), e.g. ``["0.33.0"]``
    """
    versions = list(versions)
    kv = metric("kv_cache_usage", versions)
    return [
        Alert("VllmServerDown", 'up{job="vllm"} == 0', "2m", "warning",
              "vLLM on {{ $labels.host }} ({{ $labels.profile }}) has not answered /metrics for 2 minutes",
              "ssh to {{ $labels.host }}: systemctl status vllm-*, journalctl -u vllm-* -n 100; "
              "`vlmfleet status` shows the release; deploys/rollback.py returns to the one before"),
        Alert("VllmNoHealthyReplica", 'sum by (profile) (up{job="vllm"}) == 0', "1m", "critical",
              "no replica of {{ $labels.profile }} answers: the group serves nothing",
              "every server of {{ $labels.profile }} is down; look at the newest rollout (`vlmfleet status`), "
              "roll it back (pyinfra INVENTORY deploys/rollback.py --limit {{ $labels.profile }})"),
        Alert("VllmRequestsWaiting", f"max by (host, profile) (vllm:num_requests_waiting) > {th.requests_waiting}",
              "5m", "warning",
              "{{ $labels.host }} keeps {{ $value }} requests waiting (more than " + str(th.requests_waiting) + ")",
              "the server is saturated: add replicas to {{ $labels.profile }}, or lower the load; raise "
              "alert_requests_waiting if this queue is expected"),
        Alert("VllmKvCacheAlmostFull", f"max by (host, profile) ({kv}) > {th.kv_cache_usage}", "5m", "warning",
              "the KV cache of {{ $labels.host }} is {{ $value | humanizePercentage }} full",
              "requests will queue or be preempted: add replicas, lower vllm_max_num_seqs, or give the cache more "
              "memory (vllm_gpu_memory_utilization, vllm_kv_cache_dtype fp8)"),
        Alert("VllmTtftP95High",
              "histogram_quantile(0.95, sum by (le, profile) (rate(vllm:time_to_first_token_seconds_bucket[5m])))"
              f" > {th.ttft_p95_s}", "10m", "warning",
              "95% of {{ $labels.profile }}'s requests wait up to {{ $value | humanizeDuration }} for their first "
              f"token (more than {th.ttft_p95_s}s)",
              "prefill is the bottleneck (large images, long prompts, a saturated server): check requests waiting "
              "and KV cache usage; add replicas or lower vllm_max_pixels"),
        Alert("GpuMemoryAlmostFull",
              f"DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) > {th.gpu_memory_used}", "5m",
              "warning", "GPU {{ $labels.gpu }} of {{ $labels.host }} is {{ $value | humanizePercentage }} full",
              "something besides vLLM holds GPU memory (nvidia-smi on the host): the next restart may not fit; "
              "stop it, or lower vllm_gpu_memory_utilization"),
        Alert("GpuTemperatureHigh", f"DCGM_FI_DEV_GPU_TEMP > {th.gpu_temp_c}", "5m", "warning",
              "GPU {{ $labels.gpu }} of {{ $labels.host }} is at {{ $value }} C",
              "check the host's cooling and fans (nvidia-smi -q -d TEMPERATURE); a GPU that throttles serves slowly"),
        Alert("HostDown", 'up{job="node"} == 0', "2m", "critical",
              "{{ $labels.host }}'s node exporter has not answered for 2 minutes",
              "the host is down or unreachable from Prometheus: check power, network, and "
              "systemctl status prometheus-node-exporter"),
        Alert("GatewayDown", 'up{job="haproxy"} == 0', "1m", "critical",
              "the gateway on {{ $labels.host }} does not answer: clients of every group behind it fail",
              "ssh to {{ $labels.host }}: systemctl status haproxy; haproxy -c -f /etc/haproxy/haproxy.cfg"),
    ]


def alert_rules(th: Thresholds, versions: Iterable[str]) -> str:
    """``alerts.yml`` for Prometheus' ``rule_files``."""
    return ("# written by vlmfleet (deploys/monitoring.py); thresholds: the alert_* data keys\n"
            + _yaml({"groups": [{"name": "vlmfleet", "rules": [a.rule() for a in alerts(th, versions)]}]}))


# ---- alert unit tests (promtool test rules) --------------------------------------------------------------
def _series(name: str, labels: Mapping[str, str], values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _case(alert: Alert, at: str, series: list[dict], fired: list[Mapping[str, str]], value: float = 0.0) -> dict:
    """One promtool test: ``series`` sampled each minute, and at ``at`` exactly the alerts ``fired`` (labels),
    their annotations rendered for ``value`` (the expression's value at ``at``)."""
    exp = [{"exp_labels": {**lbl, "severity": alert.severity},
            "exp_annotations": {"summary": render_annotation(alert.summary, lbl, value),
                                "description": render_annotation(alert.fix, lbl, value)}} for lbl in fired]
    return {"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": at, "alertname": alert.name, "exp_alerts": exp}]}


def alert_tests(th: Thresholds, versions: Iterable[str], rules_file: str = "alerts.yml") -> str:
    """A ``promtool test rules`` file with, for every alert, a case where it fires (exact labels) and a case
    where it stays quiet: values on either side of the data's threshold, each renamed metric under every
    version's name.

    + rules_file: the rules file's path as promtool sees it from this file's folder, e.g. ``"alerts.yml"``
    """
    versions = list(versions)
    by_name = {a.name: a for a in alerts(th, versions)}

    def case(name: str, at: str, series: list[dict], fired: list[Mapping[str, str]], value: float = 0.0) -> dict:
        return _case(by_name[name], at, series, fired, value)

    h1 = {"job": "vllm", "instance": "10.0.0.1:8000", "host": "h1", "profile": "qwen7b"}
    h2 = {"job": "vllm", "instance": "10.0.0.2:8000", "host": "h2", "profile": "qwen7b"}
    fired = {"host": "h1", "profile": "qwen7b"}
    gpu = {"job": "dcgm", "instance": "10.0.0.1:9400", "host": "h1", "profile": "qwen7b", "gpu": "0",
           "UUID": "GPU-0", "modelName": "NVIDIA A10"}
    node = {"job": "node", "instance": "10.0.0.1:9100", "host": "h1"}
    gw = {"job": "haproxy", "instance": "10.0.0.9:8404", "host": "gw1"}
    hi_wait, lo_wait = th.requests_waiting + 1, th.requests_waiting
    cases = [
        case("VllmServerDown", "5m", [_series("up", h1, "1 1 0 0 0 0 0"), _series("up", h2, "1x6")],
              [{**h1}]),
        case("VllmServerDown", "5m", [_series("up", h1, "1 0 1 0 1 1 1")], []),  # flapping, never 2m down
        case("VllmNoHealthyReplica", "5m", [_series("up", h1, "1 0 0 0 0 0"), _series("up", h2, "1 1 0 0 0 0")],
              [{"profile": "qwen7b"}]),
        case("VllmNoHealthyReplica", "5m", [_series("up", h1, "0x6"), _series("up", h2, "1x6")], []),
        case("VllmRequestsWaiting", "10m", [_series("vllm:num_requests_waiting", h1, f"{hi_wait}x10"),
                                             _series("vllm:num_requests_waiting", h2, "0x10")], [fired], hi_wait),
        case("VllmRequestsWaiting", "10m", [_series("vllm:num_requests_waiting", h1, f"{lo_wait}x10")], []),
        case("VllmTtftP95High", "15m", _ttft(h1, th.ttft_p95_s, slow=True), [{"profile": "qwen7b"}],
             3.9 * th.ttft_p95_s),
        case("VllmTtftP95High", "15m", _ttft(h1, th.ttft_p95_s, slow=False), []),
        case("GpuMemoryAlmostFull", "10m", _fb(gpu, th.gpu_memory_used, over=True), [gpu],
             _fb_used(th.gpu_memory_used, True) / _FB_TOTAL),
        case("GpuMemoryAlmostFull", "10m", _fb(gpu, th.gpu_memory_used, over=False), []),
        case("GpuTemperatureHigh", "10m", [_series("DCGM_FI_DEV_GPU_TEMP", gpu, f"{th.gpu_temp_c + 1}x10")],
             [gpu], th.gpu_temp_c + 1),
        case("GpuTemperatureHigh", "10m", [_series("DCGM_FI_DEV_GPU_TEMP", gpu, f"{th.gpu_temp_c}x10")], []),
        case("HostDown", "5m", [_series("up", node, "0x6")], [node]),
        case("HostDown", "5m", [_series("up", node, "1x6")], []),
        case("GatewayDown", "5m", [_series("up", gw, "1 0 0 0 0 0")], [gw]),
        case("GatewayDown", "5m", [_series("up", gw, "1x6")], []),
    ]
    over, under = round(min(th.kv_cache_usage + 0.05, 1.0), 4), round(th.kv_cache_usage - 0.05, 4)
    for v in versions:  # the KV cache alert under each version's name
        name = metric_name("kv_cache_usage", v)
        cases.append(case("VllmKvCacheAlmostFull", "10m", [_series(name, h1, f"{over}x10")], [fired], over))
        cases.append(case("VllmKvCacheAlmostFull", "10m", [_series(name, h1, f"{under}x10")], []))
    return ("# written by vlmfleet: one firing and one quiet case per alert (promtool test rules)\n"
            + _yaml({"rule_files": [rules_file], "evaluation_interval": "1m", "tests": cases}))


def _ttft(labels: Mapping[str, str], limit_s: float, slow: bool) -> list[dict]:
    """TTFT buckets around the limit: 10 requests a minute, all between 2x and 4x the limit (p95 ~3.9x: fires)
    or all within a tenth of it (p95 ~0.1x: quiet)."""
    fast, mid, high = (f"{limit_s * f:g}" for f in (0.1, 2, 4))
    le = {fast: "0+0x20" if slow else "0+10x20", mid: "0+0x20" if slow else "0+10x20", high: "0+10x20",
          "+Inf": "0+10x20"}
    return [_series("vllm:time_to_first_token_seconds_bucket", {**labels, "le": k}, v) for k, v in le.items()]


_FB_TOTAL = 24576  # MiB of a 24 GiB GPU


def _fb_used(limit: float, over: bool) -> int:
    return int(_FB_TOTAL * limit) + (50 if over else -50)


def _fb(labels: Mapping[str, str], limit: float, over: bool) -> list[dict]:
    """Frame buffer MiB of a 24 GiB GPU, used just over (or just under) the limit."""
    used = _fb_used(limit, over)
    return [_series("DCGM_FI_DEV_FB_USED", labels, f"{used}x10"),
            _series("DCGM_FI_DEV_FB_FREE", labels, f"{_FB_TOTAL - used}x10")]


def _humanize_duration(v: float) -> str:
    """Prometheus' humanizeDuration for v >= 0 (template/template.go)."""
    if v < 1:
        return f"{v * 1000:.4g}ms" if v else "0s"
    secs = int(v)
    days, hours, minutes, seconds = secs // 86400, secs // 3600 % 24, secs // 60 % 60, secs % 60
    if days:
        return f"{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{v:.4g}s"


def render_annotation(text: str, labels: Mapping[str, str], value: float) -> str:
    """An annotation as Prometheus renders it, for the subset of Go templates the alerts use: ``{{ $labels.x }}``,
    ``{{ $value }}``, ``{{ $value | humanizePercentage }}``, ``{{ $value | humanizeDuration }}``."""
    def sub(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr.startswith("$labels."):
            return str(labels.get(expr.removeprefix("$labels."), ""))
        if expr == "$value":
            return f"{value:g}" if value != int(value) else str(int(value))
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if expr == "$value | humanizeDuration":
            return _humanize_duration(value)
        raise ValueError(f"annotation template {{{{ {expr} }}}} is not rendered by render_annotation")
    return re.sub(r"\{\{(.*?)\}\}", sub, text)


# ---- the Grafana dashboard ----------------------------------------------------------------------------
DATASOURCE_UID = "vlmfleet-prometheus"
DASHBOARD_UID = "vlmfleet-fleet"
GRAFANA_DASHBOARDS_DIR = "/var/lib/grafana/dashboards/vlmfleet"
#: Grafana's variables, as promtool sees them when it checks the queries
GRAFANA_VARS = {"$__rate_interval": "5m", "$profile": ".*", "$host": ".*"}


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (legend, PromQL)
    description: str = ""


def panels(versions: Iterable[str]) -> list[Panel]:
    """The dashboard's panels: the serving group, its latency, its capacity, then the GPUs and hosts."""
    versions = list(versions)
    sel = 'profile=~"$profile", host=~"$host"'
    kv = metric("kv_cache_usage", versions)
    itl = metric("inter_token_latency", versions, "_bucket")

    def with_sel(name: str) -> str:
        """A selector for a (possibly renamed) metric with the dashboard's filters."""
        return " or ".join(f"{n}{{{sel}}}" for n in _names(name))

    def quantile(qq: str, name: str, by: str = "profile") -> str:
        rates = " or ".join(f"rate({n}{{{sel}}}[$__rate_interval])" for n in _names(name))
        return f"histogram_quantile({qq}, sum by (le, {by}) ({rates}))"

    return [
        Panel("Servers up", "none", (("{{profile}}", f'sum by (profile) (up{{job="vllm", {sel}}})'),),
              "replicas answering /metrics, per group"),
        Panel("Requests running", "none", (("{{host}}", f"sum by (host) (vllm:num_requests_running{{{sel}}})"),)),
        Panel("Requests waiting", "none", (("{{host}}", f"sum by (host) (vllm:num_requests_waiting{{{sel}}})"),)),
        Panel("KV cache usage", "percentunit", (("{{host}}", f"max by (host) ({with_sel(kv)})"),),
              "vllm:kv_cache_usage_perc (0.33) / vllm:gpu_cache_usage_perc (0.8.2)"),
        Panel("Time to first token", "s", (
            ("p50 {{profile}}", quantile("0.5", "vllm:time_to_first_token_seconds_bucket")),
            ("p95 {{profile}}", quantile("0.95", "vllm:time_to_first_token_seconds_bucket")))),
        Panel("End-to-end latency", "s", (
            ("p50 {{profile}}", quantile("0.5", "vllm:e2e_request_latency_seconds_bucket")),
            ("p95 {{profile}}", quantile("0.95", "vllm:e2e_request_latency_seconds_bucket")))),
        Panel("Inter-token latency p95", "s", (("{{profile}}", quantile("0.95", itl)),),
              "vllm:inter_token_latency_seconds (0.33) / vllm:time_per_output_token_seconds (0.8.2)"),
        Panel("Tokens per second", "short", (
            ("generated {{profile}}", f"sum by (profile) (rate(vllm:generation_tokens_total{{{sel}}}[$__rate_interval]))"),
            ("prompt {{profile}}", f"sum by (profile) (rate(vllm:prompt_tokens_total{{{sel}}}[$__rate_interval]))"))),
        Panel("Requests finished per second", "reqps", (
            ("{{finished_reason}}", f"sum by (finished_reason) (rate(vllm:request_success_total{{{sel}}}[$__rate_interval]))"),)),
        Panel("GPU memory used", "percentunit", (
            ("{{host}} GPU {{gpu}}", f"DCGM_FI_DEV_FB_USED{{{sel}}} / (DCGM_FI_DEV_FB_USED{{{sel}}} + "
                                     f"DCGM_FI_DEV_FB_FREE{{{sel}}})"),)),
        Panel("GPU temperature", "celsius", (("{{host}} GPU {{gpu}}", f"DCGM_FI_DEV_GPU_TEMP{{{sel}}}"),)),
        Panel("GPU utilisation", "percent", (("{{host}} GPU {{gpu}}", f"DCGM_FI_DEV_GPU_UTIL{{{sel}}}"),)),
        Panel("Host CPU busy", "percentunit", (
            ("{{host}}", '1 - avg by (host) (rate(node_cpu_seconds_total{mode="idle", host=~"$host"}[$__rate_interval]))'),)),
        Panel("Free disk", "bytes", (
            ("{{host}} {{mountpoint}}", 'node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs", '
                                        'host=~"$host"}'),),
              "where the weights (model_dir) and images (docker_data_root) live"),
        Panel("Gateway: healthy replicas per group", "none", (
            ("{{proxy}}", 'haproxy_backend_active_servers{proxy=~"vlm_.*"}'),)),
    ]


def _names(selector: str) -> list[str]:
    """The metric names of :func:`metric`'s result: ``(a or b)`` -> ``[a, b]``."""
    return [n.strip() for n in selector.strip("()").split(" or ")]


def dashboard(versions: Iterable[str]) -> dict:
    """The Grafana dashboard (JSON model, schema 39) over the Prometheus data source vlmfleet provisions."""
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    out_panels = []
    for i, p in enumerate(panels(versions)):
        out_panels.append({
            "id": i + 1, "type": "timeseries", "title": p.title, "description": p.description, "datasource": ds,
            "gridPos": {"x": (i % 3) * 8, "y": (i // 3) * 8, "w": 8, "h": 8},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "datasource": ds, "expr": expr, "legendFormat": legend}
                        for j, (legend, expr) in enumerate(p.queries)],
        })

    def var(name: str, query: str) -> dict:
        return {"name": name, "type": "query", "datasource": ds, "query": query, "refresh": 2, "includeAll": True,
                "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}}

    return {
        "uid": DASHBOARD_UID, "title": "vlmfleet: Qwen2.5-VL on vLLM", "tags": ["vlmfleet", "vllm"],
        "schemaVersion": 39, "version": 1, "editable": False, "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [var("profile", 'label_values(up{job="vllm"}, profile)'),
                                var("host", 'label_values(up{job="vllm", profile=~"$profile"}, host)')]},
        "panels": out_panels,
    }


def dashboard_json(versions: Iterable[str]) -> str:
    return json.dumps(dashboard(versions), indent=2, sort_keys=False) + "\n"


def promql_of(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, as Prometheus (and promtool) take it."""
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return expr


def dashboard_queries(dash: Mapping) -> list[tuple[str, str]]:
    """(record name, PromQL) of every query of a dashboard, for ``promtool check rules`` and the lab's API."""
    out = []
    for p in dash["panels"]:
        slug = re.sub(r"[^a-z0-9]+", "_", p["title"].lower()).strip("_")
        for t in p["targets"]:
            out.append((f"vlmfleet_dashboard:{slug}:{t['refId'].lower()}", promql_of(t["expr"])))
    return out


def dashboard_rules(dash: Mapping) -> str:
    """The dashboard's queries as recording rules: a file ``promtool check rules`` parses (never loaded)."""
    return _yaml({"groups": [{"name": "vlmfleet-dashboard-queries", "rules": [
        {"record": name, "expr": expr} for name, expr in dashboard_queries(dash)]}]})


# ---- Grafana provisioning --------------------------------------------------------------------------------
def grafana_datasource(prometheus_port: int) -> str:
    """``/etc/grafana/provisioning/datasources/vlmfleet.yaml``."""
    return _yaml({"apiVersion": 1, "datasources": [{
        "name": "Prometheus (vlmfleet)", "type": "prometheus", "uid": DATASOURCE_UID, "access": "proxy",
        "url": f"http://localhost:{prometheus_port}", "isDefault": True, "editable": False}]})


def grafana_dashboards_provider() -> str:
    """``/etc/grafana/provisioning/dashboards/vlmfleet.yaml``: load the dashboards in GRAFANA_DASHBOARDS_DIR."""
    return _yaml({"apiVersion": 1, "providers": [{
        "name": "vlmfleet", "folder": "vlmfleet", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "options": {"path": GRAFANA_DASHBOARDS_DIR, "foldersFromFilesStructure": False}}]})


# ---- files of the packages and units ---------------------------------------------------------------------
DCGM_MARKER = "Managed by vlmfleet (monitoring)"


def node_exporter_defaults(port: int) -> str:
    """``/etc/default/prometheus-node-exporter`` (Debian's unit runs ``prometheus-node-exporter $ARGS``)."""
    return ("# written by vlmfleet (deploys/monitoring.py): node_exporter_port\n"
            f'ARGS="--web.listen-address=:{port}"\n')


def prometheus_defaults(port: int, retention: str) -> str:
    """``/etc/default/prometheus`` (Debian's unit runs ``prometheus $ARGS``; its reload sends SIGHUP)."""
    return ("# written by vlmfleet (deploys/monitoring.py): prometheus_port, prometheus_retention\n"
            f'ARGS="--web.listen-address=:{port} --storage.tsdb.retention.time={retention}"\n')


def dcgm_unit(image: str, port: int, name: str = "vlmfleet-dcgm-exporter") -> str:
    """The DCGM exporter's systemd unit: its container with every GPU, metrics on ``port``.

    + image: e.g. ``nvcr.io/nvidia/k8s/dcgm-exporter:4.4.2-4.7.1-ubuntu22.04``
    """
    from .paths import render

    return render("monitoring/dcgm-exporter.service.j2", marker=DCGM_MARKER, name=name, port=port, image=image)


def grafana_repo_line(url: str, key: str) -> str:
    """``deb [signed-by=/etc/apt/keyrings/grafana.asc] https://apt.grafana.com stable main``."""
    return f"deb [signed-by={key}] {url.rstrip('/')} stable main\n"


__all__ = ["RENAMED", "Target", "Thresholds", "Alert", "Panel", "metric", "metric_name", "fleet_versions",
           "targets", "prometheus_config", "alerts", "alert_rules", "alert_tests", "panels", "dashboard",
           "dashboard_json", "dashboard_queries", "dashboard_rules", "promql_of", "grafana_datasource",
           "grafana_dashboards_provider"]
