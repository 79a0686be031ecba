"""``milp_plan``: build, solve, fall back, diagnose. The public ``plan`` calls it."""

from __future__ import annotations

import math
import time
from typing import Optional

from atoll.core.errors import PlanInfeasible
from atoll.planner.milp import Model, PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem
from atoll.planner import solve as S


class SLOInfeasible(PlanInfeasible):
    """PlanInfeasible with the accuracy under which the throughput was measured (if any)."""

    def __init__(self, message: str, *, slo: str, asked=None, reachable=None, hint=None,
                 accuracy: Optional[float] = None):
        self.accuracy = accuracy
        super().__init__(message, slo=slo, asked=asked, reachable=reachable, hint=hint)


def placeable_variants(problem: PlanProblem) -> dict[str, list]:
    """task -> variants that can run on at least one allowed pool."""
    return {t.name: [m for m in t.variants if any(problem.mu(m, p) > 0 for p in problem.pools)]
            for t in problem.tasks}


def max_accuracy(problem: PlanProblem) -> float:
    """Best end-to-end accuracy any choice of placeable variants reaches (capacity ignored)."""
    cand = placeable_variants(problem)
    if any(not v for v in cand.values()):
        return 0.0
    if problem.accuracy_model == "table":
        ok = [acc for combo, acc in problem.accuracy_table
              if all(any(m.name == vn for m in cand[t]) for t, vn in combo)]
        return max(ok, default=0.0)
    if problem.accuracy_model == "additive":
        return 1.0 - sum(1.0 - max(m.accuracy for m in cand[t.name]) for t in problem.tasks)
    # profiles are non-decreasing, so the best output of each task, in topological order, is optimal
    best = {s.name: 1.0 for s in problem.sources}
    for t in problem.tasks:
        x = min(best[p] for p in t.parents)
        best[t.name] = max(m.out_accuracy(x) for m in cand[t.name])
    return min(best[s] for s in problem.sinks())


