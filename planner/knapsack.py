"""The least cost of whole nodes that cover a request rate: a bounded covering knapsack.

    K = min Σ_i c_i n_i   subject to   Σ_i a_i n_i ≥ b,   n_i ∈ {0, ..., N_i}

(node type i: capacity a_i req/s, price c_i $/h, N_i nodes). The MILP uses it for its
node-cost cuts (block (12) of :mod:`atoll.planner.milp`), which need a *lower bound* on K: the
search is exact up to ``node_limit`` nodes of its tree and otherwise returns the least bound
among the nodes left open, which is still a lower bound.
"""

from __future__ import annotations

import math
from typing import Sequence


def _fractional(items: Sequence[tuple[float, float, int]], start: int, need: float) -> float:
    """The LP bound: the best price per req/s first, the last node type fractionally."""
    cost = 0.0
    for a, c, n in items[start:]:
        if need <= 1e-12:
            return cost
        take = min(float(n), need / a)
        cost += take * c
        need -= take * a
    return cost if need <= 1e-9 * max(1.0, need) else math.inf


def least_cover_cost(need: float, items: Sequence[tuple[float, float, int]], node_limit: int = 300,
                     rel_tol: float = 1e-3) -> float:
    """A lower bound on K (equal to K unless the search hit ``node_limit``); +inf when all the
    nodes together cannot cover ``need``. ``items`` are (capacity, price, count) per node type.
    When the first integer cover found is within ``rel_tol`` of the LP bound, the LP bound is
    returned without searching further (whole nodes then change little)."""
    items = sorted(((a, c, n) for a, c, n in items if a > 0 and n > 0), key=lambda x: (x[1] / x[0], x[1]))
    if need <= 0:
        return 0.0
    if sum(a * n for a, _, n in items) < need * (1 - 1e-12):
        return math.inf
    root = _fractional(items, 0, need)
    best, rest = 0.0, need                 # the greedy cover: best price per req/s first, whole nodes
    for a, c, n in items:
        take = min(n, math.ceil(rest / a - 1e-12))
        best += take * c
        rest -= take * a
        if rest <= 1e-9:
            break
    if best <= root * (1 + rel_tol):
        return root
    stack = [(0, need, 0.0, root)]        # (next item, rest to cover, cost so far, parent's bound)
    nodes = 0
    while stack:
        i, rest, cost, _ = stack.pop()
        if rest <= 1e-9:
            best = min(best, cost)
            continue
        bound = cost + _fractional(items, i, rest)
        if bound >= best - 1e-12:
            continue
        nodes += 1
        if nodes > node_limit:             # a child's bound is at least its parent's
            return min(best, bound, min(s[3] for s in stack) if stack else math.inf)
        a, c, n = items[i]
        most = min(n, math.ceil(rest / a - 1e-12))
        for k in range(0, most + 1):      # the largest k is popped first: a greedy dive
            stack.append((i + 1, rest - k * a, cost + k * c, bound))
    return best
