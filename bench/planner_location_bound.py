"""An analysis tool for the placement gap: a lower bound on the least cost of placing a *fixed*
variant choice that sees whole nodes and cross-location transfer together (a Lagrangian /
Dantzig-Wolfe bound over per-location patterns). Not used by the planner: it measures how much of
the gap between the placement's LP relaxation and its best plans a location decomposition would
close, the step ``docs/planner.md`` ("What is left") discusses.

    .venv/bin/python bench/planner_location_bound.py chain/100/10/4/6/s0 [--choice JSON] [--rounds 40]

The bound. Fix the variant of every task. A plan restricted to one location l is a *pattern*: whole
node counts h on the pool classes at l and the share s_v(l) of each task's rate served there, with
blocks (3) (capacity) and (4) (pool size, a class paying its cheapest pools first) of
:mod:`atoll.planner.milp`. Every plan is one pattern per location with sum_l s_v(l) = 1 per task.
Transfer: on an edge e = (u -> w) the messages leaving l are at least the producer's excess there,
(s_u(l) - s_w(l))^+ in units of the consumer's rate (flow conservation (6): out of l is s_u(l),
what stays at l is at most s_w(l)); each unit leaving l pays at least
alpha_l = min over the other locations l2 of the price l -> l2 (prices are >= 0, so flows that stay
cost >= 0). Sources are producers with fixed shares. So a plan costs at least

    sum_l [ nodes(l) + sum_e alpha_l K size_e lambda_w (s_u(l) - s_w(l))^+ ],

a sum of per-location terms coupled only by sum_l s_v(l) >= 1. Its Lagrangian dual,
    L(y) = sum_v y_v + sum_l min over patterns at l of [ cost(pattern) - sum_v y_v s_v(l) ],  y >= 0,
is a lower bound for every y; the y come from the LP over the patterns found so far
(column generation), and every round's L(y) is valid (each min is solved exactly, or its own
proven bound is used). Unlike the placement's LP, a pattern holds whole nodes *and* pays the
mismatch of consecutive tasks at its location in the same breath, so mixing patterns cannot
spread every task thinly over every location at no transfer cost. Bandwidth caps and the
up-only rule are dropped (a relaxation); churn is not modelled (no previous plan).
``tests/planner/test_location_bound.py`` checks the bound against the exact placement MILP.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import pulp

from atoll.planner import solve as S
from atoll.planner.api import plan
from atoll.planner.milp import K_COST, Model
from atoll.planner.options import PlanOptions
from atoll.planner.problem import PlanProblem

BIG = 1e6                        # the price of an artificial column (a task left uncovered)
REPO = Path(__file__).resolve().parent.parent


def _lp_value(model: Model) -> float:
    """The placement's LP relaxation (blocks (10) and (12) included), for comparison."""
    return S.run(model, PlanOptions(time_limit=60), mip=False).objective


def _edges(pb: PlanProblem, choice: dict) -> tuple[list, dict]:
    """Task edges as (producer, consumer, $/h per unit of share leaving a location before alpha)
    and, per consumer fed by sources, (share of its rate born at each location, $/h per unit)."""
    rate = {t.name: t.rate for t in pb.tasks}
    pairs, src = [], defaultdict(lambda: [defaultdict(float), math.inf])
    for e in pb.edges:
        s = pb.source(e.src)
        if s is not None:
            entry = src[e.dst]
            entry[0][s.location] += e.rate / rate[e.dst]
            entry[1] = min(entry[1], K_COST * e.size(None, choice[e.dst]) * rate[e.dst])
        else:
            pairs.append((e.src, e.dst, K_COST * e.size(choice[e.src], choice[e.dst]) * rate[e.dst]))
    return pairs, dict(src)


