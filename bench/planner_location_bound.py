"""An analysis tool for the placement gap: a lower bound on the least cost of placing a *fixed*
variant choice that sees whole nodes and cross-location transfer together (a Lagrangian /
Dantzig-Wolfe bound over per-location patterns). Not used by the planner: it measures how much of
the gap between the placement's LP relaxation and its best plans a location decomposition would
close, the step ``docs/planner.md`` ("What is left") discusses.

    .venv/bin/python bench/planner_location_bound.py chain/100/10/4/6/s0 [--choice JSON|free] [--rounds 40]

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

Variants free (``--choice free``): the master's rows are per (task, variant),
sum_l s_vm(l) >= z_vm, a pattern picks the variants it serves (a message then costs at least its
least size over the candidate variants at both ends), and z ranges over the accuracy-feasible
choices Z through columns of Z; the Lagrangian is
    L(y) = beta(y) + sum_l min over patterns at l of [ cost(pattern) - sum_vm y_vm s_vm(l) ],
with beta(y) <= min over Z of y.z from the exact search of :mod:`atoll.planner.accuracy_set`,
valid for every plan since its z is in Z and its patterns satisfy the rows.

``tests/planner/test_location_bound.py`` holds both to exhaustive search on small problems.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import pulp

from atoll.planner import solve as S
from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.api import plan
from atoll.planner.milp import K_COST, Model
from atoll.planner.options import PlanOptions
from atoll.planner.problem import PlanProblem

BIG = 1e6                        # the price of an artificial column (a task left uncovered)
REPO = Path(__file__).resolve().parent.parent


def _lp_value(model: Model) -> float:
    """The placement's LP relaxation (blocks (10) and (12) included), for comparison."""
    return S.run(model, PlanOptions(time_limit=60), mip=False).objective


def _edges(model: Model) -> tuple[list, dict]:
    """Task edges as (producer, consumer, $/h per unit of share leaving a location before alpha)
    and, per consumer fed by sources, (share of its rate born at each location, $/h per unit);
    a message costs at least its least size over the candidate variants at both ends."""
    pb = model.pb
    cand = {t: [m.name for m in ms] for t, ms in model.cand.items()}
    rate = {t.name: t.rate for t in pb.tasks}
    pairs, src = [], defaultdict(lambda: [defaultdict(float), math.inf])
    for e in pb.edges:
        s = pb.source(e.src)
        if s is not None:
            entry = src[e.dst]
            entry[0][s.location] += e.rate / rate[e.dst]
            entry[1] = min(entry[1], K_COST * min(e.size(None, b) for b in cand[e.dst]) * rate[e.dst])
        else:
            size = min(e.size(a, b) for a in cand[e.src] for b in cand[e.dst])
            pairs.append((e.src, e.dst, K_COST * size * rate[e.dst]))
    return pairs, dict(src)


class _Location:
    """The pricing problem at one location: a small MILP whose objective changes per round."""

    def __init__(self, model: Model, loc, classes: list, pairs: list, src: dict, alpha: float):
        pb = model.pb
        self.prob = pulp.LpProblem("pattern", pulp.LpMinimize)
        self.h = {}
        self.s = {k: self.prob.add_variable(f"s_{i}", lowBound=0, upBound=1) for i, k in enumerate(model.z)}
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
                        r = self.prob.add_variable(f"r_{len(self.h)}_{len(served[(t, m)])}_{len(load)}", lowBound=0)
                        served[(t, m)].append(r)
                        load.append((r, model.rate[t] / model.mu[(t, m, cid)]))
                    self.prob += pulp.LpAffineExpression(load) <= h
            members_pools = model.class_pools[cid]
            segs = [self.prob.add_variable(f"g_{len(base)}_{k}", lowBound=0, upBound=q.count)
                    for k, q in enumerate(members_pools)]
            self.prob += pulp.lpSum(hs) == pulp.lpSum(segs)
            base += [(sv, q.price_per_hour) for sv, q in zip(segs, members_pools)]
        for k, v in self.s.items():
            self.prob += v == pulp.lpSum(served[k])
        task = defaultdict(list)                     # a task's share: over its variants
        for (t, m), v in self.s.items():
            task[t].append(v)
        task = {t: pulp.lpSum(vs) for t, vs in task.items()}
        for t, share in task.items():
            self.prob += share <= 1
        for u, w, c in pairs:
            if alpha * c > 0:
                x = self.prob.add_variable(f"x_{u}_{w}", lowBound=0)
                self.prob += x >= task[u] - task[w]
                base.append((x, alpha * c))
        self.const = 0.0
        for w, (shares, c) in src.items():
            here = shares.get(loc, 0.0)
            if alpha * c > 0 and here > 0:
                x = self.prob.add_variable(f"xs_{w}", lowBound=0)
                self.prob += x >= here - task[w]
                base.append((x, alpha * c))
        self.base = base

    def pattern_of(self, model: Optional[Model], shares: dict) -> tuple[dict, float]:
        """A pattern at least as good as the plan held in ``model``'s variables at this location
        (its node counts, at least its ``shares``): a first column that needs no artificial;
        with no model, the empty pattern."""
        saved = [(v, v.lowBound, v.upBound) for v in [*self.h.values(), *self.s.values()]]
        for key, v in self.h.items():
            v.lowBound = v.upBound = 0 if model is None else round(model.h[key].varValue or 0.0)
        for k, v in self.s.items():
            v.lowBound = max(0.0, shares.get(k, 0.0) * (1 - 1e-9) - 1e-12)
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
        if self.prob.status != pulp.LpStatusOptimal:
            raise RuntimeError(f"pricing stopped without a solution ({pulp.LpStatus[self.prob.status]})")
        if not self.h:                               # an LP (no pools here): exact
            return info.objective_function_value, shares, cost
        bound = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else -math.inf
        return min(bound, info.objective_function_value), shares, cost


