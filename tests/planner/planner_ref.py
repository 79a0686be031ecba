"""Test-only reference: exhaustive search over variant choices and integer host counts.

For every variant choice meeting the accuracy SLO (accuracy recomputed here from the raw
profiles) and every vector of whole nodes per (base group, node configuration, pool) -- a
configuration is the set of tasks whose adapters share a node: all of the group, or each
maximal set that fits the node's memory -- the request split and the data routing are an LP, solved
here with *pool-level* flows (the MILP uses location-level flows). Vectors are visited in order
of compute cost, so the search stops once compute alone exceeds the best total found.
"""

from __future__ import annotations

import itertools
import math

import pulp

K = 3.6e-3
RANK = {"edge": 0, "renter": 1, "datacenter": 2}


def _interp(points, x):
    pts = sorted(points)
    if x <= pts[0][0]:
        (x0, y0), (x1, y1) = pts[0], pts[1]
    elif x >= pts[-1][0]:
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
    else:
        (x0, y0), (x1, y1) = next((a, b) for a, b in zip(pts, pts[1:]) if a[0] <= x <= b[0])
    return min(1.0, max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0)))


def accuracy_ok(pb, choice) -> bool:
    if pb.accuracy_model == "table":
        rows = {tuple(sorted(c)): a for c, a in pb.accuracy_table}
        key = tuple(sorted(choice.items()))
        if key not in rows:
            return False
        return pb.min_accuracy is None or rows[key] >= pb.min_accuracy - 1e-9
    var = {t.name: next(v for v in t.variants if v.name == choice[t.name]) for t in pb.tasks}
    if pb.accuracy_model == "additive":
        ok = True
        if pb.min_accuracy is not None:
            ok &= 1 - sum(1 - v.accuracy for v in var.values()) >= pb.min_accuracy - 1e-9
        if pb.max_accuracy_loss is not None:
            loss = sum(max(v.accuracy for v in t.variants) - var[t.name].accuracy for t in pb.tasks)
            ok &= loss <= pb.max_accuracy_loss + 1e-9
        return ok
    if pb.min_accuracy is None:
        return True
    acc = {s.name: 1.0 for s in pb.sources}
    for t in pb.tasks:                       # topological order
        x = min(acc[p] for p in t.parents)
        v = var[t.name]
        acc[t.name] = _interp(v.profile, x) if v.profile else v.accuracy * x
    sinks = [t.name for t in pb.tasks if not any(e.src == t.name for e in pb.edges)]
    return min(acc[s] for s in sinks) >= pb.min_accuracy - 1e-9


def _mu(pb, v, p):
    if p.tier in pb.forbid_tiers or p.region in pb.forbid_regions:
        return 0.0
    if p.gpu_memory_gb > 0 and v.memory_gb + v.adapter_memory_gb > p.gpu_memory_gb:
        return 0.0
    return v.rps.get(p.hardware, 0.0)


