"""Solving a built :class:`~atoll.planner.milp.Model` and reading a :class:`Plan` out of it."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import pulp

from atoll.planner.milp import K_COST, Model, PlanOptions
from atoll.planner.plan import HostGroup, Plan, Replica, Route
from atoll.planner.problem import PlanProblem, loc_str

EPS = 1e-7


def _highs_ok() -> bool:
    try:
        return bool(pulp.HiGHS().available())
    except Exception:
        return False


_BANNER_DONE = False


def _silence_highs_banner() -> None:
    """HiGHS prints a copyright banner on C stdout when the first model of a process is made;
    make that first one with stdout pointed at /dev/null so JSON output stays clean."""
    global _BANNER_DONE
    if _BANNER_DONE:
        return
    _BANNER_DONE = True
    try:
        import os
        import sys
        import highspy
        sys.stdout.flush()
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(null)
            os.close(saved)
    except Exception:
        pass


def solver_name(opts: PlanOptions) -> str:
    if opts.solver == "cbc":
        return "cbc"
    if opts.solver == "highs" or _highs_ok():
        return "highs"
    return "cbc"


@dataclass
class SolveResult:
    status: str                 # optimal | time_limit | infeasible | no_solution
    seconds: float
    objective: Optional[float]
    gap: Optional[float]


def run(model: Model, opts: PlanOptions, *, time_limit: Optional[float] = None, mip: bool = True) -> SolveResult:
    """Solve ``model.prob``; never raises for infeasibility (the caller decides)."""
    tl = opts.time_limit if time_limit is None else time_limit
    which = solver_name(opts)
    t0 = time.perf_counter()
    if model.empty_tasks:
        return SolveResult("infeasible", 0.0, None, None)
    if which == "highs":
        _silence_highs_banner()
        solver = pulp.HiGHS(msg=False, timeLimit=tl, gapRel=opts.gap, threads=opts.threads, mip=mip)
    else:
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(math.ceil(tl))), gapRel=opts.gap,
                                   threads=opts.threads, mip=mip)
    model.prob.solve(solver)
    secs = time.perf_counter() - t0
    st = model.prob.status
    if st in (pulp.LpStatusInfeasible, pulp.LpStatusUnbounded):
        return SolveResult("infeasible", secs, None, None)
    obj = pulp.value(model.prob.objective)
    gap = None
    if which == "highs":
        import highspy
        h = model.prob.solverModel
        info = h.getInfo()
        has = info.primal_solution_status == 2
        ms = h.getModelStatus()
        if ms in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
            return SolveResult("infeasible", secs, None, None)
        if not has:
            return SolveResult("no_solution", secs, None, None)
        obj = info.objective_function_value
        status = "optimal" if ms == highspy.HighsModelStatus.kOptimal else "time_limit"
        if mip and info.mip_node_count >= 0 and math.isfinite(info.mip_dual_bound):
            bound = info.mip_dual_bound
            gap = 0.0 if abs(obj) < 1e-9 else max(0.0, (obj - bound) / abs(obj))
            if model.mode == "throughput":
                gap = 0.0 if abs(obj) < 1e-9 else max(0.0, (bound - obj) / abs(obj))
        else:
            gap = 0.0
    else:
        if st != pulp.LpStatusOptimal or model.prob.sol_status not in (1, 2):
            return SolveResult("no_solution", secs, None, None)
        status = "optimal" if model.prob.sol_status == 1 else "time_limit"
        gap = None
    return SolveResult(status, secs, obj, gap)


def lp_bound(model: Model, opts: PlanOptions) -> Optional[float]:
    """Objective of the LP relaxation (a lower bound), for solvers that report no bound."""
    res = run(model, PlanOptions(**{**opts.__dict__, "solver": "cbc"}), mip=False)
    return res.objective


def _val(v) -> float:
    x = v.varValue
    return 0.0 if x is None else float(x)


def extract(model: Model, *, planner: str, status: str, seconds: float, gap: Optional[float],
            notes: tuple[str, ...] = ()) -> Plan:
    """Read the solution into a Plan; costs are recomputed from the rounded integers."""
    pb = model.pb
    choice = {}
    for (t, m), zv in model.z.items():
        if _val(zv) > 0.5:
            choice[t] = m
    hosts_n = {k: int(round(_val(v))) for k, v in model.h.items()}
    rate = {k: _val(v) for k, v in model.r.items() if _val(v) > EPS}
    # hosts per (group, pool) with their members
    members = defaultdict(list)
    load = defaultdict(float)
    for (t, m, p), x in rate.items():
        g = model.vgroup[(t, m)]
        members[(g, p)].append((t, m))
        load[(g, p)] += x / model.mu[(t, m, p)]
    hosts = []
    replicas = []
    compute = 0.0
    for (g, p), n in sorted(hosts_n.items()):
        if n <= 0:
            continue
        price = model.pools[p].price_per_hour
        cost = n * price
        compute += cost
        mem = tuple(sorted(members.get((g, p), [])))
        hosts.append(HostGroup(group=g, pool=p, count=n, members=mem, cost_per_hour=cost))
        for (t, m) in mem:
            x = rate[(t, m, p)]
            share = (x / model.mu[(t, m, p)]) / load[(g, p)] if load[(g, p)] > 0 else 1.0 / len(mem)
            others = tuple(f"{a}:{b}" for a, b in mem if (a, b) != (t, m))
            replicas.append(Replica(task=t, variant=m, pool=p, location=loc_str(model.pools[p].location),
                                    replicas=n, rate=x, utilization=x / (model.mu[(t, m, p)] * n),
                                    cost_per_hour=cost * share, shared_with=others))
    order = {t.name: i for i, t in enumerate(pb.tasks)}
    replicas.sort(key=lambda r: (order[r.task], r.pool))
    # routes
    agg = defaultdict(float)
    size_of = {}
    transfer = 0.0
    for (ei, a, b, l1, l2), (var, size) in model.f.items():
        x = _val(var)
        if x <= EPS:
            continue
        e = pb.edges[ei]
        agg[(ei, l1, l2)] += x
        size_of[(ei, l1, l2)] = size
        transfer += K_COST * size * pb.network.price(l1, l2) * x
    out_tot = defaultdict(float)
    for (ei, l1, l2), x in agg.items():
        out_tot[(ei, l1)] += x
    routes = []
    for (ei, l1, l2), x in sorted(agg.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        e = pb.edges[ei]
        size = size_of[(ei, l1, l2)]
        routes.append(Route(src=e.src, dst=e.dst, from_location=loc_str(l1), to_location=loc_str(l2),
                            rate=x, size_kb=size, weight=x / out_tot[(ei, l1)],
                            cost_per_hour=K_COST * size * pb.network.price(l1, l2) * x))
    moved = 0
    if model.h0:
        keys = set(model.h0) | set(hosts_n)
        moved = sum(abs(hosts_n.get(k, 0) - model.h0.get(k, 0)) for k in keys)
    acc = pb.accuracy_of(choice) if len(choice) == len(pb.tasks) else 0.0
    return Plan(planner=planner, status=status, variants=choice, hosts=tuple(hosts),
                replicas=tuple(replicas), routes=tuple(routes), compute_cost_per_hour=compute,
                transfer_cost_per_hour=transfer, accuracy=acc, solve_seconds=seconds, gap=gap,
                moved_replicas=moved, notes=notes)


def evaluate(problem: PlanProblem, choice: dict, hosts: dict, *, planner: str, up_only: bool = False,
             previous=None, opts: Optional[PlanOptions] = None, seconds: float = 0.0) -> Optional[Plan]:
    """Cost of a fixed variant choice and host placement, routed at least cost (an LP).
    Returns None when that placement cannot carry the load."""
    opts = opts or PlanOptions()
    t0 = time.perf_counter()
    model = Model(problem, up_only=up_only, previous=previous, fix_choice=choice, fix_hosts=hosts)
    res = run(model, opts)
    if res.status not in ("optimal", "time_limit"):
        return None
    return extract(model, planner=planner, status="feasible", seconds=seconds + time.perf_counter() - t0,
                   gap=None)
