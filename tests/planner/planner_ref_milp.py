"""Test-only reference: the planning problem as a second MILP, written apart from planner/milp.py.

It shares no code with the planner beyond the problem's plain lookups (rates, prices, the
profiles' lines), and differs in every modelling choice the planner makes for speed: one integer
per (base group, pool) -- no merging of pools alike but for price --, request rates in req/s
(not shares), flows per (edge, producer variant, consumer variant, location pair) whatever the
message sizes, and accuracy by big-M lines on the profiles in the accuracy's own units, with one
valid row per source-to-sink path of default profiles (sum of ln acc >= ln min_accuracy) so
that its relaxation is not left at the cheapest variants. It
covers the problems the benchmark generates and the families of the tests: default and explicit
profiles (the profile model), joins and fan-outs, merged source streams, variant-dependent
message sizes, bandwidth caps, data-up-only, and LoRA groups (a node holds a set of a group's
adapters that fits its memory). Solved by HiGHS for as long as it is given,
it reports the best plan and the best bound it reached: the bound is what the benchmark and the
tests hold the planner's claimed gaps against.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import highspy
import pulp

K = 3.6e-3                 # KB/s -> GB/h
MBIT = 0.008               # KB/s -> Mbit/s
RANK = {"edge": 0, "renter": 1, "datacenter": 2}


@dataclass
class Reference:
    status: str            # optimal | time_limit | infeasible | no_solution
    cost: Optional[float]  # best plan found
    bound: Optional[float]  # best proven lower bound
    seconds: float


def _allowed(pb, p) -> bool:
    return (p.count > 0 and p.tier not in pb.forbid_tiers and p.region not in pb.forbid_regions
            and (p.region, p.tier) not in pb.forbid_locations and (p.region, None) not in pb.forbid_locations)


def _speed(pb, v, p) -> float:
    if not _allowed(pb, p):
        return 0.0
    if p.gpu_memory_gb > 0 and v.memory_gb + v.adapter_memory_gb > p.gpu_memory_gb + 1e-9:
        return 0.0
    return float(v.rps.get(p.hardware, 0.0))


def _default_paths(pb, cap: int = 1000) -> list[list[str]]:
    """Source-to-sink paths of tasks (at most ``cap``) on which no variant has an explicit profile.
    Along such a path the output accuracy is at most the product of the variants' accuracies
    (a task's input is the least accurate of its inputs), so for every plan
    sum over the path of ln(acc) >= ln(min_accuracy): a row that holds without big-M."""
    if pb.min_accuracy is None or pb.min_accuracy <= 0:
        return []
    tasks = {t.name: t for t in pb.tasks}
    children = {}
    for e in pb.edges:
        if e.src in tasks:
            children.setdefault(e.src, []).append(e.dst)
    plain = {t.name for t in pb.tasks if all(v.profile is None and v.accuracy > 0 for v in t.variants)}
    starts = [t.name for t in pb.tasks if any(pb.source(p) is not None for p in t.parents)]
    paths, stack = [], [[t] for t in starts]
    while stack and len(paths) < cap:
        path = stack.pop()
        nxt = children.get(path[-1], [])
        if not nxt:
            if all(t in plain for t in path):
                paths.append(path)
        stack.extend(path + [c] for c in nxt)
    return paths


def build(pb, up_only: bool = False, path_rows: bool = True) -> tuple[pulp.LpProblem, dict]:
    if pb.accuracy_model != "profile":
        raise ValueError("the reference MILP covers the profile accuracy model only")
    up_only = up_only or pb.data_up_only
    prob = pulp.LpProblem("reference", pulp.LpMinimize)
    var = prob.add_variable
    tasks = {t.name: t for t in pb.tasks}
    pools = [p for p in pb.pools if _allowed(pb, p)]
    z = {(t.name, v.name): var(f"z{i}_{j}", cat="Binary") for i, t in enumerate(pb.tasks)
         for j, v in enumerate(t.variants)}
    groups = {}
    for t in pb.tasks:
        for v in t.variants:
            groups.setdefault(v.group, []).append((t.name, v))
    # node kinds per (group, pool): the members that may share one node -- all of them when their
    # adapters fit beside the largest base, else every largest set that fits
    kinds = []
    for g, members in groups.items():
        for p in pools:
            here = [(t, v) for t, v in members if _speed(pb, v, p) > 0]
            if not here:
                continue
            fits = lambda sub: (p.gpu_memory_gb <= 0 or max(v.memory_gb for _, v in sub)  # noqa: E731
                                + sum(v.adapter_memory_gb for _, v in sub) <= p.gpu_memory_gb + 1e-9)
            subsets = [sub for k in range(len(here), 0, -1) for sub in itertools.combinations(here, k) if fits(sub)]
            for sub in subsets:
                if not any(set(map(id, sub)) < set(map(id, other)) for other in subsets):
                    kinds.append((g, p, sub))
    n = {k: var(f"n{k}", lowBound=0, upBound=kinds[k][1].count, cat="Integer") for k in range(len(kinds))}
    share = {}                               # (task, variant, pool, kind) -> req/s on nodes of that kind
    for k, (g, p, sub) in enumerate(kinds):
        for t, v in sub:
            share[(t, v.name, p.id, k)] = var(f"s{len(share)}", lowBound=0)
        prob += pulp.lpSum(share[(t, v.name, p.id, k)] * (1.0 / _speed(pb, v, p)) for t, v in sub) <= n[k]
    x = {}                                   # (task, variant, pool) -> req/s
    for (t, v, pid, _k), sv in share.items():
        x.setdefault((t, v, pid), []).append(sv)
    x = {key: pulp.lpSum(vs) for key, vs in x.items()}
    cost = [p.price_per_hour * n[k] for k, (_, p, _) in enumerate(kinds)]
    for t in pb.tasks:
        prob += pulp.lpSum(z[(t.name, v.name)] for v in t.variants) == 1
        for v in t.variants:
            prob += pulp.lpSum(x[k] for k in x if k[:2] == (t.name, v.name)) == t.rate * z[(t.name, v.name)]
    for p in pools:
        prob += pulp.lpSum(n[k] for k, (_, q, _) in enumerate(kinds) if q.id == p.id) <= p.count
    # requests of each (task, variant) by location
    at = {}
    for (t, v, pid), xv in x.items():
        loc = pb.pool(pid).location
        at.setdefault((t, v, loc), []).append(xv)
    links = {}
    into = {}                                # (input group, consumer variant, location) -> flow vars
    for ei, e in enumerate(pb.edges):
        w = tasks[e.dst]
        src = pb.source(e.src)
        prods = [(None, src.location)] if src else [(v, loc) for (t, v, loc) in at if t == e.src]
        cons = [(v, loc) for (t, v, loc) in at if t == e.dst]
        flows = {}
        for a, l1 in prods:
            for b, l2 in cons:
                if up_only and RANK[l2[1]] < RANK[l1[1]]:
                    continue
                f = var(f"f{ei}_{len(flows)}", lowBound=0)
                flows[(a, l1, b, l2)] = f
                size = e.size(a, b)
                cost.append(K * size * pb.network.price(l1, l2) * f)
                cap = pb.network.bandwidth(l1, l2)
                if cap is not None:
                    links.setdefault((l1, l2), [cap, []])[1].append(MBIT * size * f)
        for a, l1 in prods:                  # what each producer location sends
            out = pulp.lpSum(f for (a2, m1, _, _), f in flows.items() if (a2, m1) == (a, l1))
            if src:
                prob += out == e.rate
            else:
                prob += out == (e.rate / tasks[e.src].rate) * pulp.lpSum(at[(e.src, a, l1)])
        key = ("sources", e.dst) if src else ei
        for b, l2 in cons:
            into.setdefault((key, b, l2), []).append(
                pulp.lpSum(f for (_, _, b2, m2), f in flows.items() if (b2, m2) == (b, l2)))
    for (key, b, l2), terms in into.items():
        prob += pulp.lpSum(terms) == pulp.lpSum(at[(key[1] if isinstance(key, tuple) else pb.edges[key].dst, b, l2)])
    for cap, terms in links.values():
        prob += pulp.lpSum(terms) <= cap
    if pb.min_accuracy is not None:
        y = {t.name: var(f"y{i}", lowBound=0, upBound=1) for i, t in enumerate(pb.tasks)}
        for t in pb.tasks:
            for v in t.variants:
                lines = ([(v.accuracy, 0.0)] if not v.profile else
                         [((y1 - y0) / (x1 - x0), y0 - x0 * (y1 - y0) / (x1 - x0))
                          for (x0, y0), (x1, y1) in zip(v.profile, v.profile[1:])])
                for par in t.parents:
                    for slope, icpt in lines:
                        yin = 1.0 if pb.source(par) else y[par]
                        big = max(0.0, 1.0 - min(icpt, slope + icpt))
                        prob += y[t.name] <= slope * yin + icpt + big * (1 - z[(t.name, v.name)])
        for s in pb.sinks():
            prob += y[s] >= pb.min_accuracy
        for path in _default_paths(pb) if path_rows else ():   # valid rows tightening the big-M lines
            prob += pulp.lpSum(math.log(v.accuracy) * z[(t, v.name)] for t in path
                               for v in tasks[t].variants) >= math.log(pb.min_accuracy)
    prob += pulp.lpSum(cost)
    return prob, {"z": z, "n": n}


def solve(pb, time_limit: float = 120.0, up_only: bool = False, gap: float = 1e-6) -> Reference:
    """Solve the reference MILP; its bound is valid whatever the status (when it has one)."""
    prob, _ = build(pb, up_only)
    solver = pulp.HiGHS(msg=False, timeLimit=time_limit, gapRel=gap)
    prob.solve(solver)
    h = prob.solverModel
    info = h.getInfo()
    st = h.getModelStatus()
    if st in (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        return Reference("infeasible", None, None, h.getRunTime())
    bound = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else None
    if info.primal_solution_status != 2:
        return Reference("no_solution", None, bound, h.getRunTime())
    status = "optimal" if st == highspy.HighsModelStatus.kOptimal else "time_limit"
    return Reference(status, info.objective_function_value, bound, h.getRunTime())