class _Location:
    """The pricing problem at one location: a small MILP whose objective changes per round."""

    def __init__(self, model: Model, loc, classes: list, pairs: list, src: dict, alpha: float):
        pb = model.pb
        self.prob = pulp.LpProblem("pattern", pulp.LpMinimize)
        tasks = [t.name for t in pb.tasks]
        self.h = {}
        self.s = {t: self.prob.add_variable(f"s_{i}", lowBound=0, upBound=1) for i, t in enumerate(tasks)}
        served = defaultdict(list)
        base = []
        for cid in classes:
            hs = []
            for (g, p), confs in model.configs.items():
                if p != cid:
                    continue
                for label, members in confs:
                    h = self.prob.add_variable(f"h_{len(base)}_{len(hs)}", lowBound=0,
                                               upBound=model.pools[cid].count, cat="Integer")
                    hs.append(h)
                    self.h[(label, cid)] = h
                    load = []
                    for (t, m) in members:
                        r = self.prob.add_variable(f"r_{len(served[t])}_{t}_{len(hs)}_{len(base)}", lowBound=0)
                        served[t].append(r)
                        load.append((r, model.rate[t] / model.mu[(t, m, cid)]))
                    self.prob += pulp.LpAffineExpression(load) <= h
            members_pools = model.class_pools[cid]
            segs = [self.prob.add_variable(f"g_{len(base)}_{k}", lowBound=0, upBound=q.count)
                    for k, q in enumerate(members_pools)]
            self.prob += pulp.lpSum(hs) == pulp.lpSum(segs)
            base += [(sv, q.price_per_hour) for sv, q in zip(segs, members_pools)]
        for t in tasks:
            self.prob += self.s[t] == pulp.lpSum(served[t])
        for u, w, c in pairs:
            if alpha * c > 0:
                x = self.prob.add_variable(f"x_{u}_{w}", lowBound=0)
                self.prob += x >= self.s[u] - self.s[w]
                base.append((x, alpha * c))
        self.const = 0.0
        for w, (shares, c) in src.items():
            here = shares.get(loc, 0.0)
            if alpha * c > 0 and here > 0:
                x = self.prob.add_variable(f"xs_{w}", lowBound=0)
                self.prob += x >= here - self.s[w]
                base.append((x, alpha * c))
        self.base = base

    def pattern_of(self, model: Model, shares: dict) -> tuple[dict, float]:
        """A pattern at least as good as the plan held in ``model``'s variables at this location
        (its node counts, at least its ``shares``): a first column that needs no artificial."""
        saved = [(v, v.lowBound, v.upBound) for v in [*self.h.values(), *self.s.values()]]
        for key, v in self.h.items():
            v.lowBound = v.upBound = round(model.h[key].varValue or 0.0)
        for t, v in self.s.items():
            v.lowBound = max(0.0, shares.get(t, 0.0) * (1 - 1e-9) - 1e-12)
        try:
            shares, cost = self.price({}, 60.0)[1:]
        finally:
            for v, lo, hi in saved:
                v.lowBound, v.upBound = lo, hi
        return shares, cost

    def price(self, y: dict, time_limit: float) -> tuple[float, dict, float]:
        """(a lower bound on the least reduced cost, the pattern's shares, its true cost)."""
        obj = pulp.LpAffineExpression(self.base + [(self.s[t], -y.get(t, 0.0)) for t in self.s])
        self.prob.setObjective(obj)
        self.prob.solve(pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=1e-7))
        h = self.prob.solverModel
        info = h.getInfo()
        shares = {t: float(v.varValue or 0.0) for t, v in self.s.items()}
        cost = sum(a * float(v.varValue or 0.0) for v, a in self.base)
        bound = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else -math.inf
        return min(bound, info.objective_function_value), shares, cost


