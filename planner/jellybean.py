"""JellyBean's optimizer (Wu, Lentz, Zhuo, Lu, PVLDB 16(3), 2022), step by step as its paper and
public optimizer (github.com/libertyeagle/JellyBean, ``optimizer/``) describe it; written here.

1. *Variant selection*, a beam search over the tasks from the sinks back to the sources
   (reverse topological order). A partial assignment carries the accuracy every task not yet
   assigned must deliver: the SLO at the sinks; a task given variant m with required output R
   asks each parent for the least input accuracy x with out_m(x) >= R (the largest such ask
   when several children ask). A variant is a candidate when it meets its requirement with the
   best input the upstream variants can give. Partial assignments are ranked by the summed cost
   of their variants, then by their input requirements (lower first), and the ``BEAM_WIDTH``
   cheapest are kept; every complete one left goes on to step 2. JellyBean's per-variant cost
   is an input (a profiled compute cost); here it is the least compute $/h that serves the
   task's rate with that variant, lambda_v * min_p (price_p / mu_vmp). For the additive and
   table accuracy models, which the paper does not propagate, a partial assignment is kept when
   some completion meets the SLO.
2. *Worker assignment*, JellyBean's "multiple-tiers" strategy with greedy allocation per tier.
   Tiers are ordered edge < renter < datacenter (those that hold nodes); a task may use the free
   nodes from the highest tier of its inputs (a source counts as its own tier) up to a tier i,
   for every such i, so each state expands into one state per i; a node serves one task. Within
   the allowed tiers: if a node on the lowest of them can carry the whole rate alone, the one of
   least price + transfer is taken; otherwise nodes are taken in order of (price + transfer) per
   req/s, and as soon as a node on the lowest tier left can carry what remains, the cheapest
   such node (price + transfer of the remainder) finishes the task. Transfer is priced as
   JellyBean prices it: each input spread over the task's nodes in proportion to their rates.
   Bandwidth caps are not part of JellyBean's problem; so that its plans can be compared where
   atoll's problems have them, a location whose capped links are full takes no more load.
   Tasks are placed in each of up to ``ASSIGN_ORDERS`` topological orders, keeping the
   ``KEEP_STATES`` cheapest states after every task.
3. Of all (variants, workers) pairs, the cheapest by that estimate wins (ties: the more
   accurate). Its nodes and request split are then routed by the LP of
   :func:`atoll.planner.solve.evaluate` with data moving up the tiers only (JellyBean's rule),
   as every baseline is; that routing can only lower the estimate. If bandwidth caps, which
   JellyBean ignores, make its request split infeasible, the LP splits the requests over the
   same nodes too; if the nodes cannot carry the load at all, the next cheapest pair is taken.

The constants are JellyBean's published VQA configuration (config.yaml: BEST_K 10,
MAX_NUM_ASSIGN_ORDERS 10, BEST_K_ASSIGNMENTS 10). On that example
(``examples/planner/jellybean-vqa``) this reproduces the paper's plan and its $7.509/h.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from atoll.core.errors import PlanInfeasible
from atoll.planner.baselines import finish, unit_cost
from atoll.planner.milp import K_COST, MBPS_PER_KB
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import Location, PlanProblem, Pool, Task
from atoll.specs.node import TIER_RANK

BEAM_WIDTH = 10
ASSIGN_ORDERS = 10
KEEP_STATES = 10
_TOL = 1e-9


# ------------------------------------------------------------------ 1. variant selection
@dataclass(frozen=True)
class _Partial:
    cost: float
    choice: tuple[tuple[str, str], ...]       # (task, variant) assigned so far
    need: tuple[tuple[str, float], ...]       # (task, output accuracy it must deliver)

    def key(self):
        return (self.cost, tuple(x for _, x in sorted(self.need)))


def _least_input(v, want: float, best_in: float) -> float:
    """The least input accuracy x in [0, best_in] with out_v(x) >= want (profiles are
    non-decreasing), by bisection."""
    if v.out_accuracy(0.0) >= want - _TOL:
        return 0.0
    lo, hi = 0.0, best_in
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if v.out_accuracy(mid) >= want - _TOL:
            hi = mid
        else:
            lo = mid
    return hi


class _VariantSearch:
    def __init__(self, problem: PlanProblem, pools: list[Pool]):
        self.pb = problem
        self.cost = {(t.name, m.name): t.rate * unit_cost(problem, m, pools) for t in problem.tasks
                     for m in t.variants}
        self.cand = {t.name: [m for m in t.variants if math.isfinite(self.cost[(t.name, m.name)])]
                     for t in problem.tasks}
        # the best output of each task over its candidates (profiles are non-decreasing)
        best_out = {s.name: 1.0 for s in problem.sources}
        self.best_in: dict[str, float] = {}
        for t in problem.tasks:
            self.best_in[t.name] = min(best_out[p] for p in t.parents)
            best_out[t.name] = max((m.out_accuracy(self.best_in[t.name]) for m in self.cand[t.name]), default=0.0)
        self.most_accurate = {t: max(c, key=lambda m: m.accuracy).name for t, c in self.cand.items() if c}

    def run(self) -> list[dict[str, str]]:
        pb = self.pb
        if any(not c for c in self.cand.values()):
            return []
        sink_need = pb.min_accuracy if (pb.accuracy_model == "profile" and pb.min_accuracy is not None) else 0.0
        beam = [_Partial(0.0, (), tuple((s, sink_need) for s in pb.sinks()))]
        for t in reversed(pb.tasks):
            nxt = [q for part in beam for q in self._extend(part, pb.task(t.name))]
            nxt.sort(key=_Partial.key)
            beam = nxt[:BEAM_WIDTH]
            if not beam:
                return []
        return [dict(part.choice) for part in beam if pb.accuracy_ok(dict(part.choice))]

    def _extend(self, part: _Partial, t: Task) -> list[_Partial]:
        need = dict(part.need)
        want = need.pop(t.name, 0.0)
        out = []
        for m in self.cand[t.name]:
            choice = part.choice + ((t.name, m.name),)
            if self.pb.accuracy_model != "profile":
                if self._completion_ok(dict(choice)):
                    out.append(_Partial(part.cost + self.cost[(t.name, m.name)], choice, part.need))
                continue
            if m.out_accuracy(self.best_in[t.name]) < want - _TOL:
                continue
            x = _least_input(m, want, self.best_in[t.name])
            asks = dict(need)
            for p in t.parents:
                if self.pb.source(p) is None:
                    asks[p] = max(asks.get(p, 0.0), x)
            out.append(_Partial(part.cost + self.cost[(t.name, m.name)], choice, tuple(sorted(asks.items()))))
        return out

    def _completion_ok(self, partial: dict) -> bool:
        """Additive and table models: can some completion of ``partial`` meet the SLO?"""
        pb = self.pb
        if pb.accuracy_model == "additive":
            return pb.accuracy_ok({**self.most_accurate, **partial})
        placeable = {(t, m.name) for t, c in self.cand.items() for m in c}
        return any(pb.accuracy_ok(dict(row)) for row, _ in pb.accuracy_table
                   if all(dict(row).get(t) == m for t, m in partial.items())
                   and all(k in placeable for k in row))


def select_variants(problem: PlanProblem, pools: list[Pool]) -> list[dict[str, str]]:
    """Step 1: the variant choices left in the beam, cheapest first (all meet the accuracy SLO)."""
    return _VariantSearch(problem, pools).run()


# ------------------------------------------------------------------ 2. worker assignment
@dataclass
class _State:
    cost: float = 0.0                                   # compute + transfer estimate so far
    compute: float = 0.0
    tier: dict = field(default_factory=dict)            # task -> tier index
    alloc: dict = field(default_factory=dict)           # task -> ((pool id, nodes, req/s), ...)
    left: dict = field(default_factory=dict)            # pool id -> free nodes
    used: dict = field(default_factory=dict)            # capped link -> Mbit/s taken


class _WorkerSearch:
    """Step 2 for one variant choice."""

    def __init__(self, problem: PlanProblem, pools: list[Pool], choice: dict[str, str], links: dict):
        self.pb, self.choice, self.links = problem, choice, links      # links: (a, b) -> (price, cap)
        self.tiers = sorted({TIER_RANK[p.tier] for p in pools})
        self.tix = {p.id: self.tiers.index(TIER_RANK[p.tier]) for p in pools}
        self.pools = pools
        self.variant = {t.name: t.variant(choice[t.name]) for t in problem.tasks}
        self.mu = {(t, p.id): problem.mu(v, p) for t, v in self.variant.items() for p in pools}
        self.into = {t.name: [e for e in problem.edges if e.dst == t.name] for t in problem.tasks}

    def _tier_of_source(self, loc: Location) -> int:
        """A source counts as the lowest tier (with nodes) at or above its own."""
        rank = TIER_RANK[loc[1]]
        return next((i for i, r in enumerate(self.tiers) if r >= rank), len(self.tiers) - 1)

    def _inputs(self, s: _State, t: Task) -> list[tuple[float, dict[Location, float]]]:
        """Per edge into ``t``: its message size and the share of ``t``'s requests whose input
        comes from each location, spread as JellyBean spreads it (in proportion to rates)."""
        pb = self.pb
        out = []
        for e in self.into[t.name]:
            src = pb.source(e.src)
            if src is not None:
                out.append((e.size(None, self.choice[t.name]), {src.location: e.rate / t.rate}))
                continue
            spread: dict[Location, float] = {}
            for pid, _, x in s.alloc[e.src]:
                loc = pb.pool(pid).location
                spread[loc] = spread.get(loc, 0.0) + x / pb.task(e.src).rate
            out.append((e.size(self.choice[e.src], self.choice[t.name]), spread))
        return out

    def _link(self, a: Location, b: Location) -> tuple[float, Optional[float]]:
        if (a, b) not in self.links:
            self.links[(a, b)] = (self.pb.network.price(a, b), self.pb.network.bandwidth(a, b))
        return self.links[(a, b)]

    def _per_request(self, inputs, loc: Location) -> tuple[float, dict]:
        """$/h, and Mbit/s on each capped link, per req/s of the task served at ``loc``."""
        price, load = 0.0, {}
        for size, spread in inputs:
            for l1, w in spread.items():
                dollars, cap = self._link(l1, loc)
                price += K_COST * size * w * dollars
                if cap is not None:
                    load[(l1, loc)] = load.get((l1, loc), 0.0) + MBPS_PER_KB * size * w
        return price, load

    def _greedy(self, s: _State, t: Task, lo: int, hi: int) -> Optional[_State]:
        lam = t.rate
        mu = {p.id: self.mu[(t.name, p.id)] for p in self.pools}
        avail = [p for p in self.pools if lo <= self.tix[p.id] <= hi and s.left[p.id] > 0 and mu[p.id] > 0]
        if not avail:
            return None
        inputs = self._inputs(s, t)
        per = {loc: self._per_request(inputs, loc) for loc in {p.location for p in avail}}
        # bandwidth caps (not in JellyBean's problem): req/s the capped links into a location still carry
        room = {loc: min([(self._link(*k)[1] - s.used.get(k, 0.0)) / x for k, x in load.items() if x > 0],
                         default=math.inf) for loc, (_, load) in per.items()}
        unit = lambda p, x: p.price_per_hour + per[p.location][0] * x  # noqa: E731  (one node carrying x req/s)
        reach = lambda p: min(mu[p.id], room[p.location])  # noqa: E731
        avail = [p for p in avail if room[p.location] > lam * 1e-9]
        if not avail:
            return None
        low = min(self.tix[p.id] for p in avail)
        whole = [p for p in avail if self.tix[p.id] == low and reach(p) >= lam]
        if whole:
            best = min(whole, key=lambda p: (unit(p, lam), mu[p.id]))
            return self._extend(s, t, [(best, 1, lam)], per)
        queue = [[p, s.left[p.id]] for p in sorted(avail, key=lambda p: (unit(p, mu[p.id]) / mu[p.id],
                                                                          unit(p, mu[p.id])))]
        taken, got = [], 0.0
        while got < lam * (1 - 1e-12) and queue:
            queue = [q for q in queue if room[q[0].location] > lam * 1e-9]
            if not queue:
                break
            p, n = queue[0]
            rest = lam - got
            finish_here = math.ceil(min(rest, room[p.location]) / mu[p.id] - 1e-12)
            # nodes of p taken before a single node of the lowest tier could carry the rest
            floor_tier = min(self.tix[q.id] for q, _ in queue)
            top = max(reach(q) for q, _ in queue if self.tix[q.id] == floor_tier)
            trigger = max(1, math.floor((rest - top) / mu[p.id]) + 1)
            k = min(n, finish_here, trigger)
            x = min(k * mu[p.id], rest, room[p.location])
            taken.append((p, k, x))
            got += x
            room[p.location] -= x
            queue[0][1] -= k
            if queue[0][1] == 0:
                queue.pop(0)
            rest = lam - got
            if rest <= lam * 1e-12 or not queue:
                continue
            floor_tier = min(self.tix[q.id] for q, _ in queue)
            alone = [(q, c) for q, c in queue if self.tix[q.id] == floor_tier and reach(q) > rest]
            if alone:
                queue = [[q, c] for q, c in sorted(alone, key=lambda qc: (unit(qc[0], rest), mu[qc[0].id]))]
        if got < lam * (1 - 1e-9):
            return None
        return self._extend(s, t, taken, per)

    def _extend(self, s: _State, t: Task, taken, per) -> _State:
        merged: dict[str, list] = {}
        for p, k, x in taken:
            m = merged.setdefault(p.id, [p, 0, 0.0])
            m[1] += k
            m[2] += x
        compute = sum(p.price_per_hour * k for p, k, _ in merged.values())
        transfer = sum(per[p.location][0] * x for p, _, x in merged.values())
        left, used = dict(s.left), dict(s.used)
        for p, k, x in merged.values():
            left[p.id] -= k
            for link, mbps in per[p.location][1].items():
                used[link] = used.get(link, 0.0) + mbps * x
        return _State(cost=s.cost + compute + transfer, compute=s.compute + compute,
                      tier={**s.tier, t.name: max(self.tix[p.id] for p, _, _ in merged.values())},
                      alloc={**s.alloc, t.name: tuple((p.id, k, x) for p, k, x in merged.values())},
                      left=left, used=used)

    def orders(self) -> list[list[str]]:
        """Up to ASSIGN_ORDERS topological orders of the tasks, the problem's own first."""
        names = [t.name for t in self.pb.tasks]
        parents = {t.name: [u for u in t.parents if self.pb.source(u) is None] for t in self.pb.tasks}
        out: list[list[str]] = []

        def extend(prefix: list[str]) -> None:
            if len(out) >= ASSIGN_ORDERS:
                return
            if len(prefix) == len(names):
                out.append(list(prefix))
                return
            for t in names:
                if t not in prefix and all(u in prefix for u in parents[t]):
                    extend(prefix + [t])

        extend([])
        return out

    def run(self) -> list[_State]:
        pb = self.pb
        src_tier = {s.name: self._tier_of_source(s.location) for s in pb.sources}
        finals: list[_State] = []
        for order in self.orders():
            states = [_State(left={p.id: p.count for p in self.pools})]
            for name in order:
                t = pb.task(name)
                nxt = []
                for s in states:
                    lo = max(src_tier[u] if u in src_tier else s.tier[u] for u in t.parents)
                    for hi in range(lo, len(self.tiers)):
                        new = self._greedy(s, t, lo, hi)
                        if new is not None:
                            nxt.append(new)
                nxt.sort(key=lambda st: st.cost)
                states = nxt[:KEEP_STATES]
            finals += states
        finals.sort(key=lambda st: st.cost)
        return finals[:KEEP_STATES]


