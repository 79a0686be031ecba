"""Baseline planners, each with the MILP's interface ``f(problem, previous=None, options=None)``.

- ``greedy``: cheapest-feasible greedy. Per task the variant of least compute $ per req/s,
  upgraded one step at a time (best accuracy gain per $) until the accuracy SLO holds; replicas
  on the pools of least $ per req/s. No sharing of base models across tasks.
- ``cloud_only``: the same, on datacenter pools only.
- ``most_accurate``: the most accurate placeable variant of every task, placed cheapest first.

All route data at least cost for the placement they chose (an LP), which flatters them.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional

from atoll.core.errors import PlanInfeasible
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem, Pool, Variant
from atoll.planner import solve as S


def unit_cost(problem: PlanProblem, v: Variant, pools: Iterable[Pool]) -> float:
    """Least $/h per req/s of ``v`` over ``pools`` (inf if it runs on none)."""
    best = math.inf
    for p in pools:
        mu = problem.mu(v, p)
        if mu > 0:
            best = min(best, p.price_per_hour / mu)
    return best


def pick_cheapest_variants(problem: PlanProblem, pools: list[Pool]) -> Optional[dict[str, str]]:
    """Cheapest variants, upgraded greedily until the accuracy SLO holds; None if it never does."""
    cost = {(t.name, m.name): unit_cost(problem, m, pools) * t.rate for t in problem.tasks for m in t.variants}
    cand = {t.name: [m for m in t.variants if math.isfinite(cost[(t.name, m.name)])] for t in problem.tasks}
    if any(not c for c in cand.values()):
        return None
    if problem.accuracy_model == "table":
        rows = [dict(c) for c, _ in problem.accuracy_table]
        rows = [r for r in rows if all(math.isfinite(cost.get((t, m), math.inf)) for t, m in r.items())
                and problem.accuracy_ok(r)]
        return min(rows, key=lambda r: sum(cost[(t, m)] for t, m in r.items()), default=None)
    choice = {t: min(c, key=lambda m: (cost[(t, m.name)], -m.accuracy)).name for t, c in cand.items()}
    for _ in range(1000):
        if problem.accuracy_ok(choice):
            return choice
        base_acc = problem.accuracy_of(choice)
        base_loss = problem.accuracy_loss(choice)
        best, best_score = None, -math.inf
        for t, c in cand.items():
            cur = problem.task(t).variant(choice[t])
            for m in c:
                if m.accuracy <= cur.accuracy:
                    continue
                trial = {**choice, t: m.name}
                gain = (problem.accuracy_of(trial) - base_acc) + (base_loss - problem.accuracy_loss(trial))
                extra = max(cost[(t, m.name)] - cost[(t, cur.name)], 1e-9)
                score = gain / extra
                if score > best_score:
                    best, best_score = trial, score
        if best is None:
            return None
        choice = best
    return None


def pick_most_accurate(problem: PlanProblem, pools: list[Pool]) -> Optional[dict[str, str]]:
    choice = {}
    for t in problem.tasks:
        c = [m for m in t.variants if math.isfinite(unit_cost(problem, m, pools))]
        if not c:
            return None
        choice[t.name] = max(c, key=lambda m: (m.accuracy, -unit_cost(problem, m, pools))).name
    if problem.accuracy_model == "table" and not problem.accuracy_ok(choice):
        rows = [dict(c) for c, _ in problem.accuracy_table]
        rows = [r for r in rows if all(math.isfinite(unit_cost(problem, problem.task(t).variant(m), pools))
                                       for t, m in r.items())]
        if not rows:
            return None
        choice = max(rows, key=lambda r: problem.accuracy_of(r))
    return choice


def place_cheapest(problem: PlanProblem, choice: dict[str, str], pools: list[Pool],
                   order: Optional[Callable[[str, Pool], tuple]] = None) -> Optional[dict]:
    """Whole nodes per task on the pools of least $ per req/s (``order`` may re-rank pools)."""
    left = {p.id: p.count for p in pools}
    hosts: dict[tuple[str, str], int] = {}
    for t in problem.tasks:
        v = t.variant(choice[t.name])
        need = t.rate
        ranked = sorted((p for p in pools if problem.mu(v, p) > 0),
                        key=order and (lambda p: order(t.name, p)) or
                        (lambda p: (p.price_per_hour / problem.mu(v, p), p.id)))
        for p in ranked:
            if need <= 1e-9:
                break
            mu = problem.mu(v, p)
            n = min(left[p.id], math.ceil(need / mu - 1e-9))
            if n <= 0:
                continue
            left[p.id] -= n
            hosts[(v.group, p.id)] = hosts.get((v.group, p.id), 0) + n
            need -= n * mu
        if need > 1e-6:
            return None
    return hosts


def finish(problem, choice, hosts, name, t0, previous, opts, up_only=False, rates=None) -> Plan:
    """The Plan of a heuristic's choice and nodes (and request split), routed by the LP; raises
    PlanInfeasible when the heuristic found nothing or its placement cannot carry the load."""
    if choice is None or hosts is None:
        raise PlanInfeasible(f"{name}: no plan found by this heuristic", slo="heuristic",
                             hint="the MILP planner may still find one")
    p = S.evaluate(problem, choice, hosts, planner=name, up_only=up_only or problem.data_up_only,
                   previous=previous, opts=opts, seconds=time.perf_counter() - t0, rates=rates)
    if p is None:
        raise PlanInfeasible(f"{name}: its placement cannot carry the load (bandwidth or memory)",
                             slo="heuristic", hint="the MILP planner may still find one")
    return p


def _pick_and_place(name: str, pick, problem: PlanProblem, previous, options, datacenter_only=False) -> Plan:
    """A baseline: variants by ``pick``, nodes by :func:`place_cheapest`, routing by the LP."""
    t0 = time.perf_counter()
    pools = [p for p in problem.pools if problem.pool_allowed(p) and (p.tier == "datacenter" or not datacenter_only)]
    choice = pick(problem, pools)
    hosts = place_cheapest(problem, choice, pools) if choice else None
    return finish(problem, choice, hosts, name, t0, previous, options,
                   up_only=bool(options and options.data_up_only))


def greedy_plan(problem: PlanProblem, previous: Optional[Plan] = None,
                options: Optional[PlanOptions] = None) -> Plan:
    return _pick_and_place("greedy", pick_cheapest_variants, problem, previous, options)


def cloud_only_plan(problem: PlanProblem, previous: Optional[Plan] = None,
                    options: Optional[PlanOptions] = None) -> Plan:
    return _pick_and_place("cloud_only", pick_cheapest_variants, problem, previous, options, datacenter_only=True)


def most_accurate_plan(problem: PlanProblem, previous: Optional[Plan] = None,
                       options: Optional[PlanOptions] = None) -> Plan:
    return _pick_and_place("most_accurate", pick_most_accurate, problem, previous, options)