def location_bound(pb: PlanProblem, choice: Optional[dict], rounds: int = 40, time_limit: float = 120.0,
                   log=None) -> dict:
    """The best Lagrangian bound over ``rounds`` of column generation (see the module docstring),
    and the master LP's value at the end (equal to the bound at convergence). With ``choice``
    None the variants are free: a pattern picks them too, and the choices come from the exact
    search over the accuracy-feasible ones (``AccuracySet``), a bound on every plan."""
    t0 = time.perf_counter()
    model = Model(pb, fix_choice=choice)
    keys = list(model.z)                             # (task, variant): the rows of the master
    Z = None if choice else AccuracySet.of(model)
    if not choice and Z is None:
        raise ValueError("free variants need an accuracy set the exact search covers")
    pairs, src = _edges(model)
    by_loc = defaultdict(list)
    for cid, p in model.pools.items():
        by_loc[p.location].append(cid)
    locs = list(by_loc) + [loc for shares, _ in src.values() for loc in shares if loc not in by_loc]
    locs = list(dict.fromkeys(locs))
    alpha = {l: min((pb.network.price(l, l2) for l2 in locs if l2 != l), default=0.0) for l in locs}
    subs = {l: _Location(model, l, by_loc.get(l, []), pairs, src, alpha[l]) for l in locs}
    cols = {l: [sub.pattern_of(None, {})] for l, sub in subs.items()}   # (shares, cost)
    if choice and S.rounded_start(model, PlanOptions(time_limit=60)):   # a whole plan
        here = defaultdict(lambda: defaultdict(float))
        for (t, m, p, _c), v in model.r.items():
            here[model.pools[p].location][(t, m)] += v.varValue or 0.0
        for l, sub in subs.items():
            cols[l].append(sub.pattern_of(model, here[l]))
    zcols = [keys] if choice else [[keys[i] for i in Z.minimize(np.zeros(len(keys)))[1][0][1]]]
    lp = _lp_value(Model(pb, fix_choice=choice))
    best, master = -math.inf, None
    for it in range(rounds):
        # the master LP over the columns found so far, then pricing at its duals: a valid
        # bound L(y) and new columns
        mp = pulp.LpProblem("master", pulp.LpMinimize)
        lam = {(l, k): mp.add_variable(f"l_{i}_{k}", lowBound=0)
               for i, l in enumerate(locs) for k in range(len(cols[l]))}
        nu = [mp.add_variable(f"n_{k}", lowBound=0) for k in range(len(zcols))]
        art = {key: mp.add_variable(f"a_{j}", lowBound=0) for j, key in enumerate(keys)}
        mp += pulp.LpAffineExpression([(v, cols[l][k][1]) for (l, k), v in lam.items()]
                                      + [(a, BIG) for a in art.values()])
        member = [set(zc) for zc in zcols]
        cover = {}
        for key in keys:
            cover[key] = pulp.LpAffineExpression(
                [(v, cols[l][k][0].get(key, 0.0)) for (l, k), v in lam.items()] + [(art[key], 1.0)]
                + [(n, -1.0) for n, mem in zip(nu, member) if key in mem]) >= 0
            mp += cover[key]
        mp += pulp.lpSum(nu) == 1
        for i, l in enumerate(locs):
            mp += pulp.lpSum(lam[(l, k)] for k in range(len(cols[l]))) == 1, f"conv_{i}"
        mp.solve(pulp.HiGHS(msg=False))
        master = pulp.value(mp.objective)
        y = {key: max(0.0, cover[key].pi or 0.0) for key in keys}
        added = 0
        if choice:
            total = sum(y.values())                  # the one choice: y.z = sum of y
        else:
            beta, found = Z.minimize(np.array([y[k] for k in keys]), 5)
            total = beta
            for _val, sel in found:
                zc = [keys[i] for i in sel]
                if set(zc) not in member:
                    zcols.append(zc)
                    added += 1
        for l, sub in subs.items():
            left = time_limit - (time.perf_counter() - t0)
            lb, shares, cost = sub.price(y, max(1.0, left))
            total += lb
            if cost - sum(y[k] * shares[k] for k in keys) < -1e-7 and not any(
                    all(abs(shares[k] - c[0][k]) <= 1e-9 for k in keys) for c in cols[l]):
                cols[l].append((shares, cost))
                added += 1
        best = max(best, total)
        if log:
            log(f"round {it:3d}: bound {best:.4f}  master {master:.4f}  columns {sum(map(len, cols.values()))}  "
                f"choices {len(zcols)}  {time.perf_counter() - t0:.1f} s")
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
    ap.add_argument("--choice", default=None, help="JSON task -> variant, or 'free' (default: the MILP's plan in --plan-time s)")
    ap.add_argument("--plan-time", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--time-limit", type=float, default=300.0)
    a = ap.parse_args(argv)
    pb = build(a.case)
    if a.choice:
        choice = None if a.choice == "free" else json.loads(a.choice)
    else:
        p = plan(pb, options=PlanOptions(time_limit=a.plan_time, gap=0.01))
        choice = dict(p.variants)
        print(f"plan {p.total_cost_per_hour:.4f} gap {p.gap}  choice {json.dumps(choice)}")
    r = location_bound(pb, choice, a.rounds, a.time_limit, log=print)
    print(json.dumps({"case": a.case, "choice": choice, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