def _route_lp(pb, choice, var, slots, up_only):
    """Least transfer cost for fixed nodes; None if the load does not fit. ``slots`` maps
    (label, pool id) -> (nodes, tasks allowed to share those nodes)."""
    prob = pulp.LpProblem("bf", pulp.LpMinimize)
    pools = {p.id: p for p in pb.pools}
    r = {}
    for (label, pid), (n, members) in slots.items():
        for t in members:
            if n > 0 and _mu(pb, var[t], pools[pid]) > 0:
                r[(t, pid, label)] = prob.add_variable(f"r{len(r)}", lowBound=0)
    for t in pb.tasks:
        terms = [x for (tn, _, _), x in r.items() if tn == t.name]
        if not terms:
            return None
        prob += pulp.lpSum(terms) == t.rate
    for (label, pid), (n, members) in slots.items():
        terms = [x * (1.0 / _mu(pb, var[tn], pools[pid])) for (tn, p2, l2), x in r.items()
                 if p2 == pid and l2 == label]
        if terms:
            prob += pulp.lpSum(terms) <= n
    # per (task, pool): the sum over configurations
    rp = {}
    for (tn, pid, _), x in r.items():
        rp.setdefault((tn, pid), []).append(x)
    r = {k: pulp.lpSum(v) for k, v in rp.items()}
    cost = []
    caps = {}
    into = {}
    rate = {t.name: t.rate for t in pb.tasks}
    for e in pb.edges:
        src = next((s for s in pb.sources if s.name == e.src), None)
        if src is not None:
            prods = [(("src", src.name), src.location, e.rate)]
        else:
            prods = [((pid,), pools[pid].location, (e.rate / rate[e.src]) * x)
                     for (tn, pid), x in r.items() if tn == e.src]
        cons = [((pid,), pools[pid].location, x) for (tn, pid), x in r.items() if tn == e.dst]
        size = e.size(None if src else choice[e.src], choice[e.dst])
        xs = {}
        for (pk, l1, _), (ck, l2, _) in itertools.product(prods, cons):
            if up_only and RANK[l2[1]] < RANK[l1[1]]:
                continue
            x = prob.add_variable(f"x{len(r)}_{len(cost)}_{len(xs)}", lowBound=0)
            xs[(pk, ck)] = x
            cost.append(K * size * pb.network.price(l1, l2) * x)
            cap = pb.network.bandwidth(l1, l2)
            if cap is not None:
                caps.setdefault((l1, l2), [cap, []])[1].append(0.008 * size * x)
        for pk, _, out in prods:
            prob += pulp.lpSum(x for (a, _), x in xs.items() if a == pk) == out
        for ck, _, inn in cons:
            gk = ("src", e.dst) if src is not None else id(e)
            into.setdefault((gk, ck), [inn, []])[1].append(pulp.lpSum(x for (_, b), x in xs.items() if b == ck))
    for inn, terms in into.values():   # streams from sources into one task add up
        prob += pulp.lpSum(terms) == inn
    for cap, terms in caps.values():
        prob += pulp.lpSum(terms) <= cap
    prob += pulp.lpSum(cost) if cost else 0
    prob.solve(pulp.HiGHS(msg=False))
    if prob.status != pulp.LpStatusOptimal:
        return None
    return pulp.value(prob.objective) or 0.0


def _configurations(pb, var, tasks_in_group, pool):
    """Sets of tasks that may share one node of ``pool``: all, or each maximal set that fits."""
    members = [t for t in tasks_in_group if _mu(pb, var[t], pool) > 0]
    if not members:
        return []
    base = lambda s: max(var[t].memory_gb for t in s)  # noqa: E731
    fits = lambda s: pool.gpu_memory_gb <= 0 or base(s) + sum(var[t].adapter_memory_gb for t in s) <= pool.gpu_memory_gb + 1e-9  # noqa: E731
    if fits(members):
        return [frozenset(members)]
    subsets = [frozenset(s) for k in range(len(members), 0, -1) for s in itertools.combinations(members, k) if fits(s)]
    return [s for s in subsets if not any(s < o for o in subsets)]


def brute_force(pb, up_only=False):
    """Least total $/h over all choices and placements; None when nothing is feasible."""
    up_only = up_only or pb.data_up_only
    best = math.inf
    for combo in itertools.product(*[[v.name for v in t.variants] for t in pb.tasks]):
        choice = dict(zip([t.name for t in pb.tasks], combo))
        if not accuracy_ok(pb, choice):
            continue
        var = {t.name: next(v for v in t.variants if v.name == choice[t.name]) for t in pb.tasks}
        groups = {}
        for t, v in var.items():
            groups.setdefault(v.group, []).append(t)
        slots = [(f"{g}/{i}", p, conf) for g in groups for p in pb.pools
                 for i, conf in enumerate(_configurations(pb, var, groups[g], p))]
        vectors = []
        for counts in itertools.product(*[range(p.count + 1) for _, p, _ in slots]):
            used = {}
            for (_, p, _), n in zip(slots, counts):
                used[p.id] = used.get(p.id, 0) + n
            if any(used[p.id] > p.count for _, p, _ in slots):
                continue
            compute = sum(n * p.price_per_hour for (_, p, _), n in zip(slots, counts))
            vectors.append((compute, counts))
        vectors.sort(key=lambda x: x[0])
        for compute, counts in vectors:
            if compute >= best - 1e-9:
                break
            hosts = {(label, p.id): (n, conf) for (label, p, conf), n in zip(slots, counts) if n > 0}
            # necessary: each task's capacity on the nodes it may use covers its rate
            pools = {p.id: p for p in pb.pools}
            if any(sum(_mu(pb, var[t.name], pools[pid]) * n for (_, pid), (n, conf) in hosts.items()
                       if t.name in conf) < t.rate - 1e-9 for t in pb.tasks):
                continue
            tr = _route_lp(pb, choice, var, hosts, up_only)
            if tr is not None and compute + tr < best:
                best = compute + tr
    return None if best == math.inf else best
