"""Planner behaviour: purity, infeasibility reports, re-plan stability, LoRA packing, the
data-up-only rule, baselines, the time-limit fallback and the two-phase method."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest

from atoll.core.errors import PlanInfeasible
from atoll.planner.api import (PLANNERS, Edge, Network, PlanOptions, PlanProblem, Pool, Source, Task,
                           Variant, plan)
from planner_gen import random_problem
from planner_ref import brute_force

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("planner_cases", REPO / "bench" / "planner_cases.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def one_task(rate=400.0, count=5, min_acc=0.8, **overrides) -> PlanProblem:
    fast = Variant("fast", 0.7, {"gpu": 100.0})
    good = Variant("good", 0.9, {"gpu": 40.0})
    kw = dict(name="one", sources=(Source("s", rate, ("r", "edge")),),
              tasks=(Task("t", rate, (fast, good), ("s",)),), edges=(Edge("s", "t", rate, 10.0),),
              pools=(Pool("p", "gpu", "datacenter", "r", 1.0, count),), min_accuracy=min_acc)
    kw.update(overrides)
    return PlanProblem(**kw)


def test_plan_is_pure():
    pb = bench.vision(0.5)
    before = repr(pb)
    p0 = plan(pb)
    prev = repr(p0)
    plan(pb.scaled(1.05), previous=p0)
    for name, f in PLANNERS.items():
        try:
            f(pb)
        except PlanInfeasible:
            pass
    assert repr(pb) == before and repr(p0) == prev
    with pytest.raises(FrozenInstanceError):
        pb.tasks[0].rate = 1.0  # type: ignore[misc]


def test_throughput_infeasible_names_slo_and_reachable():
    with pytest.raises(PlanInfeasible) as e:
        plan(one_task())
    assert e.value.slo == "throughput" and e.value.asked == 400
    assert e.value.reachable == pytest.approx(200.0, rel=1e-6)
    assert str(e.value).startswith("throughput 400 req/s asked, at most 200 req/s reachable "
                                   "with accuracy >= 0.80 on the nodes given")


def test_accuracy_infeasible_names_best_accuracy():
    with pytest.raises(PlanInfeasible) as e:
        plan(one_task(rate=10, min_acc=0.95))
    assert e.value.slo == "accuracy" and e.value.reachable == pytest.approx(0.9)
    assert "accuracy 0.950 asked, at most 0.900 reachable" in str(e.value)


def test_reachable_throughput_matches_brute_force_bisection():
    checked = 0
    for seed in range(200):
        pb = random_problem(random.Random(seed))
        if brute_force(pb) is not None:
            continue
        try:
            plan(pb)
        except PlanInfeasible as e:
            if e.slo != "throughput" or not e.reachable:
                continue
            alpha = e.reachable / pb.total_source_rate
            assert brute_force(pb.scaled(alpha * 0.999)) is not None
            assert brute_force(pb.scaled(alpha * 1.01)) is None
            checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_replan_moves_few_replicas():
    for pb in (bench.vision(1.0), bench.rag(1.0)):
        p0 = plan(pb)
        p1 = plan(pb.scaled(1.05), previous=p0, options=PlanOptions(churn_penalty=0.5))
        assert p1.moved_replicas <= 4, (pb.name, p1.moved_replicas, p0.nodes_used())
        assert p1.total_cost_per_hour <= 1.10 * plan(pb.scaled(1.05)).total_cost_per_hour
        same = plan(pb, previous=p0)
        assert same.moved_replicas == 0


def _lora(mem_gb: float) -> PlanProblem:
    a = Variant("a-lora", 0.9, {"gpu": 10.0}, group="base@fp16", adapter="a", memory_gb=16, adapter_memory_gb=0.5)
    b = Variant("b-lora", 0.9, {"gpu": 10.0}, group="base@fp16", adapter="b", memory_gb=16, adapter_memory_gb=0.5)
    return PlanProblem(name="lora", sources=(Source("s", 4.0, ("r", "datacenter")),),
                       tasks=(Task("t0", 4.0, (a,), ("s",)), Task("t1", 4.0, (b,), ("t0",))),
                       edges=(Edge("s", "t0", 4.0, 1.0), Edge("t0", "t1", 4.0, 1.0)),
                       pools=(Pool("p", "gpu", "datacenter", "r", 1.0, 3, gpu_memory_gb=mem_gb),))


def test_lora_adapters_share_a_base_when_memory_allows():
    p = plan(_lora(24.0))
    assert p.compute_cost_per_hour == pytest.approx(1.0)
    assert len(p.hosts) == 1 and len(p.hosts[0].members) == 2
    assert all(r.shared_with for r in p.replicas)
    tight = plan(_lora(16.7))            # 16 + 0.5 + 0.5 > 16.7: one adapter per node
    assert tight.compute_cost_per_hour == pytest.approx(2.0)


def _downhill() -> PlanProblem:
    """A heavy detector only a datacenter GPU runs; a light step an edge box runs cheaply."""
    det = Variant("det", 0.95, {"a100": 100.0})
    light = Variant("light", 0.99, {"a100": 1000.0, "orin": 200.0})
    return PlanProblem(
        name="down", sources=(Source("cam", 150.0, ("r", "edge")),),
        tasks=(Task("detect", 150.0, (det,), ("cam",)), Task("post", 150.0, (light,), ("detect",))),
        edges=(Edge("cam", "detect", 150.0, 100.0), Edge("detect", "post", 150.0, 2.0)),
        pools=(Pool("dc", "a100", "datacenter", "r", 4.0, 4), Pool("edge", "orin", "edge", "r", 0.1, 2)),
        network=Network(links=((("r", "datacenter"), ("r", "edge"), 0.09, None),)))


def test_data_may_flow_down_when_it_pays_and_up_only_forbids_it():
    free = plan(_downhill())
    up = plan(_downhill(), options=PlanOptions(data_up_only=True))
    assert any(r.task == "post" and r.pool == "edge" for r in free.replicas)
    assert all(r.pool == "dc" for r in up.replicas)
    assert free.total_cost_per_hour < up.total_cost_per_hour
    assert plan(replace(_downhill(), data_up_only=True)).total_cost_per_hour == pytest.approx(up.total_cost_per_hour)
    jb = PLANNERS["jellybean"](_downhill())
    assert jb.total_cost_per_hour >= free.total_cost_per_hour - 1e-9


@pytest.mark.parametrize("family, scale", [("vision", 0.5), ("vision", 1.0), ("rag", 0.5), ("rag", 1.0),
                                           ("fleet", 0.1)])
def test_milp_never_worse_than_baselines(family, scale):
    pb = bench.SCENARIOS[family](scale)
    best = plan(pb, options=PlanOptions(gap=1e-3, time_limit=8))
    others = 0
    for name, f in PLANNERS.items():
        if name == "milp":
            continue
        try:
            p = f(pb)
        except PlanInfeasible:
            continue
        others += 1
        assert pb.accuracy_ok(p.variants), name
        assert best.total_cost_per_hour <= p.total_cost_per_hour * (1 + (best.gap or 0)) + 1e-6, name
    assert others >= 1


def test_time_limit_falls_back_to_greedy():
    pb = bench.scaling_problem(2000, 40, 6, 6, seed=3)
    p = plan(pb, options=PlanOptions(time_limit=0.01, method="exact"))
    assert p.status in ("fallback", "time_limit")
    if p.status == "fallback":
        assert any("greedy fallback" in n for n in p.notes)
    assert pb.accuracy_ok(p.variants)
    with pytest.raises(PlanInfeasible) as e:
        plan(pb, options=PlanOptions(time_limit=0.01, method="exact", fallback=False))
    assert e.value.slo == "time_limit"


def test_two_phase_gap_is_a_true_bound():
    pb = bench.scaling_problem(300, 16, 3, 4, seed=1)
    exact = plan(pb, options=PlanOptions(method="exact", gap=1e-6, time_limit=60))
    two = plan(pb, options=PlanOptions(method="decompose", gap=1e-3, time_limit=30))
    assert two.total_cost_per_hour >= exact.total_cost_per_hour - 1e-6
    assert two.total_cost_per_hour * (1 - two.gap) <= exact.total_cost_per_hour + 1e-6
    assert "two-phase" in two.notes[0]


def test_pool_ids_map_back_to_nodes():
    pools = (Pool("grp-a", "gpu", "datacenter", "r", 1.0, 2, node_ids=("n1", "n2")),
             Pool("grp-b", "gpu", "datacenter", "r", 1.5, 2, node_ids=("n3", "n4")))
    pb = one_task(rate=150, pools=pools, min_acc=None)
    p = plan(pb)
    ids = {q.id for q in pb.pools}
    assert p.hosts and all(h.pool in ids for h in p.hosts)
    assert p.compute_cost_per_hour == pytest.approx(1.0 * 2)   # the cheaper group first
    assert p.to_dict()["tasks"]["t"]["replicas"][0]["pool"] == "grp-a"
    from atoll.planner.api import node_assignments
    nodes = node_assignments(p, pb)
    assert sorted(nodes) == ["n1", "n2"] and all(h.pool == "grp-a" for h in nodes.values())


def test_host_counts_serve_as_the_previous_plan():
    """The coordinator re-plans against HostCounts rebuilt from its live assignments; the
    planner treats them exactly like the Plan they came from."""
    from atoll.planner.api import HostCounts

    pb = bench.vision(1.0)
    p0 = plan(pb)
    opts = PlanOptions(churn_penalty=0.5)
    via_plan = plan(pb.scaled(1.05), previous=p0, options=opts)
    via_counts = plan(pb.scaled(1.05), previous=HostCounts(p0.host_counts()), options=opts)
    assert via_counts.host_counts() == via_plan.host_counts()
    assert via_counts.moved_replicas == via_plan.moved_replicas <= 4
    assert plan(pb, previous=HostCounts(p0.host_counts())).moved_replicas == 0
