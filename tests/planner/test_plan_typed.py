"""The Plan stays typed: it round-trips through its dict form, and plans for shares of the load
merge into one."""

from __future__ import annotations

from atoll.planner.api import PlanOptions, SLOInfeasible, plan
from atoll.planner.plan import Plan
import random

from planner_gen import random_problem as _random_problem


def random_problem(seed: int):
    return _random_problem(random.Random(seed))


def feasible_plans(n: int):
    out = []
    for seed in range(60):
        try:
            out.append(plan(random_problem(seed), options=PlanOptions(time_limit=5)))
        except SLOInfeasible:
            continue
        if len(out) == n:
            return out
    raise AssertionError("the generator gave too few feasible problems")


def test_plan_round_trips_through_its_dict():
    for p in feasible_plans(6):
        back = Plan.from_dict(p.to_dict())
        assert back.to_dict() == p.to_dict()
        assert back.host_counts() == p.host_counts()
        assert back.variants == p.variants


def test_merge_adds_costs_and_keeps_every_host():
    a, b = feasible_plans(2)
    m = Plan.merge([a, b])
    assert abs(m.total_cost_per_hour - (a.total_cost_per_hour + b.total_cost_per_hour)) < 1e-9
    assert m.accuracy == min(a.accuracy, b.accuracy)
    assert m.hosts == a.hosts + b.hosts and m.routes == a.routes + b.routes
    assert m.nodes_used() == a.nodes_used() + b.nodes_used()
    assert m.variants == a.variants
    assert Plan.merge([a, b], variants=b.variants).variants == b.variants
    worse = Plan.merge([a, Plan.from_dict({**b.to_dict(), "status": "fallback", "gap": None})])
    assert worse.status == "fallback" and worse.gap is None
