"""`atoll plan --previous PLAN.json`: re-planning from the command line against the JSON that
`atoll plan --output json` wrote."""

from __future__ import annotations

import json

import pytest
import yaml

from atoll.cli.main import main
from atoll.planner.api import Plan, PlanOptions, plan, problem_from_specs
from atoll.specs.cluster import load_cluster
from atoll.specs.workflow import load_workflow

WORKFLOW = {"name": "one-step",
            "sources": [{"name": "cams", "rate": 100, "region": "r", "tier": "edge"}],
            "tasks": [{"name": "detect", "variants": [
                {"name": "m", "accuracy": 0.9, "throughput": {"gpu-a": 60, "gpu-b": 60}}]}],
            "edges": [{"from": "cams", "to": "detect", "size_kb": 1}]}


def cluster(price_a: float) -> dict:
    return {"pools": [
        {"name": "a", "hardware": "gpu-a", "tier": "datacenter", "region": "r", "price_per_hour": price_a, "count": 2},
        {"name": "b", "hardware": "gpu-b", "tier": "datacenter", "region": "r", "price_per_hour": 1.05, "count": 2}]}


@pytest.fixture
def files(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(WORKFLOW))
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(yaml.safe_dump(cluster(1.00)))
    after.write_text(yaml.safe_dump(cluster(1.10)))          # pool b is now the cheaper one
    return wf, before, after, tmp_path


def run_json(capsys, *args) -> dict:
    assert main(["plan", *map(str, args), "--output", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def pools_of(d: dict) -> dict:
    return {h["pool"]: h["count"] for h in d["hosts"]}


def test_previous_plan_keeps_replicas_unless_moving_pays(files, capsys):
    wf, before, after, tmp = files
    p0 = run_json(capsys, "--workflow", wf, "--cluster", before)
    assert pools_of(p0) == {"a": 2}
    prev = tmp / "plan.json"
    prev.write_text(json.dumps(p0))

    fresh = run_json(capsys, "--workflow", wf, "--cluster", after)
    assert pools_of(fresh) == {"b": 2}
    kept = run_json(capsys, "--workflow", wf, "--cluster", after, "--previous", prev)
    assert pools_of(kept) == {"a": 2} and kept["moved_replicas"] == 0   # 4 moves x $0.25 > $0.10 saved
    moved = run_json(capsys, "--workflow", wf, "--cluster", after, "--previous", prev, "--churn-penalty", 0)
    assert pools_of(moved) == {"b": 2} and moved["moved_replicas"] == 4

    # the same as the Python API given the typed plan back
    w, catalog = load_workflow(wf)
    problem = problem_from_specs(w, load_cluster(after), catalog)
    api = plan(problem, previous=Plan.from_dict(p0), options=PlanOptions())
    assert api.host_counts() == Plan.from_dict(kept).host_counts()

    assert main(["plan", "--workflow", str(wf), "--cluster", str(after), "--previous", str(prev)]) == 0
    assert f"moved 0 replicas against {prev}" in capsys.readouterr().out


def test_previous_plan_errors_name_the_flag(files, capsys):
    wf, _before, after, tmp = files
    cases = {"missing.json": None, "broken.json": "{", "other.json": json.dumps({"hosts": 3})}
    for name, text in cases.items():
        path = tmp / name
        if text is not None:
            path.write_text(text)
        assert main(["plan", "--workflow", str(wf), "--cluster", str(after), "--previous", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"flag --previous {path}" in err and "atoll plan --output json" in err
    assert main(["plan", "--workflow", str(wf), "--cluster", str(after), "--churn-penalty", "1"]) == 2
    assert "--churn-penalty" in capsys.readouterr().err