def location_bound(pb: PlanProblem, choice: dict, rounds: int = 40, time_limit: float = 120.0,
                   log=None) -> dict:
    """The best Lagrangian bound over ``rounds`` of column generation (see the module docstring),
    and the master LP's value at the end (equal to the bound at convergence)."""
    t0 = time.perf_counter()
    model = Model(pb, fix_choice=choice)
    pairs, src = _edges(pb, choice)
    by_loc = defaultdict(list)
    for cid, p in model.pools.items():
        by_loc[p.location].append(cid)
    locs = list(by_loc) + [loc for shares, _ in src.values() for loc in shares if loc not in by_loc]
    locs = list(dict.fromkeys(locs))
    tasks = [t.name for t in pb.tasks]
    alpha = {l: min((pb.network.price(l, l2) for l2 in locs if l2 != l), default=0.0) for l in locs}
    subs = {l: _Location(model, l, by_loc.get(l, []), pairs, src, alpha[l]) for l in locs}
    cols = {l: [] for l in locs}                     # (shares, cost)
    if S.rounded_start(model, PlanOptions(time_limit=60)):   # a whole plan: the first columns
        here = defaultdict(lambda: defaultdict(float))
        for (t, _m, p, _c), v in model.r.items():
            here[model.pools[p].location][t] += v.varValue or 0.0
        for l, sub in subs.items():
            cols[l].append(sub.pattern_of(model, here[l]))
    lp = _lp_value(Model(pb, fix_choice=choice))
    y = {t: 0.0 for t in tasks}
    best, master = -math.inf, None
    for it in range(rounds):
        # the master LP over the columns found so far, then pricing at its duals: a valid
        # bound L(y) and new columns
        mp = pulp.LpProblem("master", pulp.LpMinimize)
        lam = {(l, k): mp.add_variable(f"l_{i}_{k}", lowBound=0)
               for i, l in enumerate(locs) for k in range(len(cols[l]))}
        art = {t: mp.add_variable(f"a_{j}", lowBound=0) for j, t in enumerate(tasks)}
        mp += pulp.LpAffineExpression([(v, cols[l][k][1]) for (l, k), v in lam.items()]
                                      + [(a, BIG) for a in art.values()])
        cover = {}
        for t in tasks:
            cover[t] = pulp.LpAffineExpression([(v, cols[l][k][0][t]) for (l, k), v in lam.items()] + [(art[t], 1.0)]) >= 1
            mp += cover[t]
        for i, l in enumerate(locs):
            mp += pulp.lpSum(lam[(l, k)] for k in range(len(cols[l]))) == 1, f"conv_{i}"
        mp.solve(pulp.HiGHS(msg=False))
        master = pulp.value(mp.objective)
        y = {t: max(0.0, cover[t].pi or 0.0) for t in tasks}
        total = sum(y.values())
        added = 0
        for l, sub in subs.items():
            left = time_limit - (time.perf_counter() - t0)
            lb, shares, cost = sub.price(y, max(1.0, left))
            total += lb
            if cost - sum(y[t] * shares[t] for t in tasks) < -1e-7 or not any(
                    all(abs(shares[t] - c[0][t]) <= 1e-9 for t in tasks) for c in cols[l]):
                cols[l].append((shares, cost))
                added += 1
        best = max(best, total)
        if log:
            log(f"round {it:3d}: bound {best:.4f}  master {master:.4f}  columns {sum(map(len, cols.values()))}  "
                f"{time.perf_counter() - t0:.1f} s")
        if added == 0 or master - best <= 1e-6 * abs(master) or time.perf_counter() - t0 > time_limit:
            break
    return {"bound": best, "master": master, "lp": lp, "seconds": time.perf_counter() - t0, "rounds": it + 1}


def main(argv=None) -> int:
    sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests" / "planner")]
    # the bench's case ids: planner_bench imports the reference MILP and the scenario files,
    # which the test of this module does not need
    from planner_bench import build
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case")
    ap.add_argument("--choice", default=None, help="JSON task -> variant (default: the MILP's plan in --plan-time s)")
    ap.add_argument("--plan-time", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--time-limit", type=float, default=300.0)
    a = ap.parse_args(argv)
    pb = build(a.case)
    if a.choice:
        choice = json.loads(a.choice)
    else:
        p = plan(pb, options=PlanOptions(time_limit=a.plan_time, gap=0.01))
        choice = dict(p.variants)
        print(f"plan {p.total_cost_per_hour:.4f} gap {p.gap}  choice {json.dumps(choice)}")
    r = location_bound(pb, choice, a.rounds, a.time_limit, log=print)
    print(json.dumps({"case": a.case, "choice": choice, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
