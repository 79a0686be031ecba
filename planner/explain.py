"""Why a plan looks the way it does: the binding constraints and what each SLO costs.

Each SLO's price is measured by re-planning without it (or with more load) and comparing;
these re-plans are MILPs of the same size, so ``--explain`` takes a few times longer. The
planner that re-plans is passed in (``replan``, the MILP's ``plan`` in practice).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable

from atoll.core.errors import PlanInfeasible
from atoll.planner.milp import MBPS_PER_KB
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem


def binding_constraints(problem: PlanProblem, plan: Plan, opts: PlanOptions) -> list[str]:
    out = []
    used = defaultdict(int)
    for h in plan.hosts:
        used[h.pool] += h.count
    for p in problem.pools:
        if used.get(p.id, 0) >= p.count and p.count > 0:
            out.append(f"pool {p.id} is full ({used[p.id]}/{p.count} nodes)")
    mbps = defaultdict(float)
    for r in plan.routes:
        mbps[(r.from_location, r.to_location)] += r.rate * r.size_kb * MBPS_PER_KB
    for (a, b), x in sorted(mbps.items()):
        la, lb = tuple(a.split("/")), tuple(b.split("/"))
        cap = problem.network.bandwidth(la, lb)
        if cap is not None and x >= 0.99 * cap:
            out.append(f"link {a} -> {b} at its bandwidth cap ({x:.1f}/{cap:g} Mbit/s)")
    if problem.min_accuracy is not None and plan.accuracy - problem.min_accuracy < 0.01:
        out.append(f"accuracy SLO is tight ({plan.accuracy:.3f} against >= {problem.min_accuracy:.3f})")
    if opts.data_up_only or problem.data_up_only:
        out.append("data may only move up the tiers (JellyBean's rule)")
    for t in problem.tasks:
        util = [r for r in plan.replicas if r.task == t.name and r.utilization >= 0.999]
        for r in util:
            out.append(f"{t.name} on {r.pool} runs at full capacity ({r.rate:.1f} req/s on {r.replicas} nodes)")
    return out


Replan = Callable[..., Plan]


def _cost(replan: Replan, problem: PlanProblem, opts: PlanOptions) -> float | None:
    try:
        return replan(problem, options=replace(opts, explain=False)).total_cost_per_hour
    except PlanInfeasible:
        return None


def explain(problem: PlanProblem, plan: Plan, opts: PlanOptions, replan: Replan) -> dict[str, Any]:
    """The binding constraints of ``plan`` and what each SLO costs, re-planning with ``replan``
    (a function with the planners' interface)."""
    base = plan.total_cost_per_hour
    costs: dict[str, Any] = {}
    if problem.min_accuracy is not None or problem.max_accuracy_loss is not None:
        free = _cost(replan, replace(problem, min_accuracy=None, max_accuracy_loss=None), opts)
        if free is not None:
            costs["accuracy"] = {"cost_without_slo": round(free, 4), "slo_costs_per_hour": round(max(0.0, base - free), 4)}
    more = _cost(replan, problem.scaled(1.1), opts)
    rate = problem.total_source_rate
    costs["throughput"] = {
        "average_cost_per_req_s": round(base / rate, 6) if rate else None,
        "marginal_cost_per_req_s": None if more is None else round((more - base) / (0.1 * rate), 6),
    }
    if not (opts.data_up_only or problem.data_up_only):
        up = _cost(replan, problem, replace(opts, data_up_only=True))
        costs["data_up_only"] = {"cost_with_rule": None if up is None else round(up, 4),
                                 "extra_per_hour": None if up is None else round(max(0.0, up - base), 4)}
    return {"binding": binding_constraints(problem, plan, opts), "slo_costs": costs}
