"""A JellyBean-like heuristic (Wu et al., PVLDB 16(3), 2022), written from the paper's description.

1. Variant selection: beam search over the tasks from the sink back to the sources. A state is
   a partial assignment; its score is the compute $/h of its chosen variants at their cheapest
   hardware; a state is kept only if completing it with the most accurate remaining variants can
   still meet the accuracy SLO. The cheapest complete state that meets the SLO wins.
2. Placement: tier by tier (edge, then renter, then datacenter), each task in topological order
   on the lowest tier not below its inputs', cheapest $ per req/s first and the inputs' region
   first; what does not fit moves up a tier. Data moves only up the tiers.
"""

from __future__ import annotations

import math
import time
from typing import Optional

from atoll.planner.baselines import finish, unit_cost
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem
from atoll.specs.node import TIER_RANK

BEAM = 8


def _select(problem: PlanProblem, pools) -> Optional[dict[str, str]]:
    cost = {(t.name, m.name): unit_cost(problem, m, pools) * t.rate for t in problem.tasks for m in t.variants}
    cand = {t.name: sorted((m for m in t.variants if math.isfinite(cost[(t.name, m.name)])),
                           key=lambda m: cost[(t.name, m.name)]) for t in problem.tasks}
    if any(not c for c in cand.values()):
        return None
    best_acc = {t: max(c, key=lambda m: m.accuracy).name for t, c in cand.items()}
    rev = [t.name for t in reversed(problem.tasks)]
    beam: list[tuple[float, dict]] = [(0.0, {})]
    for t in rev:
        nxt = []
        for sc, partial in beam:
            for m in cand[t]:
                trial = {**partial, t: m.name}
                optimistic = {**best_acc, **trial}
                if problem.accuracy_ok(optimistic):
                    nxt.append((sc + cost[(t, m.name)], trial))
        nxt.sort(key=lambda x: x[0])
        beam = nxt[:BEAM]
        if not beam:
            return None
    for _, choice in beam:
        if problem.accuracy_ok(choice):
            return choice
    return None


def jellybean_plan(problem: PlanProblem, previous: Optional[Plan] = None,
                   options: Optional[PlanOptions] = None) -> Plan:
    t0 = time.perf_counter()
    pools = [p for p in problem.pools if problem.pool_allowed(p)]
    choice = _select(problem, pools)
    hosts = None
    if choice is not None:
        hosts = {}
        left = {p.id: p.count for p in pools}
        tier_of: dict[str, int] = {s.name: TIER_RANK[s.location[1]] for s in problem.sources}
        region_of: dict[str, str] = {s.name: s.location[0] for s in problem.sources}
        for t in problem.tasks:
            v = t.variant(choice[t.name])
            low = max(tier_of[p] for p in t.parents)
            regions = {region_of[p] for p in t.parents}
            ranked = sorted((p for p in pools if problem.mu(v, p) > 0 and TIER_RANK[p.tier] >= low),
                            key=lambda p: (TIER_RANK[p.tier], p.region not in regions,
                                           p.price_per_hour / problem.mu(v, p), p.id))
            need, top, reg = t.rate, low, None
            for p in ranked:
                if need <= 1e-9:
                    break
                n = min(left[p.id], math.ceil(need / problem.mu(v, p) - 1e-9))
                if n <= 0:
                    continue
                left[p.id] -= n
                hosts[(v.group, p.id)] = hosts.get((v.group, p.id), 0) + n
                need -= n * problem.mu(v, p)
                top = max(top, TIER_RANK[p.tier])
                reg = reg or p.region
            if need > 1e-6:
                hosts = None
                break
            tier_of[t.name] = top
            region_of[t.name] = reg or next(iter(regions))
    return finish(problem, choice, hosts, "jellybean", t0, previous, options, up_only=True)
