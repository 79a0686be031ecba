"""Solving a built :class:`~atoll.planner.milp.Model` and reading a :class:`Plan` out of it."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Optional

import pulp

from atoll.planner import highs
from atoll.planner.milp import K_COST, Model
from atoll.planner.options import PlanOptions
from atoll.planner.plan import HostGroup, Plan, Replica, Route
from atoll.planner.problem import PlanProblem, loc_str

EPS = 1e-7


def solver_name(opts: PlanOptions) -> str:
    """``opts.solver``, with "auto" meaning HiGHS when highspy is installed, else CBC."""
    if opts.solver == "cbc":
        return "cbc"
    if opts.solver == "highs" or highs.AVAILABLE:
        return "highs"
    return "cbc"


@dataclass
class SolveResult:
    status: str                 # optimal | time_limit | infeasible | no_solution
    seconds: float
    objective: Optional[float]
    gap: Optional[float]
    bound: Optional[float] = None   # the solver's dual bound, when it reports one


def _highs_with(stop_at: Optional[float], bound_at: Optional[float], warm: bool, **kw):
    """pulp's HiGHS, interrupted once the incumbent costs at most ``stop_at`` or the bound
    reaches ``bound_at``, and started from the variables' current values when ``warm``."""
    low = -math.inf if stop_at is None else stop_at
    high = math.inf if bound_at is None else bound_at

    class With(pulp.HiGHS):
        def callSolver(self, lp):
            h = lp.solverModel
            if stop_at is not None or bound_at is not None:
                highs.stop_when(h, lambda primal, dual: primal <= low or dual >= high)
            if warm:
                vals = [0.0] * h.getNumCol()
                for v in lp.variables():
                    if v.varValue is not None:
                        vals[v.index] = float(v.varValue)
                highs.start_from(h, vals)
            h.run()

    return With(**kw)


def run(model: Model, opts: PlanOptions, *, time_limit: Optional[float] = None, mip: bool = True,
        stop_at: Optional[float] = None, bound_at: Optional[float] = None,
        rel_gap: Optional[float] = None, warm: bool = False) -> SolveResult:
    """Solve ``model.prob``; never raises for infeasibility (the caller decides). With HiGHS,
    ``stop_at`` ends the search once a plan costs at most that much (the caller holds a bound
    that makes it good enough), ``bound_at`` once the bound proves no plan costs less (the
    caller holds a plan that good), ``warm`` starts from the values of an earlier solve;
    ``rel_gap`` overrides ``opts.gap`` as the solver's own target."""
    tl = opts.time_limit if time_limit is None else time_limit
    which = solver_name(opts)
    t0 = time.perf_counter()
    if model.empty_tasks:
        return SolveResult("infeasible", 0.0, None, None)
    if which == "highs":
        kw = dict(msg=False, timeLimit=tl, gapRel=opts.gap if rel_gap is None else rel_gap,
                  threads=opts.threads, mip=mip)
        custom = (stop_at is not None or bound_at is not None or warm) and mip
        solver = _highs_with(stop_at, bound_at, warm, **kw) if custom else pulp.HiGHS(**kw)
    else:
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, int(math.ceil(tl))),
                                   gapRel=opts.gap if rel_gap is None else rel_gap,
                                   threads=opts.threads, mip=mip)
    model.prob.solve(solver)
    secs = time.perf_counter() - t0
    st = model.prob.status
    if st in (pulp.LpStatusInfeasible, pulp.LpStatusUnbounded):
        return SolveResult("infeasible", secs, None, None)
    obj = pulp.value(model.prob.objective)
    gap = None
    if which == "highs":
        h = model.prob.solverModel
        info = h.getInfo()
        has = info.primal_solution_status == 2
        if highs.infeasible(h):
            return SolveResult("infeasible", secs, None, None)
        if not has:
            b = info.mip_dual_bound if mip and math.isfinite(info.mip_dual_bound) else None
            if b is not None and model.prob.sense == pulp.LpMaximize:
                b = -b
            return SolveResult("no_solution", secs, None, None, b)
        obj = info.objective_function_value
        if model.prob.sense == pulp.LpMaximize:   # pulp hands HiGHS the negated objective
            obj = -obj
        status = "optimal" if highs.optimal(h) else "time_limit"
        bound = None
        if mip and info.mip_node_count >= 0 and math.isfinite(info.mip_dual_bound):
            bound = info.mip_dual_bound
            if model.prob.sense == pulp.LpMaximize:
                bound = -bound
            gap = 0.0 if abs(obj) < 1e-9 else max(0.0, (obj - bound) / abs(obj))
            if model.mode == "throughput":
                gap = 0.0 if abs(obj) < 1e-9 else max(0.0, (bound - obj) / abs(obj))
        elif status == "optimal":
            gap = 0.0                          # an LP, or a model with no integer left
        else:
            gap = None                         # stopped before any bound: nothing proven
    else:
        if st != pulp.LpStatusOptimal or model.prob.sol_status not in (1, 2):
            return SolveResult("no_solution", secs, None, None)
        status = "optimal" if model.prob.sol_status == 1 else "time_limit"
        gap = None
    return SolveResult(status, secs, obj, gap, bound if which == "highs" else None)