def diagnose(problem: PlanProblem, opts: PlanOptions) -> PlanInfeasible:
    """Name the SLO that cannot be met and the best value reachable."""
    cand = placeable_variants(problem)
    for t in problem.tasks:
        if not cand[t.name]:
            return SLOInfeasible(
                f"task {t.name!r}: no variant can run on any allowed node (no throughput profile for "
                f"their hardware, too little GPU memory, or the tier/region is forbidden)",
                slo="memory", hint="add nodes of a profiled hardware class or lift a placement ban")
    if problem.min_accuracy is not None:
        best = max_accuracy(problem)
        if best < problem.min_accuracy - 1e-9:
            return SLOInfeasible(
                f"accuracy {problem.min_accuracy:.3f} asked, at most {best:.3f} reachable with the "
                f"variants that fit the nodes given", slo="accuracy", asked=problem.min_accuracy,
                reachable=best, hint="lower slo.min_accuracy or add more accurate variants")
    if problem.max_accuracy_loss is not None:
        best_loss = sum(max(m.accuracy for m in problem.task(t).variants) - max(m.accuracy for m in c)
                        for t, c in cand.items())
        if best_loss > problem.max_accuracy_loss + 1e-9:
            return SLOInfeasible(
                f"accuracy loss at most {problem.max_accuracy_loss:.3f} asked, at least {best_loss:.3f} "
                f"reachable on the nodes given", slo="accuracy", asked=problem.max_accuracy_loss,
                reachable=best_loss, hint="raise slo.max_accuracy_loss or add nodes for the best variants")
    model = Model(problem, up_only=opts.data_up_only, mode="throughput")
    res = S.run(model, opts, time_limit=max(5.0, opts.time_limit))
    asked = problem.total_source_rate
    if res.status not in ("optimal", "time_limit"):
        return SLOInfeasible(
            f"no plan meets the SLOs (throughput {asked:g} req/s asked); the reachable throughput "
            f"could not be computed within the time limit", slo="throughput", asked=asked,
            hint="raise the time limit, add nodes, or relax the SLOs")
    alpha = res.objective or 0.0
    if res.status == "time_limit" and res.bound is not None:
        alpha = res.bound                   # "at most": the solver's bound on the maximum
    reach = alpha * asked
    acc = problem.min_accuracy
    cond = f" with accuracy >= {acc:.2f}" if acc is not None else ""
    if problem.accuracy_model == "additive" and problem.max_accuracy_loss is not None:
        cond = f" with accuracy loss <= {problem.max_accuracy_loss:.3f}"
    return SLOInfeasible(
        f"throughput {asked:g} req/s asked, at most {reach:.4g} req/s reachable{cond} on the nodes given",
        slo="throughput", asked=asked, reachable=reach, accuracy=acc,
        hint="add nodes, lift placement bans or bandwidth caps, or relax the accuracy SLO")


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
        method = "decompose" if len(model.h) + len(model.u) > opts.decompose_above else "exact"
    if method == "decompose" and not model.empty_tasks:
        search = opts.variant_search
        if search == "hull" and S.solver_name(opts) != "highs":
            search = "highs"                   # the hull method drives highspy directly
        if search == "hull":
            p, lower = _two_phase_hull(problem, model, opts, t0, up, previous, churn)
            if p is not None:
                return _explained(problem, p, opts)
        else:
            p, lower = _two_phase_pulp(problem, model, opts, t0, up, previous, churn, search)
            if p is not None:
                return _explained(problem, p, opts)
        res = S.SolveResult("no_solution", 0.0, None, None)
    else:
        res = S.run(model, opts)
    if res.status == "infeasible":
        raise diagnose(problem, opts)
    if res.status == "no_solution":
        if not opts.fallback:
            raise SLOInfeasible(f"no plan found within the {opts.time_limit:g} s time limit",
                                slo="time_limit", hint="raise the time limit or enable the fallback")
        from atoll.planner.baselines import greedy_plan
        fb = greedy_plan(problem, previous=previous, options=opts)
        note = (f"MILP found no solution in {opts.time_limit:g} s; greedy fallback",)
        gap = None
        if lower is not None and math.isfinite(lower) and lower > 0 and fb.total_cost_per_hour > 1e-9:
            gap = max(0.0, 1 - lower / fb.total_cost_per_hour)   # against the variant phase's bound
        return _replace(fb, planner="milp", status="fallback", notes=fb.notes + note, gap=gap,
                        solve_seconds=time.perf_counter() - t0)
    gap = res.gap
    if gap is None and res.status == "optimal":
        gap = opts.gap               # CBC proved optimality within its relative gap tolerance
    if gap is None:  # CBC stopped early and reports no bound: compare with the LP relaxation
        relax = Model(problem, up_only=up, previous=previous,
                      churn_penalty=opts.churn_penalty if previous is not None else 0.0)
        lb = S.lp_bound(relax, opts)
        gap = 0.0 if (lb is None or res.objective is None or res.objective <= 1e-9) \
            else max(0.0, (res.objective - lb) / res.objective)
    notes = (f"solver {S.solver_name(opts)}",)
    p = S.extract(model, planner="milp", status=res.status, seconds=time.perf_counter() - t0,
                  gap=gap, notes=notes, previous=previous)
    return _explained(problem, p, opts)


def _gap(cost: float, lower: Optional[float]) -> Optional[float]:
    if lower is None or not math.isfinite(lower) or lower <= 0:
        return None                            # no proven bound on the whole problem
    return max(0.0, (cost - lower) / cost) if cost > 1e-9 else 0.0


def _place(problem, choice, opts, t0, up, previous, churn, lower, time_limit, fixed=None):
    """Phase 2: the placement MILP for a fixed choice; stops once within the gap of ``lower``.
    Given ``fixed`` (an earlier placement's model) it goes on from that plan."""
    warm = fixed is not None
    if fixed is None:
        fixed = Model(problem, up_only=up, previous=previous, churn_penalty=churn, fix_choice=choice)
    stop = lower / (1.0 - opts.gap) if lower is not None and math.isfinite(lower) and lower > 0 else None
    res = S.run(fixed, opts, time_limit=time_limit, stop_at=stop, warm=warm,
                rel_gap=opts.gap if stop is None else 0.25 * opts.gap)
    return fixed, res


