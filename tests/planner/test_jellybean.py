"""The jellybean baseline follows JellyBean's optimizer: it reproduces the paper's published plan
on its public VQA example, applies the paper's placement rules, and never claims a plan
cheaper than the exact optimum."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from atoll.core.errors import PlanInfeasible
from atoll.planner.api import (PLANNERS, Edge, PlanOptions, PlanProblem, Pool, Source, Task, Variant, plan,
                               problem_from_specs)
from atoll.planner.baselines import unit_cost
from atoll.planner.jellybean import jellybean_plan, select_variants
from atoll.specs.cluster import load_cluster
from atoll.specs.node import TIER_RANK
from atoll.specs.workflow import load_workflow
from planner_gen import random_problem
from planner_ref import brute_force

VQA = Path(__file__).resolve().parents[2] / "examples" / "planner" / "jellybean-vqa"

# JellyBean's README (github.com/libertyeagle/JellyBean), output of its optimizer on these inputs
PUBLISHED = {"compute": 6.242, "transfer": 1.2667783071018048,
             "workers": {"extract-image-feature": {"cpu-1", "cpu-2", "cpu-5"},
                         "speech-recognition": {"gpu-1", "cpu-3"}, "vqa": {"cpu-6"}},
             "variants": {"extract-image-feature": "resnet18",
                          "speech-recognition": "wav2vec2-large-960h-lv60-self", "vqa": "vqa-default"}}


def vqa() -> PlanProblem:
    wf, catalog = load_workflow(VQA / "workflow.yaml")
    return problem_from_specs(wf, load_cluster(VQA / "cluster.yaml"), catalog)


def test_reproduces_the_published_vqa_plan():
    p = jellybean_plan(vqa())
    assert p.variants == PUBLISHED["variants"]
    assert p.compute_cost_per_hour == pytest.approx(PUBLISHED["compute"], abs=1e-9)
    # the example's throughputs and sizes carry 6 significant digits
    assert p.transfer_cost_per_hour == pytest.approx(PUBLISHED["transfer"], abs=2e-4)
    assert round(p.total_cost_per_hour, 3) == 7.509
    assert {t: {r.pool for r in p.replicas if r.task == t} for t in p.variants} == PUBLISHED["workers"]


def test_milp_beats_jellybean_on_vqa():
    pb = vqa()
    jb = jellybean_plan(pb).total_cost_per_hour
    up = plan(pb, options=PlanOptions(data_up_only=True, gap=1e-9)).total_cost_per_hour
    free = plan(pb, options=PlanOptions(gap=1e-9)).total_cost_per_hour
    assert up <= jb + 1e-9 and free < up


def _two_tier(rate: float, pools, network=None) -> PlanProblem:
    v = Variant("m", 0.9, {p.hardware: mu for p, mu in pools})
    kw = {} if network is None else {"network": network}
    return PlanProblem(name="rules", sources=(Source("s", rate, ("r", "edge")),),
                       tasks=(Task("t", rate, (v,), ("s",)),), edges=(Edge("s", "t", rate, 1.0),),
                       pools=tuple(p for p, _ in pools), **kw)


def test_a_node_that_carries_the_whole_rate_is_ranked_by_price_not_price_per_request():
    """VQA's last step: a $2.305 CPU worker, not a $2.497 GPU three times as fast."""
    cpu = Pool("cpu", "cpu", "datacenter", "r", 2.305, 1)
    gpu = Pool("gpu", "gpu", "datacenter", "r", 2.497, 1)
    p = jellybean_plan(_two_tier(40.0, [(cpu, 90.0), (gpu, 218.0)]))
    assert [r.pool for r in p.replicas] == ["cpu"]


def test_the_lowest_tier_is_used_first_even_when_a_higher_one_is_cheaper():
    edge = Pool("edge", "orin", "edge", "r", 1.0, 1)
    dc = Pool("dc", "a100", "datacenter", "r", 0.8, 1)
    pb = _two_tier(10.0, [(edge, 12.0), (dc, 100.0)])
    assert [r.pool for r in jellybean_plan(pb).replicas] == ["edge"]
    assert [r.pool for r in plan(pb).replicas] == ["dc"]


def test_the_remainder_goes_to_the_cheapest_node_that_carries_it_alone():
    """Nodes by $ per req/s (a, then b) until one node can carry what is left: then the
    cheapest such node (d), though c is cheaper per req/s."""
    pools = [(Pool("a", "a", "edge", "r", 0.10, 1), 10.0), (Pool("b", "b", "edge", "r", 0.25, 1), 20.0),
             (Pool("c", "c", "edge", "r", 0.40, 1), 30.0), (Pool("d", "d", "edge", "r", 0.35, 1), 21.0)]
    p = jellybean_plan(_two_tier(50.0, pools))
    assert sorted(r.pool for r in p.replicas) == ["a", "b", "d"]


def test_variant_beam_is_the_cheapest_feasible_choice_on_small_instances():
    """With at most 27 choices the beam (width 10) keeps the cheapest feasible one first; its cost
    of a variant is the least compute $/h serving the task's rate, as in the module docstring."""
    checked = 0
    for seed in range(300):
        pb = random_problem(random.Random(seed))
        pools = [q for q in pb.pools if pb.pool_allowed(q)]
        cost = {(t.name, m.name): t.rate * unit_cost(pb, m, pools) for t in pb.tasks for m in t.variants}
        combos = [dict(zip([t.name for t in pb.tasks], c))
                  for c in itertools.product(*[[m.name for m in t.variants] for t in pb.tasks])]
        ok = [c for c in combos if pb.accuracy_ok(c) and all(math.isfinite(cost[k]) for k in c.items())]
        got = select_variants(pb, pools)
        if not ok:
            assert got == []
            continue
        assert got and all(pb.accuracy_ok(c) for c in got)
        best = min(sum(cost[k] for k in c.items()) for c in ok)
        assert sum(cost[k] for k in got[0].items()) == pytest.approx(best, rel=1e-9, abs=1e-12)
        checked += 1
    assert checked >= 100


def test_plans_are_valid_and_never_below_the_exact_optimum():
    """On the random family checked against exhaustive search: every jellybean plan meets the
    accuracy SLO, moves data up the tiers only, and costs at least the exact optimum."""
    found = 0
    for seed in range(120):
        pb = random_problem(random.Random(seed))
        try:
            p = PLANNERS["jellybean"](pb)
        except PlanInfeasible:
            continue
        found += 1
        assert pb.accuracy_ok(p.variants), seed
        for r in p.routes:
            a, b = r.from_location.split("/")[1], r.to_location.split("/")[1]
            assert TIER_RANK[b] >= TIER_RANK[a], (seed, r)
        best = brute_force(pb)
        assert best is not None and p.total_cost_per_hour >= best - 1e-6 * max(1.0, best), seed
    assert found >= 30