def rounded_start(model: Model, opts: PlanOptions, rounds: int = 30) -> bool:
    """A first plan for a placement MILP (variants fixed), by diving on its LP relaxation: the
    node counts whose fractional part is at least one half (or else the largest one) get that
    count rounded up as a lower bound, and the LP is solved again, until every count is whole.
    On success the model's variables hold that plan (a warm start for :func:`run`) and True is
    returned; False when the dive runs out of room. HiGHS' own first plans on such models can
    be far off."""
    ints = [v for v in model.prob.variables() if v.cat == pulp.LpInteger]
    saved = [(v, v.lowBound) for v in ints]
    try:
        for _ in range(rounds):
            if run(model, opts, mip=False).status != "optimal":
                return False
            frac = [(x - math.floor(x), v) for v in ints if (x := v.varValue or 0.0) - math.floor(x + 1e-6) > 1e-6]
            if not frac:
                return True
            top = max(f for f, _ in frac)
            for f, v in frac:
                if f >= min(0.5, top):
                    v.lowBound = math.ceil(v.varValue - 1e-6)
        return False
    finally:
        for v, lo in saved:
            v.lowBound = lo


def lp_bound(model: Model, opts: PlanOptions) -> Optional[float]:
    """Objective of the LP relaxation (a lower bound), for solvers that report no bound."""
    res = run(model, PlanOptions(**{**opts.__dict__, "solver": "cbc"}), mip=False)
    return res.objective


def _val(v) -> float:
    x = v.varValue
    return 0.0 if x is None else float(x)


def _to_pools(model: Model, class_h: dict, prev: dict) -> dict:
    """Class-level node counts -> per-pool counts: a class fills its cheapest pools first; a
    group keeps the pools it held in ``prev`` where it can (same cost, fewer moves)."""
    out: dict[tuple[str, str], int] = {}
    by_class = defaultdict(list)
    for (g, c), n in class_h.items():
        if n > 0:
            by_class[c].append((g, n))
    for c, groups in by_class.items():
        pools = model.class_pools[c]
        total = sum(n for _, n in groups)
        free = {}
        for p in pools:                       # cheapest pools first
            take = min(p.count, total)
            free[p.id] = take
            total -= take
        want = dict(groups)
        for g, _ in groups:                   # first, the pools each group already holds
            for p in pools:
                k = min(free[p.id], want[g], prev.get((g, p.id), 0))
                if k > 0:
                    out[(g, p.id)] = out.get((g, p.id), 0) + k
                    free[p.id] -= k
                    want[g] -= k
        for g, _ in groups:
            for p in pools:
                k = min(free[p.id], want[g])
                if k > 0:
                    out[(g, p.id)] = out.get((g, p.id), 0) + k
                    free[p.id] -= k
                    want[g] -= k
    return out


