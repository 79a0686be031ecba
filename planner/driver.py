"""``milp_plan``: build, solve, fall back, diagnose. The public ``plan`` calls it."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Optional

from atoll.planner import highs
from atoll.planner import solve as S
from atoll.core.errors import PlanInfeasible
from atoll.planner.baselines import greedy_plan, pick_cheapest_variants
from atoll.planner.diagnose import SLOInfeasible, diagnose
from atoll.planner.milp import Model
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem
from atoll.planner.two_phase import two_phase_plan


def milp_plan(problem: PlanProblem, previous: Optional[Plan] = None,
              options: Optional[PlanOptions] = None) -> Plan:
    opts = options or PlanOptions()
    t0 = time.perf_counter()
    up = opts.data_up_only or problem.data_up_only
    churn = opts.churn_penalty if previous is not None else 0.0
    model = Model(problem, up_only=up, previous=previous, churn_penalty=churn)
    method = opts.method
    lower = None
    if method == "auto":
        method = "decompose" if len(model.h) > opts.decompose_above else "exact"
    if method == "decompose" and not (highs.AVAILABLE and S.solver_name(opts) == "highs"):
        method = "exact"                       # the two-phase method drives highspy directly
    if method == "decompose" and not model.empty_tasks:
        p, lower = two_phase_plan(problem, model, opts, t0, up, previous, churn)
        if p is not None:
            return p
        res = S.SolveResult("no_solution", 0.0, None, None)
    else:
        res = S.run(model, opts)
    if res.status == "infeasible":
        raise diagnose(problem, opts)
    if res.status == "no_solution":
        if lower is None:            # the exact MILP's LP relaxation still bounds every plan
            lower = S.lp_bound(Model(problem, up_only=up, previous=previous, churn_penalty=churn), opts)
        return _fallback(problem, previous, opts, lower, t0, up, churn)
    gap = res.gap
    if gap is None and res.status == "optimal":
        gap = opts.gap               # CBC proved optimality within its relative gap tolerance
    if gap is None:  # CBC stopped early and reports no bound: compare with the LP relaxation
        relax = Model(problem, up_only=up, previous=previous, churn_penalty=churn)
        lb = S.lp_bound(relax, opts)
        gap = 0.0 if (lb is None or res.objective is None or res.objective <= 1e-9) \
            else max(0.0, (res.objective - lb) / res.objective)
    notes = (f"solver {S.solver_name(opts)}",)
    return S.extract(model, planner="milp", status=res.status, seconds=time.perf_counter() - t0,
                     gap=gap, notes=notes, previous=previous)


def _fallback(problem: PlanProblem, previous, opts: PlanOptions, lower: Optional[float], t0: float,
              up: bool, churn: float) -> Plan:
    """No MILP solution within the time limit: the greedy plan or, when its placement cannot
    carry the load (a bandwidth cap, say), the greedy variants placed by diving on the LP
    (:func:`atoll.planner.solve.rounded_start`); with a gap against ``lower`` (the variant
    phase's bound, or the LP relaxation's) when there is one."""
    timeout = SLOInfeasible(f"no plan found within the {opts.time_limit:g} s time limit",
                            slo="time_limit", hint="raise the time limit or enable the fallback")
    if not opts.fallback:
        raise timeout
    try:
        fb = greedy_plan(problem, previous=previous, options=opts)
        note = f"MILP found no solution in {opts.time_limit:g} s; greedy fallback"
    except PlanInfeasible:
        choice = pick_cheapest_variants(problem, [q for q in problem.pools if problem.pool_allowed(q)])
        fixed = None if choice is None else Model(problem, up_only=up, previous=previous, churn_penalty=churn,
                                                  fix_choice=choice)
        if fixed is None or not S.rounded_start(fixed, opts):
            raise timeout from None
        fb = S.extract(fixed, planner="milp", status="fallback", seconds=0.0, gap=None, previous=previous)
        note = f"MILP found no solution in {opts.time_limit:g} s; greedy variants placed by an LP dive"
    gap = None
    if lower is not None and math.isfinite(lower) and lower > 0 and fb.total_cost_per_hour > 1e-9:
        gap = max(0.0, 1 - lower / fb.total_cost_per_hour)
    return replace(fb, planner="milp", status="fallback", notes=fb.notes + (note,), gap=gap,
                   solve_seconds=time.perf_counter() - t0)