# ------------------------------------------------------------------ 3. the plan
def jellybean_plan(problem: PlanProblem, previous: Optional[Plan] = None,
                   options: Optional[PlanOptions] = None) -> Plan:
    t0 = time.perf_counter()
    pools = [p for p in problem.pools if problem.pool_allowed(p)]
    links: dict = {}
    pairs = []
    for choice in select_variants(problem, pools):
        acc = problem.accuracy_of(choice)
        pairs += [(st.cost, -acc, len(pairs) + n, choice, st)
                  for n, st in enumerate(_WorkerSearch(problem, pools, choice, links).run())]
    pairs.sort(key=lambda x: x[:3])            # the index keeps the search's order among ties
    for _, _, _, choice, st in pairs:
        hosts: dict[tuple[str, str], int] = {}
        rates: dict[tuple[str, str], float] = {}
        for t, alloc in st.alloc.items():
            group = problem.task(t).variant(choice[t]).group
            for pid, k, x in alloc:
                hosts[(group, pid)] = hosts.get((group, pid), 0) + k
                rates[(t, pid)] = rates.get((t, pid), 0.0) + x
        for split in (rates, None):            # None: the LP splits the requests too
            try:
                return finish(problem, choice, hosts, "jellybean", t0, previous, options, up_only=True,
                              rates=split)
            except PlanInfeasible:
                continue                       # a bandwidth cap JellyBean does not see
    return finish(problem, None, None, "jellybean", t0, previous, options)
