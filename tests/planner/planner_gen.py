"""Seeded random small PlanProblems for the brute-force comparison (test-only)."""

from __future__ import annotations

import itertools
import random

from atoll.planner.api import Edge, Network, PlanProblem, Pool, Source, Task, Variant

TIERS = ["edge", "renter", "datacenter"]
HW = ["h1", "h2", "h3"]


def _profile(rng, acc):
    y0 = rng.uniform(0, 0.3 * acc)
    y1 = rng.uniform((y0 + acc) / 2, acc)
    return ((0.0, round(y0, 3)), (0.5, round(y1, 3)), (1.0, round(acc, 3)))


def random_problem(rng: random.Random) -> PlanProblem:
    regions = ["r1", "r2"][: rng.randint(1, 2)]
    n_tasks = rng.randint(1, 3)
    names = [f"t{i}" for i in range(n_tasks)]
    n_src = 1 if n_tasks < 3 else rng.randint(1, 2)
    sources = [Source(f"s{i}", round(rng.uniform(1, 8), 2), (rng.choice(regions), rng.choice(["edge", "edge", "renter"])))
               for i in range(n_src)]
    # DAG shape: chain, or for three tasks a fan-out or a join
    shape = rng.choice(["chain", "fan", "join"]) if n_tasks == 3 else "chain"
    pairs = []
    if shape == "chain":
        pairs = [(sources[0].name, names[0])] + list(zip(names, names[1:]))
    elif shape == "fan":
        pairs = [(sources[0].name, "t0"), ("t0", "t1"), ("t0", "t2")]
    else:
        pairs = [(sources[0].name, "t0"), (sources[-1].name, "t1"), ("t0", "t2"), ("t1", "t2")]
    if len(sources) > 1 and shape != "join":
        pairs.append((sources[1].name, names[0]))
    shared_base = rng.random() < 0.4
    variants = {}
    for i, t in enumerate(names):
        vs = []
        for j in range(rng.randint(1, 3 if n_tasks < 3 else 2)):
            acc = round(rng.uniform(0.6, 0.99), 3)
            rps = {h: round(rng.uniform(2.0, 12.0), 2) for h in HW if rng.random() < 0.7}
            if not rps:
                rps = {rng.choice(HW): round(rng.uniform(1.0, 10.0), 2)}
            if shared_base and j == 0:
                group, adapter, amem = "base@fp16", f"ad-{t}", rng.choice([0.5, 2.0, 6.0])
            else:
                group, adapter, amem = f"{t}-v{j}@fp16", None, 0.0
            vs.append(Variant(name=f"v{j}", accuracy=acc, rps=rps, group=group, adapter=adapter,
                              memory_gb=rng.choice([1.0, 8.0, 14.0]), adapter_memory_gb=amem,
                              profile=_profile(rng, acc) if rng.random() < 0.3 else None))
        variants[t] = tuple(vs)
    rate = {s.name: s.rate for s in sources}
    edges, tasks = [], []
    parents = {t: [] for t in names}
    ratio = {}
    for a, b in pairs:
        parents[b].append(a)
        ratio[(a, b)] = 1.0 if a.startswith("s") else round(rng.uniform(0.5, 2.0), 2)
    for t in names:
        from_src = [rate[p] for p in parents[t] if p.startswith("s")]
        rate[t] = min([rate[p] * ratio[(p, t)] for p in parents[t] if not p.startswith("s")]
                      + ([sum(from_src)] if from_src else []))
        tasks.append(Task(t, rate[t], variants[t], tuple(parents[t])))
    for a, b in pairs:
        sizes = ()
        if rng.random() < 0.4:
            fa = None if a.startswith("s") else rng.choice(variants[a]).name
            sizes = ((fa, rng.choice(variants[b]).name, round(rng.uniform(1, 800), 1)),)
        e_rate = rate[b] if not a.startswith("s") else rate[b] * rate[a] / sum(
            rate[p] for p in parents[b] if p.startswith("s"))
        edges.append(Edge(a, b, e_rate, round(rng.uniform(1, 800), 1), sizes))
    pools = []
    for k in range(rng.randint(2, 3)):
        pools.append(Pool(f"p{k}", rng.choice(HW), rng.choice(TIERS), rng.choice(regions),
                          round(rng.uniform(0.05, 3.0), 2), rng.randint(1, 3),
                          gpu_memory_gb=rng.choice([0.0, 16.0, 24.0])))
    if rng.random() < 0.35:   # a pool alike but for price: the MILP merges such pools
        twin = rng.choice(pools)
        pools.append(Pool(f"p{len(pools)}", twin.hardware, twin.tier, twin.region,
                          round(rng.uniform(0.05, 3.0), 2), rng.randint(1, 2), gpu_memory_gb=twin.gpu_memory_gb))
    locs = [(r, t) for r in regions for t in TIERS]
    links = []
    for _ in range(rng.randint(0, 4)):
        a, b = rng.choice(locs), rng.choice(locs)
        cap = rng.choice([None, None, round(rng.uniform(1, 40), 1)])
        links.append((a, b, round(rng.uniform(0, 0.2), 3), cap))
    net = Network(same_location_per_gb=0.0, intra_region_per_gb=round(rng.uniform(0, 0.1), 3),
                  inter_region_per_gb=round(rng.uniform(0.02, 0.2), 3), links=tuple(links))
    model = rng.choice(["profile", "profile", "profile", "additive", "table"])
    min_acc, max_loss, table = None, None, ()
    if model == "profile":
        min_acc = None if rng.random() < 0.2 else round(rng.uniform(0.3, 0.85) ** max(1, n_tasks - 1), 3)
    elif model == "additive":
        if rng.random() < 0.5:
            min_acc = round(rng.uniform(0.3, 0.9), 3)
        else:
            max_loss = round(rng.uniform(0.0, 0.3), 3)
    else:
        combos = list(itertools.product(*[[v.name for v in variants[t]] for t in names]))
        rows = rng.sample(combos, rng.randint(1, len(combos)))
        table = tuple((tuple(zip(names, c)), round(rng.uniform(0.5, 0.95), 3)) for c in rows)
        min_acc = round(rng.uniform(0.5, 0.9), 3)
    forbid = (rng.choice(TIERS),) if rng.random() < 0.15 else ()
    return PlanProblem(name="rand", sources=tuple(sources), tasks=tuple(tasks), edges=tuple(edges),
                       pools=tuple(pools), network=net, accuracy_model=model, min_accuracy=min_acc,
                       max_accuracy_loss=max_loss, accuracy_table=table, forbid_tiers=forbid,
                       data_up_only=rng.random() < 0.2)
