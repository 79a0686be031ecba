"""The gap the planner reports never understates the true one: on small geo-distributed DAGs
(fan-out, join, shared LoRA bases, explicit profiles, capped uplinks) and small chains, the bound
it claims, cost x (1 - gap), is checked against the optimum of an independent exact solve
(tests/planner/planner_ref_milp.py), for both methods and for time limits that cut the search
short. "optimal" means the gap target is met, and "time_limit" that the time was used."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pulp
import pytest

from atoll.planner.api import PlanOptions, plan
from planner_gen import random_problem
from planner_ref import brute_force
import planner_ref_milp as reference

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("planner_cases", REPO / "bench" / "planner_cases.py")
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

TARGET = 0.01


def check(pb, optimum: float, method: str, time_limit: float):
    p = plan(pb, options=PlanOptions(method=method, time_limit=time_limit, gap=TARGET))
    tol = 1e-6 * max(1.0, optimum)
    assert p.total_cost_per_hour >= optimum - tol
    if p.gap is not None:
        assert p.total_cost_per_hour * (1 - p.gap) <= optimum + tol, (method, time_limit, p.gap)
    if p.status == "optimal":
        assert p.gap is not None and p.gap <= TARGET + 1e-9
    elif p.status == "time_limit":
        assert p.solve_seconds >= 0.9 * time_limit, (method, time_limit, p.solve_seconds)
    return p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dag_gaps_are_honest_against_an_independent_exact_solve(seed):
    pb = cases.dag_problem(60, seed, 0.05)
    assert any(t for t in pb.tasks if len(t.parents) == 3) and any(v.profile for t in pb.tasks for v in t.variants)
    ref = reference.solve(pb, time_limit=120, gap=1e-9)
    assert ref.status == "optimal"
    for method in ("exact", "decompose"):
        for time_limit in (0.3, 2.0):
            check(pb, ref.cost, method, time_limit)


def test_chain_gaps_are_honest_on_a_ten_node_fleet():
    pb = cases.scaling_problem(10, 5, 4, 6, seed=0)
    ref = reference.solve(pb, time_limit=120, gap=1e-9)
    assert ref.status == "optimal"
    for method in ("exact", "decompose"):
        check(pb, ref.cost, method, 1.0)


def test_reference_path_rows_tighten_its_relaxation():
    """The rows sum ln(acc) >= ln(min_accuracy) along each path of default profiles raise the
    reference's LP bound (its exactness with them is checked against exhaustive search below)."""
    pb = cases.scaling_problem(100, 10, 4, 6, seed=0)
    assert len(reference._default_paths(pb)) == 1
    lp = {}
    for rows in (False, True):
        prob, _ = reference.build(pb, path_rows=rows)
        prob.solve(pulp.HiGHS(msg=False, mip=False))
        lp[rows] = pulp.value(prob.objective)
    assert lp[True] > 2 * lp[False]


def test_reference_agrees_with_exhaustive_search():
    """The reference is exact where exhaustive search can check it (profile-model instances of
    the random family: joins, fan-outs, adapters that do not all fit, caps, up-only data)."""
    checked = 0
    for seed in range(80):
        pb = random_problem(random.Random(seed))
        if pb.accuracy_model != "profile":
            continue
        r, bf = reference.solve(pb, time_limit=30, gap=1e-9), brute_force(pb)
        if bf is None:
            assert r.status in ("infeasible", "no_solution"), seed
        else:
            assert r.status == "optimal" and r.cost == pytest.approx(bf, rel=1e-6, abs=1e-9), seed
            checked += 1
    assert checked >= 25
