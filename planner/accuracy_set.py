"""Z: the variant choices that meet the accuracy SLO, searched for the least linear cost.

The accuracy hull cuts of :mod:`atoll.planner.decompose` need beta(y) <= min over z in Z of
y.z for prices y. Z is searched exactly when it is one knapsack row sum_t g_t(m_t) >= G over
all tasks -- default accuracy profiles along a chain in which each task is a parent of the next
(every other source-to-sink path is a subset of it, and ln acc <= 0), or an additive model with
one of its two SLOs -- by a Pareto search (pairs of weight and price no other pair beats on
both); past ``pareto_cap`` pairs, by a dynamic program over the row's slack in ``buckets`` steps
whose rounding admits a superset of Z (a valid, slightly lower beta) and a subset (choices
surely in Z). An accuracy table is searched row by row. Any other profile model (explicit
profiles, fan-outs and joins) is enumerated into such a table when it has at most ``cap``
variant choices (200,000 by default). Otherwise :meth:`AccuracySet.of` gives None and the hull
cuts are skipped.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from atoll.planner.milp import Model


def _out_accuracy(v, x: np.ndarray) -> np.ndarray:
    """:meth:`Variant.out_accuracy` over an array of input accuracies."""
    if not v.profile:
        return v.accuracy * x
    px = np.array([p[0] for p in v.profile])
    py = np.array([p[1] for p in v.profile])
    out = np.interp(x, px, py)
    lo, hi = x < px[0], x > px[-1]
    out[lo] = py[0] + (py[1] - py[0]) * (x[lo] - px[0]) / (px[1] - px[0])
    out[hi] = py[-2] + (py[-1] - py[-2]) * (x[hi] - px[-2]) / (px[-1] - px[-2])
    return np.clip(out, 0.0, 1.0)

_FEAS_TOL = 1e-6          # the search over Z admits choices this far (in its row's units) below the SLO


class AccuracySet:
    """Z, the variant choices meeting the accuracy SLO, for the exact minimum of a linear
    function y.z over it: one knapsack row sum_t g_t(m_t) >= G over all tasks (a Pareto
    search over tasks: keep the (weight, cost) pairs no other pair beats on both), or the rows
    of an accuracy table. ``of`` returns None when Z is neither."""

    def __init__(self, n: int, groups=None, need: float = 0.0, table=None, *,
                 pareto_cap: int = 20000, buckets: int = 8192):
        self.n = n
        self.groups = groups                    # [(z indices, weights)] per task
        self.need = need - _FEAS_TOL            # admit what the MILP's tolerances admit
        self.table = table                      # rows x tasks array of z indices
        self.pareto_cap = pareto_cap            # exact search up to this many pairs, then buckets
        self.buckets = buckets

    @classmethod
    def of(cls, model: Model, cap: int = 200_000) -> Optional["AccuracySet"]:
        pb = model.pb
        zkeys = list(model.z)
        at = {k: i for i, k in enumerate(zkeys)}
        tasks = [t.name for t in pb.tasks]
        if pb.accuracy_model == "table":
            amin = pb.min_accuracy if pb.min_accuracy is not None else -1.0
            rows = []
            for combo, acc in pb.accuracy_table:
                c = dict(combo)
                if acc >= amin - 1e-9 and set(c) == set(tasks) and all((t, m) in at for t, m in c.items()):
                    rows.append([at[(t, c[t])] for t in tasks])
            return cls(len(zkeys), table=np.array(rows, dtype=np.int64).reshape(len(rows), len(tasks)))
        vobj = model.vobj
        if pb.accuracy_model == "additive":
            slos = [s for s in ("min", "loss") if (pb.min_accuracy if s == "min" else pb.max_accuracy_loss) is not None]
            if len(slos) != 1:
                return None
            if slos[0] == "min":                # sum (acc - 1) >= A - 1
                weight = {k: vobj[k].accuracy - 1.0 for k in zkeys}
                need = pb.min_accuracy - 1.0
            else:                               # sum (acc - best) >= -L
                best = {t.name: max(v.accuracy for v in t.variants) for t in pb.tasks}
                weight = {k: vobj[k].accuracy - best[k[0]] for k in zkeys}
                need = -pb.max_accuracy_loss
        else:
            if pb.min_accuracy is None:
                return None
            # (8b): default profiles; with each task a parent of the next, every source-to-sink
            # path is a subset of all tasks and ln acc <= 0, so the path through all is the row
            chain = all(pb.tasks[i - 1].name in pb.tasks[i].parents for i in range(1, len(pb.tasks)))
            if (not chain or any(vobj[k].profile is not None for k in zkeys)
                    or any(not 0 < vobj[k].accuracy <= 1 for k in zkeys)):
                return cls.enumerated(model, cap)
            weight = {k: math.log(vobj[k].accuracy) for k in zkeys}
            need = math.log(max(pb.min_accuracy, 1e-12))
        groups = []
        for t in tasks:
            idx = [i for i, k in enumerate(zkeys) if k[0] == t]
            if not idx:
                return None
            groups.append((np.array(idx, dtype=np.int64), np.array([weight[zkeys[i]] for i in idx])))
        return cls(len(zkeys), groups=groups, need=need)

    @classmethod
    def enumerated(cls, model: Model, cap: int) -> Optional["AccuracySet"]:
        """Profile model on any DAG: every choice of the model's candidates, its end-to-end
        accuracy computed as :meth:`PlanProblem.accuracy_of` does (vectorized), kept as a table
        of the choices that meet the SLO; None when there are more than ``cap`` choices."""
        pb = model.pb
        zkeys = list(model.z)
        at = {k: i for i, k in enumerate(zkeys)}
        cands = [[m for m in model.cand[t.name]] for t in pb.tasks]
        if not all(cands) or math.prod(len(c) for c in cands) > cap:
            return None
        pick = np.indices([len(c) for c in cands]).reshape(len(cands), -1)    # task x choice
        acc = {s.name: np.ones(pick.shape[1]) for s in pb.sources}
        for i, t in enumerate(pb.tasks):
            x = np.minimum.reduce([acc[p] for p in t.parents])
            out = np.empty_like(x)
            for j, m in enumerate(cands[i]):
                sel = pick[i] == j
                out[sel] = _out_accuracy(m, x[sel])
            acc[t.name] = out
        ok = np.minimum.reduce([acc[s] for s in pb.sinks()]) >= pb.min_accuracy - _FEAS_TOL
        index = np.array([[at[(t.name, m.name)] for m in c] for t, c in zip(pb.tasks, cands)], dtype=object)
        rows = np.stack([np.array(index[i], dtype=np.int64)[pick[i][ok]] for i in range(len(cands))], axis=1)
        return cls(len(zkeys), table=rows.reshape(-1, len(cands)))

    def minimize(self, y: np.ndarray, k: int = 1) -> tuple[float, list[tuple[float, list[int]]]]:
        """(beta, choices): beta <= min over Z of y.z (equal to it when the search is exact), and
        up to k choices in Z, cheapest first, each as (y.z, z indices). beta is +inf and the list
        empty when Z is empty."""
        if self.table is not None:
            if not len(self.table):
                return math.inf, []
            vals = y[self.table].sum(axis=1)
            order = np.argsort(vals, kind="stable")[:k]
            return float(vals[order[0]]), [(float(vals[i]), self.table[i].tolist()) for i in order]
        found = self._pareto(y, k)
        if found is not None:
            return (found[0][0] if found else math.inf), found
        return self._buckets(y, k)

    def _pareto(self, y, k):
        """Exact: per task, extend the (weight, cost) pairs no other pair beats on both; None
        when the pairs outgrow ``pareto_cap``."""
        rest = [0.0] * (len(self.groups) + 1)
        for i in range(len(self.groups) - 1, -1, -1):
            rest[i] = rest[i + 1] + float(self.groups[i][1].max())
        W, C = np.zeros(1), np.zeros(1)
        pick = np.zeros((1, 0), dtype=np.int64)
        for i, (idx, g) in enumerate(self.groups):
            n = len(idx)
            W2 = (W[:, None] + g[None, :]).ravel()
            C2 = (C[:, None] + y[idx][None, :]).ravel()
            ok = W2 + rest[i + 1] >= self.need       # can still meet the row
            if not ok.any():
                return []
            src = np.repeat(np.arange(len(W)), n)[ok]
            var = np.tile(np.arange(n), len(W))[ok]
            W2, C2 = W2[ok], C2[ok]
            order = np.lexsort((C2, -W2))            # heaviest first, then cheapest
            W2, C2, src, var = W2[order], C2[order], src[order], var[order]
            best_before = np.minimum.accumulate(C2)
            keep = np.ones(len(C2), dtype=bool)
            keep[1:] = C2[1:] < best_before[:-1]     # Pareto: cheaper than every heavier pair
            if keep.sum() > self.pareto_cap:
                return None
            W, C = W2[keep], C2[keep]
            pick = np.concatenate([pick[src[keep]], idx[var[keep]][:, None]], axis=1)
        order = np.argsort(C, kind="stable")[:k]
        return [(float(C[j]), pick[j].tolist()) for j in order]

    def _buckets(self, y, k):
        """When the exact search is too large: a dynamic program over the row's slack cut in
        ``buckets`` steps. Rounding each task's shortfall *down* admits a superset of Z, so its
        minimum is a valid beta; rounding *up* admits a subset, whose choices are in Z."""
        top = [float(g.max()) for _, g in self.groups]
        slack = sum(top) - self.need                 # the total shortfall a choice may have
        if slack < 0:
            return math.inf, []
        step = max(slack, 1e-9) / self.buckets

        def dp(rounding):
            S = int(math.floor(slack / step + 1e-9))
            cost = np.full(S + 1, math.inf)
            cost[0] = 0.0
            back = []
            for (idx, g), t in zip(self.groups, top):
                short = np.maximum(0, rounding((t - g) / step - 1e-9)).astype(np.int64)
                cand = np.full((len(idx), S + 1), math.inf)
                for j, d in enumerate(short):
                    if d <= S:
                        cand[j, d:] = cost[:S + 1 - d] + y[idx[j]]
                arg = np.argmin(cand, axis=0)
                cost = cand[arg, np.arange(S + 1)]
                back.append((idx, short, arg))
            ends = [s for s in np.argsort(cost, kind="stable") if math.isfinite(cost[s])][:k]
            out = []
            for s in ends:
                sel, at = [], int(s)
                for idx, short, arg in reversed(back):
                    j = int(arg[at])
                    sel.append(int(idx[j]))
                    at -= int(short[j])
                out.append((float(cost[s]), sel[::-1]))
            return out

        low = dp(np.floor)
        if not low:
            return math.inf, []
        weight = {int(i): float(w) for idx, g in self.groups for i, w in zip(idx, g)}
        inside = lambda sel: sum(weight[i] for i in sel) >= self.need  # noqa: E731
        cols = [c for c in low if inside(c[1])] or [c for c in dp(np.ceil) if inside(c[1])]
        return low[0][0], cols