def extract(model: Model, *, planner: str, status: str, seconds: float, gap: Optional[float],
            notes: tuple[str, ...] = (), previous=None) -> Plan:
    """Read the solution into a Plan; costs are recomputed from the rounded integers."""
    pb = model.pb
    prev = dict(previous.host_counts()) if previous is not None else {}
    choice = {}
    for (t, m), zv in model.z.items():
        if _val(zv) > 0.5:
            choice[t] = m
    class_h = {k: int(round(_val(v))) for k, v in model.h.items()}
    rate = {k: _val(v) * model.rate[k[0]] for k, v in model.r.items() if _val(v) > EPS}
    hosts_n = _to_pools(model, class_h, prev)
    members = defaultdict(list)
    load = defaultdict(float)
    rate_of = {}
    for (t, m, c, g), x in rate.items():       # g: the configuration's label
        members[(g, c)].append((t, m))
        load[(g, c)] += x / model.mu[(t, m, c)]
        rate_of[(t, m, c, g)] = x
    hosts = []
    replicas = []
    compute = 0.0
    real = {p.id: p for p in pb.pools}
    for (g, p), n in sorted(hosts_n.items()):
        if n <= 0:
            continue
        c = model.class_of[p]
        cost = n * real[p].price_per_hour
        compute += cost
        frac = n / class_h[(g, c)]           # this pool's share of the class's nodes of g
        mem = tuple(sorted(members.get((g, c), [])))
        hosts.append(HostGroup(group=g, pool=p, count=n, members=mem, cost_per_hour=cost))
        for (t, m) in mem:
            x = rate_of[(t, m, c, g)] * frac
            share = (x / model.mu[(t, m, c)]) / (load[(g, c)] * frac) if load[(g, c)] > 0 else 1.0 / len(mem)
            others = tuple(f"{a}:{b}" for a, b in mem if (a, b) != (t, m))
            replicas.append(Replica(task=t, variant=m, pool=p, location=loc_str(real[p].location),
                                    replicas=n, rate=x, utilization=x / (model.mu[(t, m, c)] * n),
                                    cost_per_hour=cost * share, shared_with=others))
    order = {t.name: i for i, t in enumerate(pb.tasks)}
    replicas.sort(key=lambda r: (order[r.task], r.pool))
    # routes
    agg = defaultdict(float)
    size_of = {}
    transfer = 0.0
    for (ei, a, b, l1, l2), (var, size, scale) in model.f.items():
        x = _val(var) * scale
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
    if prev:
        keys = set(prev) | set(hosts_n)
        moved = sum(abs(hosts_n.get(k, 0) - prev.get(k, 0)) for k in keys)
    acc = pb.accuracy_of(choice) if len(choice) == len(pb.tasks) else 0.0
    return Plan(planner=planner, status=status, variants=choice, hosts=tuple(hosts),
                replicas=tuple(replicas), routes=tuple(routes), compute_cost_per_hour=compute,
                transfer_cost_per_hour=transfer, accuracy=acc, solve_seconds=seconds, gap=gap,
                moved_replicas=moved, notes=notes)


def evaluate(problem: PlanProblem, choice: dict, hosts: dict, *, planner: str, up_only: bool = False,
             previous=None, opts: Optional[PlanOptions] = None, seconds: float = 0.0,
             rates: Optional[dict] = None) -> Optional[Plan]:
    """Cost of a fixed variant choice and host placement (and, given ``rates``, a fixed split of
    each task's requests over pools), routed at least cost (an LP). Returns None when that
    placement cannot carry the load."""
    opts = opts or PlanOptions()
    opts = replace(opts, time_limit=max(opts.time_limit, 30.0), method="exact")  # a small LP/MILP
    t0 = time.perf_counter()
    model = Model(problem, up_only=up_only, previous=previous, fix_choice=choice, fix_hosts=hosts,
                  fix_rates=rates)
    res = run(model, opts)
    if res.status not in ("optimal", "time_limit"):
        return None
    return extract(model, planner=planner, status="feasible", seconds=seconds + time.perf_counter() - t0,
                   gap=None, previous=previous)
