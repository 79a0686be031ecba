"""The two-phase method's bounds (planner/decompose.py): the relaxation R, the exact search over
the accuracy set Z and the accuracy hull cuts must never cut off a feasible plan, so the lower
bound they report is at most the optimum, checked here against an exhaustive search and the
full MILP."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from atoll.core.errors import PlanInfeasible
from atoll.planner.api import PlanOptions, plan
from atoll.planner import decompose as D
from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.knapsack import least_cover_cost
from atoll.planner.milp import Model
from planner_gen import random_problem
from planner_ref import brute_force
from test_planner import bench


def _brute_min(groups, need, y):
    weight = {int(i): float(w) for idx, g in groups for i, w in zip(idx, g)}
    best = math.inf
    for combo in itertools.product(*[list(idx) for idx, _ in groups]):
        if sum(weight[int(i)] for i in combo) >= need:
            best = min(best, float(sum(y[int(i)] for i in combo)))
    return best, weight


@pytest.mark.parametrize("force_buckets", [False, True])
def test_accuracy_set_minimum_is_exact_or_below(force_buckets):
    """beta(y) <= min over Z of y.z (equal when exact); every choice returned is in Z."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        T, V = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        groups, n = [], 0
        for _t in range(T):
            groups.append((np.arange(n, n + V), np.log(rng.uniform(0.6, 1.0, V))))
            n += V
        lo = sum(float(g.min()) for _, g in groups)
        hi = sum(float(g.max()) for _, g in groups)
        need = lo + rng.uniform(-0.1, 1.1) * (hi - lo)      # sometimes no choice qualifies
        Z = AccuracySet(n, groups=groups, need=need, pareto_cap=0 if force_buckets else 20000)
        y = rng.normal(size=n) * float(rng.choice([1.0, 100.0]))
        best, weight = _brute_min(groups, Z.need, y)
        beta, found = Z.minimize(y, 3)
        if not math.isfinite(best):
            assert not found
            continue
        checked += 1
        assert beta <= best + 1e-9
        if not force_buckets:
            assert beta == pytest.approx(best, abs=1e-9)
        assert found
        for val, sel in found:
            assert sum(weight[i] for i in sel) >= Z.need
            assert val == pytest.approx(float(y[sel].sum()), abs=1e-9)
    assert checked > 150


def test_hull_bound_never_above_brute_force():
    """R's bound with the hull cuts, and the decomposed plan's proven gap, on the random family
    the MILP is checked against (chains, fan-outs, joins; profile, additive and table accuracy)."""
    with_hull, feasible = 0, 0
    for seed in range(120):
        pb = random_problem(random.Random(seed))
        ref = brute_force(pb)
        m = Model(pb, up_only=pb.data_up_only)
        if m.empty_tasks:
            continue
        R = D.relaxation(m)
        Z = AccuracySet.of(m)
        res = D.hull_phase(R, Z, 10.0)
        if ref is None:
            continue
        feasible += 1
        assert res.status == "ok", seed
        assert res.lower <= ref + 1e-6 * max(1.0, ref), (seed, res.lower, ref)
        if res.choice is not None:         # R with a choice fixed relaxes that choice's plans
            assert res.value >= res.lower - 1e-6
        with_hull += Z is not None and res.iterations > 0
        try:
            p = plan(pb, options=PlanOptions(method="decompose", gap=1e-6, time_limit=20))
        except PlanInfeasible:
            pytest.fail(f"seed {seed}: feasible ({ref}) but the two-phase method found no plan")
        assert p.total_cost_per_hour >= ref - 1e-6 * max(1.0, ref), seed
        if p.gap is not None:
            assert p.total_cost_per_hour * (1 - p.gap) <= ref + 1e-6 * max(1.0, ref), (seed, p.gap, ref)
    assert feasible >= 30 and with_hull >= 10, (feasible, with_hull)


def test_relaxation_keeps_node_counts_under_churn():
    """With a churn penalty a node count appears in the churn rows: it stays a column (its
    load alone would overprice keeping idle nodes), and the bound stays below the re-plan's cost."""
    pb = bench.scaling_problem(400, 12, 3, 4, seed=2)
    p0 = plan(pb, options=PlanOptions(method="exact", gap=1e-4, time_limit=30))
    m = Model(pb.scaled(1.05), previous=p0, churn_penalty=0.25)
    R = D.relaxation(m)
    plain = D.relaxation(Model(pb.scaled(1.05)))
    assert R.substituted == 0 < plain.substituted
    res = D.hull_phase(R, AccuracySet.of(m), 10.0)
    exact = plan(pb.scaled(1.05), previous=p0, options=PlanOptions(method="exact", gap=1e-4, time_limit=30))
    assert res.lower <= exact.total_cost_per_hour + 1e-6


@pytest.mark.parametrize("nodes, pools, tasks, variants, seed", [(600, 20, 6, 6, 1), (2000, 40, 8, 8, 3)])
def test_two_phase_within_its_gap_of_the_full_milp(nodes, pools, tasks, variants, seed):
    """Mid-size fleets: the decomposed plan's bound is below every plan the full MILP finds and
    its cost above the full MILP's proven bound."""
    pb = bench.scaling_problem(nodes, pools, tasks, variants, seed=seed)
    two = plan(pb, options=PlanOptions(method="decompose", gap=0.01, time_limit=5))
    full = plan(pb, options=PlanOptions(method="exact", gap=1e-3, time_limit=12))
    assert "hull bound" in two.notes[0]
    assert two.gap is not None
    assert two.total_cost_per_hour * (1 - two.gap) <= full.total_cost_per_hour + 1e-6
    assert full.total_cost_per_hour * (1 - full.gap) <= two.total_cost_per_hour + 1e-6


def test_enumerated_accuracy_set_is_exactly_the_feasible_choices():
    """Profile-model DAGs (explicit profiles, fan-outs, joins): the enumerated Z holds every
    choice of placeable variants that meets the SLO (within its tolerance), and no other."""
    checked = 0
    for seed in range(300):
        pb = random_problem(random.Random(seed))
        if pb.accuracy_model != "profile" or pb.min_accuracy is None:
            continue
        m = Model(pb)
        if m.empty_tasks:
            continue
        Z = AccuracySet.enumerated(m, 10 ** 6)
        zkeys = list(m.z)
        got = {tuple(sorted(zkeys[i] for i in row)) for row in Z.table}
        want = {tuple(sorted(c)) for c in itertools.product(*[[(t.name, v.name) for v in m.cand[t.name]]
                                                               for t in pb.tasks])
                if pb.accuracy_ok(dict(c), tol=1e-6)}
        assert got == want, seed
        checked += 1
    assert checked >= 100


def test_least_cover_cost_is_exact_or_below():
    rng = random.Random(5)
    for _ in range(300):
        items = [(round(rng.uniform(1, 20), 2), round(rng.uniform(0.1, 3), 3), rng.randint(1, 4))
                 for _ in range(rng.randint(1, 4))]
        need = rng.uniform(0.5, 60)
        best = math.inf
        for ns in itertools.product(*[range(n + 1) for _, _, n in items]):
            if sum(a * k for (a, _, _), k in zip(items, ns)) >= need - 1e-12:
                best = min(best, sum(c * k for (_, c, _), k in zip(items, ns)))
        exact = least_cover_cost(need, items, rel_tol=0)
        assert exact == best or abs(exact - best) < 1e-9
        assert least_cover_cost(need, items) <= best + 1e-9            # the shortcut stays below
        assert least_cover_cost(need, items, node_limit=1, rel_tol=0) <= best + 1e-9
