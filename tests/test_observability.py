"""Prometheus rules (checked and unit-tested by promtool), the example config, the Grafana dashboard,
and the exporter's documented metric table, all against the metrics the exporter really exports."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import executors.metrics
from executors.metrics import ClusterMetrics
from tests.prometheus_server import binary

OPS = Path(__file__).resolve().parent.parent / "ops"
RULES = OPS / "prometheus" / "rules.yml"
DASHBOARD = OPS / "grafana" / "autotune-dashboard.json"


def promtool(*args: str, cwd: Path = OPS / "prometheus") -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Usage:
    cpu_s: float
    rss_bytes: int


def exported_families() -> dict:
    """Every metric family of an exporter after one call of each ``observe_*`` method."""
    m = ClusterMetrics()
    m.observe_submitted("shop", "order_processing")
    m.observe_started("shop", "order_processing")
    for outcome in ("succeeded", "failed", "retrying", "lost", "timed_out"):
        m.observe_outcome("shop", "order_processing", outcome, 1.0)
    m.observe_busy(1.0)
    m.observe_backlog("shop", (1, 2, 3))
    m.observe_retrying("shop", 1)
    m.observe_in_flight("shop", 1)
    m.observe_interval(1.0, serving_slots=4, warming_slots=0, target_slots=4)
    m.observe_breaker("payment", "closed")
    m.observe_process()
    m.observe_executors({"shop-0": Usage(1.0, 1000)})
    m.observe_decision("ppo", "policy", "", wanted=4, applied=4, fallback=False)
    text = generate_latest(m.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def exported_series_names() -> set[str]:
    return {s.name for f in exported_families().values() for s in f.samples}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


PROMQL_FUNCTIONS_AND_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric (or recorded series) names a PromQL expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_FUNCTIONS_AND_KEYWORDS:
            names.add(m.group(1))
    return names


def test_metric_names_parser():
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(foo_bucket{a="x"}[5m])))') == {"foo_bucket"}
    assert metric_names("sum(a_total) + (sum(b) or vector(0)) > 1e3") == {"a_total", "b"}
    assert metric_names("rate(x_total[$__rate_interval]) / on (job) group_left up") == {"x_total", "up"}
    assert metric_names("autotune:success_rate:ratio_rate5m < 0.995") == {"autotune:success_rate:ratio_rate5m"}


# -- Prometheus rules --------------------------------------------------------------------------------
def test_promtool_checks_the_rules_and_the_example_config():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_rule(tmp_path):
    """The check above can fail: the same rules with one PromQL typo do not pass."""
    broken = tmp_path / "rules.yml"
    broken.write_text(RULES.read_text().replace("histogram_quantile(0.90,", "histogram_quantile(0.90,,", 1))
    result = promtool("check", "rules", str(broken))
    assert result.returncode != 0


def test_promtool_unit_tests_make_every_alert_fire_and_not_fire():
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load((OPS / "prometheus" / "rules_test.yml").read_text())["tests"]
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {
        "AutotuneSuccessRateLow",
        "AutotuneProcessingTimeHigh",
        "AutotuneBacklogHigh",
        "AutotuneTunerFallbackActive",
    }
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for alert in alerts:
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), f"{alert} never fires"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), f"{alert} always fires"
    for rule in (
        "success_rate:ratio_rate5m",
        "processing_seconds:mean5m",
        "processing_seconds:p90_5m",
        "processing_seconds:p99_5m",
        "backlog_tasks:sum",
    ):
        assert any(f"autotune:{rule}" in c["expr"] for t in tests for c in t.get("promql_expr_test", [])), rule


def test_rules_select_only_exported_metrics():
    known = exported_series_names() | recorded_names()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        names = metric_names(rule["expr"])
        assert names, rule
        assert names <= known, f"{rule.get('record') or rule.get('alert')}: {sorted(names - known)} not exported"


# -- Grafana ----------------------------------------------------------------------------------------
def dashboard_panels() -> list[dict]:
    dash = json.loads(DASHBOARD.read_text())
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_dashboard_is_valid_and_templated_on_its_datasource():
    dash = json.loads(DASHBOARD.read_text())
    [var] = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard_panels():
        assert p["datasource"]["uid"] == f"${{{var['name']}}}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == f"${{{var['name']}}}", p["title"]


def test_dashboard_has_the_reference_panels():
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for words in (
        "backlog by priority",
        "executor cpu",
        "executor memory",
        "success rate",
        "p90",
        "p99",
        "tuner decisions",
        "fallback",
    ):
        assert words in titles, f"no panel about {words!r} in: {titles}"
    by_title = {p["title"]: p for p in dashboard_panels()}
    success = next(p for t, p in by_title.items() if "Success rate" in t)
    assert {"value": 0.995, "color": "green"} in success["fieldConfig"]["defaults"]["thresholds"]["steps"]
    latency = next(p for t, p in by_title.items() if "P90, P99" in t)
    assert {"value": 5, "color": "red"} in latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    exprs = " ".join(t["expr"] for t in latency["targets"])
    assert "p90_5m" in exprs and "p99_5m" in exprs


def test_dashboard_queries_only_exported_metrics_and_recorded_rules():
    known = exported_series_names() | recorded_names()
    for p in dashboard_panels():
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, (p["title"], t["expr"])
            assert names <= known, f"panel {p['title']!r}: {sorted(names - known)} not exported nor recorded"


# -- the documented metric table -----------------------------------------------------------------------
TYPE_OF = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}


def test_metric_table_documents_every_exported_metric_with_its_type():
    table = {}
    for line in executors.metrics.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`autotune_"):
            for name in re.findall(r"`(autotune_\w+)`", cells[0]):
                table[name] = cells[1]
    exported = {}
    for family in exported_families().values():
        if family.name.endswith("_created"):  # prometheus_client's creation time of each counter/histogram
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family.type
    assert set(table) == set(exported), (sorted(set(exported) - set(table)), sorted(set(table) - set(exported)))
    for name, kind in exported.items():
        assert table[name] == kind, f"{name}: documented as {table[name]}, exported as {kind}"