def _two_phase_hull(problem, model, opts, t0, up, previous, churn):
    """Variants on R with the accuracy hull cuts, then placement (atoll.planner.decompose)."""
    from atoll.planner import decompose as D

    tl = opts.time_limit
    left = lambda: tl - (time.perf_counter() - t0)  # noqa: E731
    R = D.relaxation(model)
    Z = D.AccuracySet.of(model)
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
        from atoll.planner.baselines import pick_cheapest_variants
        choice = pick_cheapest_variants(problem, [q for q in problem.pools if problem.pool_allowed(q)])
        if choice is None:
            return None, lower
    # placement; when the bound is likely short, leave time to raise it afterwards
    short = not math.isfinite(value) or value - lower > 0.6 * opts.gap * value
    fixed, res = _place(problem, choice, opts, t0, up, previous, churn, lower,
                        max(0.3 * tl, 0.5 * left() if short else left()))
    steps.append("placement")
    if res.status not in ("optimal", "time_limit"):
        return None, lower
    cost = res.objective
    gap = _gap(cost, lower)
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
            fixed2, res2 = _place(problem, ch, opts, t0, up, previous, churn, lower, left())
            if res2.status in ("optimal", "time_limit") and res2.objective < cost:
                fixed, res, cost = fixed2, res2, res2.objective
        gap = _gap(cost, lower)
    if short and (gap is None or gap > opts.gap) and left() > 0.1 * tl and res.status == "time_limit":
        # the bound could not move: the time kept for it goes back to the placement
        kept = [(v, v.varValue) for v in fixed.prob.variables()]
        _, res2 = _place(problem, choice, opts, t0, up, previous, churn, lower, left(), fixed=fixed)
        if res2.status in ("optimal", "time_limit") and res2.objective < cost:
            res, cost = res2, res2.objective
            gap = _gap(cost, lower)
        else:                                  # keep the first plan's values
            for v, x in kept:
                v.varValue = x
        steps.append("placement again")
    status = "optimal" if gap is not None and gap <= opts.gap + 1e-9 else "time_limit"
    notes = (f"solver {S.solver_name(opts)}, two-phase: {', then '.join(steps)}",)
    return S.extract(fixed, planner="milp", status=status, seconds=time.perf_counter() - t0,
                     gap=gap, notes=notes, previous=previous), lower


def _two_phase_pulp(problem, model, opts, t0, up, previous, churn, search):
    """The earlier variant searches (``variant_search`` "highs" or "bb") on the pulp model."""
    from atoll.planner.decompose import variant_branch_and_bound, variant_milp
    if search == "highs":
        # variant phase on a relaxation: node counts continuous, each edge's messages at
        # their smallest size (flows then need no variant index): smaller, still a bound
        relaxed = Model(problem, up_only=up, previous=previous, churn_penalty=churn, relax_sizes=True)
        left = opts.phase1_share * opts.time_limit - (time.perf_counter() - t0)
        choice, lower, nodes = variant_milp(relaxed, max(0.2 * opts.time_limit, left), opts.gap, opts)
    else:
        choice, lower, nodes = variant_branch_and_bound(model, 0.6 * opts.time_limit, opts.gap)
    if choice is None and lower is None:
        raise diagnose(problem, opts)
    if choice is None:  # out of time before a first choice: the greedy one, placed exactly
        from atoll.planner.baselines import pick_cheapest_variants
        choice = pick_cheapest_variants(problem, [q for q in problem.pools if problem.pool_allowed(q)])
        nodes = "no"
    if choice is not None:
        fixed = Model(problem, up_only=up, previous=previous, churn_penalty=churn, fix_choice=choice)
        left = max(0.3 * opts.time_limit, opts.time_limit - (time.perf_counter() - t0))
        res = S.run(fixed, opts, time_limit=left)
        if res.status in ("optimal", "time_limit"):
            gap = _gap(res.objective, lower)
            status = "optimal" if gap is not None and gap <= opts.gap + 1e-9 else "time_limit"
            notes = (f"solver {S.solver_name(opts)}, two-phase: {nodes} variant nodes, then placement",)
            p = S.extract(fixed, planner="milp", status=status, seconds=time.perf_counter() - t0,
                          gap=gap, notes=notes, previous=previous)
            return p, lower
    return None, lower


def _explained(problem: PlanProblem, p: Plan, opts: PlanOptions) -> Plan:
    if opts.explain:
        from atoll.planner.explain import explain
        p = _replace(p, explain=explain(problem, p, opts))
    return p


def _replace(p: Plan, **kw) -> Plan:
    from dataclasses import replace
    return replace(p, **kw)
