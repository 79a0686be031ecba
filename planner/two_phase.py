"""Large fleets: choose the variants on a relaxation with a proven bound, then place whole nodes.

The full MILP of :mod:`atoll.planner.milp` is exact, but on thousands of nodes HiGHS spends its
time in root cuts over thousands of node-count integers. The two-phase method keeps a proven
lower bound LB, and so an honest gap:

1. *Variant phase* on a relaxation R of the MILP (:mod:`atoll.planner.decompose`): every
   integer but the variant binaries z is continuous. R relaxes integrality and drops valid
   rows, so its bound is a bound on the full problem; the accuracy hull cuts tighten it.
2. *Placement phase*: fix the chosen variants and solve the (much smaller) MILP with integer
   node counts: the plan, with cost UB. With a bound in hand it stops as soon as
   UB <= LB / (1 - gap).

The reported gap is (UB - LB) / UB.
"""

from __future__ import annotations

import math
import time
from typing import Optional

from atoll.planner import decompose as D
from atoll.planner import solve as S
from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.baselines import pick_cheapest_variants
from atoll.planner.diagnose import diagnose
from atoll.planner.milp import Model
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem


def proven_gap(cost: float, lower: Optional[float]) -> Optional[float]:
    """(cost - lower) / cost, or None without a proven bound on the whole problem."""
    if lower is None or not math.isfinite(lower) or lower <= 0:
        return None
    return max(0.0, (cost - lower) / cost) if cost > 1e-9 else 0.0


def _place(problem, choice, opts, up, previous, churn, lower, time_limit, fixed=None):
    """Phase 2: the placement MILP for a fixed choice; stops once within the gap of ``lower``.
    Given ``fixed`` (an earlier placement's model) it goes on from that plan."""
    warm = fixed is not None
    if fixed is None:
        fixed = Model(problem, up_only=up, previous=previous, churn_penalty=churn, fix_choice=choice)
    stop = lower / (1.0 - opts.gap) if lower is not None and math.isfinite(lower) and lower > 0 else None
    res = S.run(fixed, opts, time_limit=time_limit, stop_at=stop, warm=warm,
                rel_gap=opts.gap if stop is None else 0.25 * opts.gap)
    return fixed, res


def two_phase_plan(problem: PlanProblem, model: Model, opts: PlanOptions, t0: float, up: bool,
                   previous, churn: float) -> tuple[Optional[Plan], float]:
    """Variants on R with the accuracy hull cuts, then placement. Returns (plan or None, the
    proven lower bound); raises the diagnosis when R shows that no plan exists."""
    tl = opts.time_limit
    left = lambda: tl - (time.perf_counter() - t0)  # noqa: E731
    R = D.relaxation(model)
    Z = AccuracySet.of(model)
    hull = D.hull_phase(R, Z, max(0.2 * tl, opts.phase1_share * tl - (tl - left())), opts)
    if hull.status == "infeasible":
        raise diagnose(problem, opts)
    lower = hull.lower if hull.status == "ok" else -math.inf
    choice, value = hull.choice, hull.value
    if choice is not None and not problem.accuracy_ok(choice):
        choice, value = None, math.inf     # within the search's tolerance but not the SLO's
    steps = [f"hull bound ({hull.iterations} pricing rounds)" if Z is not None else "LP bound"]
    if choice is None:
        # no choice from the hull (no accuracy set to search, or out of time): R as a MILP in z
        lb, choice, value = D.hull_milp(R, hull, max(0.1 * tl, opts.phase1_share * tl - (tl - left())),
                                        0.5 * opts.gap, opts)
        steps.append("variant MILP")
        if lb == math.inf:
            raise diagnose(problem, opts)
        lower = max(lower, lb)
    if choice is None:                   # out of time before a first choice: the greedy one
        choice = pick_cheapest_variants(problem, [q for q in problem.pools if problem.pool_allowed(q)])
        if choice is None:
            return None, lower
    # placement; when the bound is likely short, leave time to raise it afterwards
    short = not math.isfinite(value) or value - lower > 0.6 * opts.gap * value
    fixed, res = _place(problem, choice, opts, up, previous, churn, lower,
                        max(0.3 * tl, 0.5 * left() if short else left()))
    steps.append("placement")
    if res.status not in ("optimal", "time_limit"):
        return None, lower
    cost = res.objective
    gap = proven_gap(cost, lower)
    # R's MILP bound is at most the choice's R value: worth raising only if that could be enough
    if ((gap is None or gap > opts.gap) and left() > 0.1 * tl and hull.status == "ok"
            and lower < value and (not math.isfinite(value) or value >= cost * (1 - opts.gap))):
        # placed, but the bound is short of the gap: R as a MILP in z with the hull cuts, until
        # its bound reaches what the gap needs (or a better choice turns up)
        lb, ch, val = D.hull_milp(R, hull, left() - 0.05 * tl, 0.5 * opts.gap, opts,
                                  enough=cost * (1 - opts.gap))
        steps.append("variant MILP for the bound")
        if lb == math.inf:
            raise diagnose(problem, opts)
        lower = max(lower, lb)
        if ch is not None and ch != choice and val < cost * (1 - opts.gap) and left() > 0.1 * tl:
            fixed2, res2 = _place(problem, ch, opts, up, previous, churn, lower, left())
            if res2.status in ("optimal", "time_limit") and res2.objective < cost:
                fixed, res, cost = fixed2, res2, res2.objective
        gap = proven_gap(cost, lower)
    if short and (gap is None or gap > opts.gap) and left() > 0.1 * tl and res.status == "time_limit":
        # the bound could not move: the time kept for it goes back to the placement
        kept = [(v, v.varValue) for v in fixed.prob.variables()]
        _, res2 = _place(problem, choice, opts, up, previous, churn, lower, left(), fixed=fixed)
        if res2.status in ("optimal", "time_limit") and res2.objective < cost:
            res, cost = res2, res2.objective
            gap = proven_gap(cost, lower)
        else:                                  # keep the first plan's values
            for v, x in kept:
                v.varValue = x
        steps.append("placement again")
    status = "optimal" if gap is not None and gap <= opts.gap + 1e-9 else "time_limit"
    notes = (f"solver {S.solver_name(opts)}, two-phase: {', then '.join(steps)}",)
    return S.extract(fixed, planner="milp", status=status, seconds=time.perf_counter() - t0,
                     gap=gap, notes=notes, previous=previous), lower
