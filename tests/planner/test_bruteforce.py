"""The MILP against an exhaustive search on 200 seeded random small instances."""

from __future__ import annotations

import random

import pytest

from atoll.core.errors import PlanInfeasible
from atoll.planner.api import PlanOptions, plan
from planner_gen import random_problem
from planner_ref import brute_force

N = 200
EXACT = PlanOptions(gap=1e-9, time_limit=30, method="exact")


def test_milp_matches_brute_force_on_random_instances():
    mismatches, feasible, shared, transfer = [], 0, 0, 0
    for seed in range(N):
        pb = random_problem(random.Random(seed))
        ref = brute_force(pb)
        try:
            p = plan(pb, options=EXACT)
            got = p.total_cost_per_hour
        except PlanInfeasible:
            p, got = None, None
        if ref is None or got is None:
            if ref is not got:
                mismatches.append((seed, ref, got))
            continue
        feasible += 1
        shared += any(len(h.members) > 1 for h in p.hosts)
        transfer += p.transfer_cost_per_hour > 1e-6
        if abs(ref - got) > 1e-6 * max(1.0, ref):
            mismatches.append((seed, ref, got))
        # the plan is self-consistent: every task is served at its rate, within pool sizes
        for t in pb.tasks:
            assert sum(r.rate for r in p.replicas if r.task == t.name) == pytest.approx(t.rate, rel=1e-6)
        used = {}
        for h in p.hosts:
            used[h.pool] = used.get(h.pool, 0) + h.count
        assert all(used[q.id] <= q.count for q in pb.pools if q.id in used)
        assert pb.accuracy_ok(p.variants)
    assert not mismatches, f"(seed, brute force, milp): {mismatches}"
    # the family must exercise what it claims to
    assert feasible >= N // 3 and shared >= 5 and transfer >= N // 4


def test_brute_force_can_disagree():
    """The reference is not a copy of the MILP: forbidding downward data changes its answer."""
    diffs = 0
    for seed in range(40):
        pb = random_problem(random.Random(seed))
        a, b = brute_force(pb), brute_force(pb, up_only=True)
        if a is not None and b is not None and b > a + 1e-6:
            diffs += 1
            if diffs == 2:
                break
    assert diffs == 2
