"""Specs: YAML round trips, errors naming file + field path + fix, and the `atoll plan` verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from atoll.cli.main import main
from atoll.core.errors import SpecError
from atoll.planner.api import problem_from_specs
from atoll.specs.catalog import Catalog
from atoll.specs.cluster import ClusterSpec, load_cluster
from atoll.specs.common import parse_obj
from atoll.specs.workflow import WorkflowSpec, load_workflow

EX = Path(__file__).resolve().parents[2] / "examples" / "planner"
WF, CL = EX / "workflow.yaml", EX / "cluster.yaml"


def write(tmp_path, name, data) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return p


def wf_dict(**overrides) -> dict:
    d = yaml.safe_load(WF.read_text())
    d.update(overrides)
    return d


def test_round_trips():
    wf, _ = load_workflow(WF)
    assert parse_obj(WorkflowSpec, yaml.safe_load(wf.to_yaml())) == wf
    cl = load_cluster(CL)
    assert parse_obj(ClusterSpec, yaml.safe_load(cl.to_yaml())) == cl
    cat = Catalog.model_validate({"variants": [{"name": "a", "accuracy": 0.9, "throughput": {"x": 3},
                                                "profile": [[1, 0.9], [0, 0.1], [0.5, 0.7]]}]})
    again = parse_obj(Catalog, yaml.safe_load(cat.to_yaml()))
    assert again == cat and again.variants[0].profile[0] == (0.0, 0.1)


def test_catalog_reference(tmp_path):
    cat = {"variants": [{"name": "resnet50", "accuracy": 0.93, "throughput": {"a10g": 800}}]}
    write(tmp_path, "cat.yaml", cat)
    d = wf_dict(catalog="cat.yaml")
    d["tasks"][1]["variants"] = ["resnet50"]
    p = write(tmp_path, "wf.yaml", d)
    wf, catalog = load_workflow(p)
    pb = problem_from_specs(wf, load_cluster(CL), catalog)
    assert [v.name for v in pb.task("classify").variants] == ["resnet50"]
    d["tasks"][1]["variants"] = ["resnet51"]
    p = write(tmp_path, "wf.yaml", d)
    with pytest.raises(SpecError) as e:
        load_workflow(p)
    assert e.value.source == str(p) and e.value.path == "tasks[1].variants[0]"
    assert "unknown variant 'resnet51'" in str(e.value) and "resnet50" in str(e.value)


@pytest.mark.parametrize("mutate, path, words", [
    (lambda d: d["edges"].append({"from": "classify", "to": "detect"}), "edges", "cycle"),
    (lambda d: d["edges"].append({"from": "detect", "to": "nowhere"}), "edges[2].to", "edge to nowhere"),
    (lambda d: d["sources"][0].update(rate=-5), "sources[0].rate", "greater than or equal to"),
    (lambda d: d["tasks"][0]["variants"].append("ghost"), "tasks[0].variants[3]", "no catalog"),
    (lambda d: d["tasks"][0]["variants"][0].update(profile=[[0, 0.5], [0.5, 0.6], [1, 0.95]]),
     "tasks[0].variants[0]", "concave"),
    (lambda d: d["edges"][1].update(sizes=[{"from_variant": "yolov9", "size_kb": 3}]),
     "edges[1].sizes[0].from_variant", "unknown variant"),
    (lambda d: d["tasks"][1].update(variantz=[]), "tasks[1].variantz", "unknown field"),
])
def test_bad_workflows_name_file_path_and_fix(tmp_path, mutate, path, words):
    d = wf_dict()
    mutate(d)
    p = write(tmp_path, "wf.yaml", d)
    with pytest.raises(SpecError) as e:
        load_workflow(p)
    msg = str(e.value)
    assert str(p) in msg and words in msg, msg
    assert (e.value.path or "").startswith(path) or path in msg, msg


def test_no_profile_for_any_hardware_class(tmp_path):
    wf, _ = load_workflow(WF)
    cl = {"pools": [{"name": "tpu", "hardware": "tpu-v5e", "tier": "datacenter", "region": "us-east",
                     "price_per_hour": 1.2, "count": 4}]}
    cp = write(tmp_path, "cl.yaml", cl)
    with pytest.raises(SpecError) as e:
        problem_from_specs(wf, load_cluster(cp), workflow_source=str(WF), cluster_source=str(cp))
    assert e.value.path == "tasks[0].variants" and "tpu-v5e" in str(e.value) and str(WF) in str(e.value)


def test_bad_cluster(tmp_path):
    p = write(tmp_path, "cl.yaml", {"pools": [{"name": "a", "hardware": "x", "tier": "cloud",
                                               "region": "r", "price_per_hour": 1, "count": 0}]})
    with pytest.raises(SpecError) as e:
        load_cluster(p)
    assert "pools[0].tier" in str(e.value) and "pools[0].count" in str(e.value)
    p = write(tmp_path, "cl2.yaml", {"nodes": [{"name": "a", "hardware": "x", "tier": "edge", "region": "r",
                                                "price_per_hour": 1}],
                                     "links": [{"from": "r/moon", "to": "r", "price_per_gb": 0.1}]})
    with pytest.raises(SpecError) as e:
        load_cluster(p)
    assert "links[0].from" in str(e.value) and "moon" in str(e.value)


def test_cli_table_and_json(capsys):
    assert main(["plan", "--workflow", str(WF), "--cluster", str(CL)]) == 0
    out = capsys.readouterr().out
    assert "detect" in out and "classify" in out and "total $" in out
    assert main(["plan", "--workflow", str(WF), "--cluster", str(CL), "--output", "json",
                 "--planner", "jellybean"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("status", "total_cost_per_hour", "compute_cost_per_hour", "transfer_cost_per_hour",
              "accuracy", "solve_seconds", "gap"):
        assert k in d
    assert set(d["tasks"]) == {"detect", "classify"} and all(t["replicas"] for t in d["tasks"].values())


def test_cli_explain_and_bad_input(tmp_path, capsys):
    assert main(["plan", "--workflow", str(WF), "--cluster", str(CL), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "binding constraints" in out and "accuracy SLO" in out
    bad = write(tmp_path, "wf.yaml", "tasks: [")
    assert main(["plan", "--workflow", str(bad), "--cluster", str(CL)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    d = wf_dict()
    d["slo"]["min_accuracy"] = 0.99
    p = write(tmp_path, "wf2.yaml", d)
    assert main(["plan", "--workflow", str(p), "--cluster", str(CL)]) == 2
    err = capsys.readouterr().err
    assert "accuracy 0.990 asked, at most" in err


def test_cli_lists_every_planner():
    from atoll.cli.cmd_plan import PLANNER_NAMES
    from atoll.planner.api import PLANNERS
    assert set(PLANNER_NAMES) == set(PLANNERS)
