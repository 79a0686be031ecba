"""Large fleets: branch on the variant choice over the LP, then place whole nodes.

The full MILP of :mod:`atoll.planner.milp` is exact, but on thousands of nodes HiGHS spends its
time in root cuts over thousands of node-count integers. This two-phase method keeps a proven
bound and so an honest gap:

1. *Variant phase*: relax every integer except the variant binaries z (node counts and table
   rows become continuous; each edge's messages are priced at their smallest size, so flows
   need no variant index) and solve that MILP -- by HiGHS' branch and cut
   (default, ``variant_search="highs"``) or by a small branch and bound on z written here
   (``"bb"``: a dive, then best bound first, warm-starting the dual simplex at each node).
   Its lower bound LB relaxes only integrality, so it bounds the full problem from below.
2. *Placement phase*: fix the chosen variants and solve the (much smaller) MILP with integer
   node counts: the plan, with cost UB.

The reported gap is (UB - LB) / UB.
"""

from __future__ import annotations

import heapq
import math
import time

import pulp

from atoll.planner.milp import Model


def _highs_model(model: Model, time_limit: float):
    solver = pulp.HiGHS(msg=False, mip=False, timeLimit=time_limit)
    prob = model.prob
    solver.createAndConfigureSolver(prob)
    solver.buildSolverModel(prob)
    return prob.solverModel


def variant_branch_and_bound(model: Model, time_limit: float, gap: float):
    """Return (choice, lower_bound, nodes) or (None, None, nodes) when no choice is feasible.
    ``model`` must be built in cost mode; its integer columns are treated as continuous."""
    import highspy

    t0 = time.perf_counter()
    h = _highs_model(model, time_limit)
    h.setOptionValue("solver", "simplex")
    zcols = {k: v.index for k, v in model.z.items()}
    tasks = {}
    for (t, m), c in zcols.items():
        tasks.setdefault(t, []).append((m, c))
    inf_st = (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)

    # HiGHS' clock runs across run() calls of one instance: one limit for the whole search
    h.setOptionValue("time_limit", float(time_limit) + 1.0)

    def solve():
        """(objective, columns), None if infeasible, "stop" if out of time."""
        h.run()
        st = h.getModelStatus()
        if st in inf_st:
            return None
        if st != highspy.HighsModelStatus.kOptimal:
            return "stop"
        return h.getInfo().objective_function_value, list(h.getSolution().col_value)

    best_val, best_choice = math.inf, None
    open_bounds: list[float] = []           # bounds of nodes left unexplored at a time-out
    nodes = 0
    # Nodes are (bound, seq, fixings); a dive (depth first) until the first incumbent, then
    # best bound first, which is what raises the lower bound.
    heap: list[tuple[float, int, list[tuple[int, float, float]]]] = []
    dive: list[tuple[float, list[tuple[int, float, float]]]] = [(-math.inf, [])]
    seq = 0

    def cutoff() -> float:
        return best_val * (1 - 0.6 * gap) if math.isfinite(best_val) else math.inf

    while dive or heap:
        if dive:
            parent_bound, fix = dive.pop()
        else:
            parent_bound, _, fix = heapq.heappop(heap)
        if parent_bound >= cutoff():
            continue
        if time.perf_counter() - t0 > time_limit:
            open_bounds.append(parent_bound)
            break
        for col, lb, ub in fix:
            h.changeColBounds(col, lb, ub)
        res = solve()
        for col, _, _ in fix:
            h.changeColBounds(col, 0.0, 1.0)
        nodes += 1
        if res is None:
            continue
        if res == "stop":
            open_bounds.append(parent_bound)
            break
        val, x = res
        if val >= cutoff():
            continue
        frac = None
        for t, ms in tasks.items():
            top = max((x[c], m, c) for m, c in ms)
            if top[0] < 1 - 1e-6 and (frac is None or top[0] < frac[0]):
                frac = top                      # the task whose choice is least settled
        if frac is None:
            best_val = val
            best_choice = {t: max((x[c], m) for m, c in ms)[1] for t, ms in tasks.items()}
            while dive:
                b, f = dive.pop()
                seq += 1
                heapq.heappush(heap, (b, seq, f))
            continue
        _, m, c = frac
        down, up = fix + [(c, 0.0, 0.0)], fix + [(c, 1.0, 1.0)]
        if best_choice is None:
            dive.append((val, down))
            dive.append((val, up))              # take the LP's favourite first
        else:
            seq += 1
            heapq.heappush(heap, (val, seq, up))
            seq += 1
            heapq.heappush(heap, (val, seq, down))
    open_bounds += [b for b, _ in dive] + [b for b, _, _ in heap]
    lower = min([best_val] + open_bounds)
    if best_choice is None:
        return None, None if not open_bounds else lower, nodes
    return best_choice, lower, nodes


def variant_milp(model: Model, time_limit: float, gap: float, opts):
    """Phase 1 by HiGHS' own branch and cut: the MILP with node counts, adapters and table rows
    made continuous. Returns (choice, lower bound) like :func:`variant_branch_and_bound`."""
    from dataclasses import replace as _replace
    from atoll.planner import solve as S

    for v in list(model.h.values()) + list(model.u.values()) + list(getattr(model, "w", {}).values()):
        v.cat = pulp.LpContinuous
    res = S.run(model, _replace(opts, gap=0.6 * gap), time_limit=time_limit)
    if res.status == "infeasible":
        return None, None, 0
    if res.status == "no_solution":
        return None, (res.bound if res.bound is not None else -math.inf), 0
    if res.status == "time_limit" and res.bound is None:
        return {t: m for (t, m), z in model.z.items() if (z.varValue or 0) > 0.5}, -math.inf, 0
    choice = {t: m for (t, m), z in model.z.items() if (z.varValue or 0) > 0.5}
    lower = res.bound if res.bound is not None else res.objective
    return choice, lower, 0
