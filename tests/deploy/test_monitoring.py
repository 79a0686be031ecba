"""Alert rules (promtool check/test rules), the Prometheus config, the Grafana dashboard, and
that every metric they name is one atoll exports."""

from __future__ import annotations

import re

import pytest
import yaml

from .deploy_helpers import (ALERTS, ALERTS_TEST, PROMETHEUS_CONFIG, alert_exprs, alert_rules,
                                         as_promql, dashboard, dashboard_exprs, dashboard_panels, exported_series,
                                         grepped_families, instantiated_families, metrics_in, run, tool,
                                         unknown_metrics)


@pytest.fixture(scope="module")
def known() -> set[str]:
    return exported_series()


# --- promtool ------------------------------------------------------------------------------

def test_promtool_check_rules():
    res = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert res.returncode == 0, f"promtool check rules failed:\n{res.stdout}{res.stderr}"


def test_promtool_test_rules():
    res = run([tool("promtool"), "test", "rules", str(ALERTS_TEST)])
    assert res.returncode == 0, f"promtool test rules failed:\n{res.stdout}{res.stderr}"


def test_promtool_check_config():
    res = run([tool("promtool"), "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)])
    assert res.returncode == 0, f"promtool check config failed:\n{res.stdout}{res.stderr}"


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check above can fail: promtool refuses a rule with a PromQL syntax error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(atoll_x[5m])\n")
    res = run([tool("promtool"), "check", "rules", str(bad)])
    assert res.returncode != 0


def test_every_alert_is_unit_tested_firing_and_not_firing():
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    firing, quiet = set(), set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert not set(names) - firing, f"alerts never shown firing in {ALERTS_TEST.name}: {sorted(set(names) - firing)}"
    assert not set(names) - quiet, f"alerts never shown quiet in {ALERTS_TEST.name}: {sorted(set(names) - quiet)}"
    ghosts = (firing | quiet) - set(names)
    assert not ghosts, f"tests of alerts that do not exist: {sorted(ghosts)}"


def test_alerts_have_severity_summary_and_description():
    for r in alert_rules():
        assert r.get("labels", {}).get("severity") in ("critical", "warning", "info"), r["alert"]
        assert r.get("annotations", {}).get("summary"), r["alert"]
        assert r.get("annotations", {}).get("description"), r["alert"]
        assert re.fullmatch(r"Atoll[A-Za-z]+", r["alert"]), r["alert"]


# --- metric names ----------------------------------------------------------------------------

def test_metric_sources_agree():
    """The classes instantiated for exact types are the metrics the source declares."""
    typed = instantiated_families()
    assert len(typed) >= 25, sorted(typed)
    assert set(typed) <= grepped_families(), sorted(set(typed) - grepped_families())
    for name in ("atoll_nodes", "atoll_heartbeats_received", "atoll_workflow_request_seconds",
                 "atoll_kv_cache_usage_ratio", "atoll_time_to_first_token_seconds"):
        assert name in typed


def test_alerts_name_only_exported_metrics(known):
    bad = unknown_metrics(alert_exprs(), known)
    assert not bad, f"alert rules name metrics atoll does not export: {bad}"


def test_dashboard_names_only_exported_metrics(known):
    bad = unknown_metrics(dashboard_exprs(), known)
    assert not bad, f"dashboard queries name metrics atoll does not export: {bad}"


def test_metric_check_catches_unknown_names(known):
    """The two checks above can fail: a made-up name, and a counter without its _total."""
    bad = unknown_metrics({"a": "rate(atoll_made_up_total[5m])", "b": "rate(atoll_heartbeats_received[5m])",
                           "c": "atoll_nodes", "d": "atoll_heartbeat_delay_seconds_bucket"}, known)
    assert bad == {"a": ["atoll_made_up_total"], "b": ["atoll_heartbeats_received"]}


def test_dashboard_shows_every_metric_family():
    used = set().union(*(metrics_in(e) for e in dashboard_exprs().values()))
    missing = [name for name, kind in instantiated_families().items()
               if not any(u == name or u.startswith(name + "_") for u in used)]
    assert not missing, f"metric families with no dashboard panel: {missing}"


# --- dashboard -------------------------------------------------------------------------------

def test_dashboard_queries_parse(tmp_path):
    """Every dashboard query is valid PromQL: promtool parses them as recording rules."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(e)} for i, e in enumerate(exprs.values())]
    assert not any("$" in r["expr"] for r in rules), [r for r in rules if "$" in r["expr"]]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    res = run([tool("promtool"), "check", "rules", str(path)])
    assert res.returncode == 0, f"dashboard queries do not parse:\n{res.stdout}{res.stderr}\n" + \
        "\n".join(f"{i}: {w}" for i, w in enumerate(exprs))


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] == "atoll-overview" and d["title"]
    panels = dashboard_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "workflow"} <= variables
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]
    # panels do not overlap
    cells = set()
    for p in panels:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
