"""Large fleets: choose the variants on a relaxation with a proven bound, then place whole nodes.

The full MILP of :mod:`atoll.planner.milp` is exact, but on thousands of nodes HiGHS spends its
time in root cuts over thousands of node-count integers. The two-phase method keeps a proven
lower bound LB, and so an honest gap:

1. *Variant phase* on a relaxation R of the MILP: every integer but the variant binaries z is
   continuous. R relaxes integrality and drops valid rows, so its bound is a bound on the full
   problem. Three ways to search it (``PlanOptions.variant_search``):

   ``"hull"`` (the default with HiGHS), each step's bound valid on its own:

   a. R is built as arrays straight from the model for highspy (:func:`relaxation`), smaller
      than the MILP: with node counts continuous, every h[c,p] that appears only in its row
      (3), in pool rows (4), in node-cover rows (10) and in the objective with a price >= 0 is
      *substituted* by its load L[c,p] = sum over (v,m) in c of lambda_v r[v,m,p,c] / mu_vmp,
      so its row (3) and its column vanish; a bound h <= N_p that no row (4) carries becomes
      the row L[c,p] <= N_p; the rows (10) holding such an h are dropped. For any plan, the
      same plan with h lowered to L (and the segments s of a class lowered to match, dearest
      first) is feasible in R and costs no more, so R's optimum is at most the MILP's.
      Under a churn penalty h also appears in the churn rows (9), where a larger h can pay
      (keeping nodes), so there h stays a column.
   b. Accuracy hull cuts (block (11) of :mod:`atoll.planner.milp`). Let Z be the variant
      choices that meet the accuracy SLO. For prices y, beta(y) <= min over z in Z of y.z is
      computed by a search over Z (:class:`AccuracySet`), so y.z >= beta(y) holds for every
      feasible plan. R's LP alone mixes variants (a task half served by a fast, inaccurate
      variant and half by a slow, accurate one meets the SLO "on average"); these cuts remove
      such points. The prices come from Dantzig-Wolfe column generation (:class:`_Master`):
      R's LP with z = sum_k w_k zhat_k over choices zhat_k in Z (w >= 0, sum w = 1, slacks on
      these link rows at a high price keep it feasible); the pricing problem is beta of the
      link rows' duals. At every round LB = master objective + min(0, beta - convexity dual)
      (the Lagrangian bound; a beta taken over a superset of Z only lowers it), valid
      whether or not the generation converged. At convergence it is min { R's LP : z in
      conv(Z) }, and the cut of the last duals alone gives R's LP that value. Two devices
      cut the rounds: an unused variant's link dual (free below its reduced cost) is raised
      to that bound, an equally optimal dual; and each round also prices duals pulled half
      way toward those of the best bound so far (the columns found there are added only if
      they price out at the master's own duals).
   c. The choices the master uses most are each priced by R's LP with their column fixed;
      the cheapest is the choice. If that leaves too wide a gap, R as a MILP in z with the
      cuts of (b) (HiGHS branch and cut, warm-started with that choice) raises LB further.

   Z is searched exactly when it is one knapsack row sum_t g_t(m_t) >= G over all tasks --
   default accuracy profiles along a chain in which each task is a parent of the next (every
   other source-to-sink path is a subset of it, and ln acc <= 0), or an additive model with one
   of its two SLOs -- by a Pareto search (pairs of weight and price no other pair beats on
   both); past 20,000 pairs, by a dynamic program over the row's slack in 8,192 steps whose
   rounding admits a superset of Z (a valid, slightly lower beta) and a subset (choices surely
   in Z). An accuracy table is searched row by row. Otherwise step (b) is skipped.

   ``"highs"``: R in the pulp model (each edge's messages at their smallest size, which also
   bounds from below) as a MILP in z by HiGHS. ``"bb"``: a small branch and bound on z written
   here (a dive, then best bound first, warm-starting the dual simplex at each node).
2. *Placement phase*: fix the chosen variants and solve the (much smaller) MILP with integer
   node counts: the plan, with cost UB. With a bound in hand it stops as soon as
   UB <= LB / (1 - gap).

The reported gap is (UB - LB) / UB.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pulp

from atoll.planner.milp import Model


def _highs_model(model: Model, time_limit: float):
    solver = pulp.HiGHS(msg=False, mip=False, timeLimit=time_limit)
    prob = model.prob
    solver.createAndConfigureSolver(prob)
    solver.buildSolverModel(prob)
    return prob.solverModel


def variant_branch_and_bound(model: Model, time_limit: float, gap: float):
    """Return (choice, lower_bound, nodes) or (None, None, nodes) when no choice is feasible.
    ``model`` must be built in cost mode; its integer columns are treated as continuous."""
    import highspy

    t0 = time.perf_counter()
    h = _highs_model(model, time_limit)
    h.setOptionValue("solver", "simplex")
    zcols = {k: v.index for k, v in model.z.items()}
    tasks = {}
    for (t, m), c in zcols.items():
        tasks.setdefault(t, []).append((m, c))
    inf_st = (highspy.HighsModelStatus.kInfeasible, highspy.HighsModelStatus.kUnboundedOrInfeasible)

    # HiGHS' clock runs across run() calls of one instance: one limit for the whole search
    h.setOptionValue("time_limit", float(time_limit) + 1.0)

    def solve():
        """(objective, columns), None if infeasible, "stop" if out of time."""
        h.run()
        st = h.getModelStatus()
        if st in inf_st:
            return None
        if st != highspy.HighsModelStatus.kOptimal:
            return "stop"
        return h.getInfo().objective_function_value, list(h.getSolution().col_value)

    best_val, best_choice = math.inf, None
    open_bounds: list[float] = []           # bounds of nodes left unexplored at a time-out
    nodes = 0
    # Nodes are (bound, seq, fixings); a dive (depth first) until the first incumbent, then
    # best bound first, which is what raises the lower bound.
    heap: list[tuple[float, int, list[tuple[int, float, float]]]] = []
    dive: list[tuple[float, list[tuple[int, float, float]]]] = [(-math.inf, [])]
    seq = 0

    def cutoff() -> float:
        return best_val * (1 - 0.6 * gap) if math.isfinite(best_val) else math.inf

    while dive or heap:
        if dive:
            parent_bound, fix = dive.pop()
        else:
            parent_bound, _, fix = heapq.heappop(heap)
        if parent_bound >= cutoff():
            continue
        if time.perf_counter() - t0 > time_limit:
            open_bounds.append(parent_bound)
            break
        for col, lb, ub in fix:
            h.changeColBounds(col, lb, ub)
        res = solve()
        for col, _, _ in fix:
            h.changeColBounds(col, 0.0, 1.0)
        nodes += 1
        if res is None:
            continue
        if res == "stop":
            open_bounds.append(parent_bound)
            break
        val, x = res
        if val >= cutoff():
            continue
        frac = None
        for t, ms in tasks.items():
            top = max((x[c], m, c) for m, c in ms)
            if top[0] < 1 - 1e-6 and (frac is None or top[0] < frac[0]):
                frac = top                      # the task whose choice is least settled
        if frac is None:
            best_val = val
            best_choice = {t: max((x[c], m) for m, c in ms)[1] for t, ms in tasks.items()}
            while dive:
                b, f = dive.pop()
                seq += 1
                heapq.heappush(heap, (b, seq, f))
            continue
        _, m, c = frac
        down, up = fix + [(c, 0.0, 0.0)], fix + [(c, 1.0, 1.0)]
        if best_choice is None:
            dive.append((val, down))
            dive.append((val, up))              # take the LP's favourite first
        else:
            seq += 1
            heapq.heappush(heap, (val, seq, up))
            seq += 1
            heapq.heappush(heap, (val, seq, down))
    open_bounds += [b for b, _ in dive] + [b for b, _, _ in heap]
    lower = min([best_val] + open_bounds)
    if best_choice is None:
        return None, None if not open_bounds else lower, nodes
    return best_choice, lower, nodes


def variant_milp(model: Model, time_limit: float, gap: float, opts):
    """Phase 1 by HiGHS' own branch and cut: the MILP with node counts, adapters and table rows
    made continuous. Returns (choice, lower bound) like :func:`variant_branch_and_bound`."""
    from dataclasses import replace as _replace
    from atoll.planner import solve as S

    for v in list(model.h.values()) + list(model.u.values()) + list(getattr(model, "w", {}).values()):
        v.cat = pulp.LpContinuous
    res = S.run(model, _replace(opts, gap=0.6 * gap), time_limit=time_limit)
    if res.status == "infeasible":
        return None, None, 0
    if res.status == "no_solution":
        return None, (res.bound if res.bound is not None else -math.inf), 0
    if res.status == "time_limit" and res.bound is None:
        return {t: m for (t, m), z in model.z.items() if (z.varValue or 0) > 0.5}, -math.inf, 0
    choice = {t: m for (t, m), z in model.z.items() if (z.varValue or 0) > 0.5}
    lower = res.bound if res.bound is not None else res.objective
    return choice, lower, 0


# ====================================================================== the "hull" variant phase
# (see the module docstring, steps a-c)

_FEAS_TOL = 1e-6          # the search over Z admits choices this far (in its row's units) below the SLO


@dataclass
class Relaxation:
    """R as highspy arrays: an LP (``lp.integrality_`` empty); z's columns are ``zcol``."""

    lp: object                       # highspy.HighsLp
    cols: list                       # the pulp variable of each column
    zkeys: list                      # (task, variant) of each z, in ``model.z`` order
    zcol: np.ndarray                 # column of each z
    coupling_z: tuple                # (row, z index, coefficient) of z in rows other than Z's own
    substituted: int                 # node counts replaced by their load


def relaxation(model: Model) -> Relaxation:
    """Step (a): R, with node counts continuous and substituted by their loads where that keeps
    the optimum (see the module docstring); node-cover rows (10) holding a substituted count dropped."""
    import highspy

    prob = model.prob
    rows_all = prob.constraints() if callable(prob.constraints) else list(prob.constraints.values())
    rows_all = [(con.name or "", con) for con in rows_all]
    hvar = {id(v): v for v in model.h.values()}
    obj = {id(v): a for v, a in prob.objective.items()}
    where = defaultdict(list)                   # node count -> [(row name, coefficient, row)]
    for name, con in rows_all:
        for v, a in con.items():
            if id(v) in hvar:
                where[id(v)].append((name, a, con))
    load: dict[int, list] = {}
    extra_rows = []                             # L <= N where no row (4) carries h's own bound
    for hid, rows in where.items():
        v = hvar[hid]
        own = [(a, con) for n, a, con in rows if n.startswith("c3_")]
        if (len(own) != 1 or own[0][0] >= 0 or own[0][1].constant != 0
                or own[0][1].sense != pulp.LpConstraintLE
                or any(not n.startswith(("c3_", "c4_", "c10_")) for n, _, _ in rows)
                or obj.get(hid, 0.0) < 0 or (v.lowBound or 0) != 0
                # a row (4) whose segments pay < 0 would reward nodes beyond the load
                or any(obj.get(id(w), 0.0) < 0 for n, _, con in rows if n.startswith("c4_") for w in con)):
            continue
        a_h, con = own[0]
        load[hid] = [(w, -a / a_h) for w, a in con.items() if id(w) != hid]
        if v.upBound is not None and not any(n.startswith("c4_") for n, _, _ in rows):
            extra_rows.append((hid, v.upBound))
    col_of: dict[int, int] = {}
    cols: list = []

    def expand(items) -> dict:
        out: dict = {}
        for v, a in items:
            sub = load.get(id(v))
            for w, d in (sub if sub is not None else ((v, 1.0),)):
                j = col_of.get(id(w))
                if j is None:
                    j = col_of[id(w)] = len(cols)
                    cols.append(w)
                out[j] = out.get(j, 0.0) + a * d
        return out

    cost = expand(prob.objective.items())
    starts, index, value, lo, hi = [0], [], [], [], []
    for name, con in rows_all:
        if name.startswith("c3_") and any(id(v) in load for v, _ in con.items()):
            continue
        if name.startswith("c10_") and any(id(v) in load for v, _ in con.items()):
            continue
        row = expand(con.items())
        rhs = -con.constant
        sense = con.sense
        lo.append(rhs if sense in (pulp.LpConstraintGE, pulp.LpConstraintEQ) else -math.inf)
        hi.append(rhs if sense in (pulp.LpConstraintLE, pulp.LpConstraintEQ) else math.inf)
        index.extend(row)
        value.extend(row.values())
        starts.append(len(index))
    for hid, ub in extra_rows:
        row = expand(((hvar[hid], 1.0),))
        lo.append(-math.inf)
        hi.append(float(ub))
        index.extend(row)
        value.extend(row.values())
        starts.append(len(index))
    for v in model.z.values():                  # a z in no row still gets its column
        expand(((v, 0.0),))
    n, m = len(cols), len(lo)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.array([cost.get(j, 0.0) for j in range(n)])
    lp.col_lower_ = np.array([-math.inf if v.lowBound is None else float(v.lowBound) for v in cols])
    lp.col_upper_ = np.array([math.inf if v.upBound is None else float(v.upBound) for v in cols])
    lp.row_lower_ = np.array(lo, dtype=float)
    lp.row_upper_ = np.array(hi, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=float)
    lp.offset_ = float(prob.objective.constant or 0.0)
    zkeys = list(model.z)
    zcol = np.array([col_of[id(model.z[k])] for k in zkeys], dtype=np.int64)
    # rows of Z itself (one variant per task, accuracy): only z and accuracy/table columns
    zpos = {int(c): i for i, c in enumerate(zcol)}
    own = set(zpos) | {col_of[id(v)] for v in list(model.y.values()) + list(model.w.values()) if id(v) in col_of}
    coupling = []
    for r in range(m):
        js = index[starts[r]:starts[r + 1]]
        if all(j in own for j in js):
            continue
        for j, a in zip(js, value[starts[r]:starts[r + 1]]):
            if j in zpos:
                coupling.append((r, zpos[j], a))
    return Relaxation(lp, cols, zkeys, zcol, tuple(coupling), len(load))


class AccuracySet:
    """Z, the variant choices meeting the accuracy SLO, for the exact minimum of a linear
    function y.z over it: one knapsack row sum_t g_t(m_t) >= G over all tasks (a Pareto
    search over tasks: keep the (weight, cost) pairs no other pair beats on both), or the rows
    of an accuracy table. ``of`` returns None when Z is neither."""

    def __init__(self, n: int, groups=None, need: float = 0.0, table=None):
        self.n = n
        self.groups = groups                    # [(z indices, weights)] per task
        self.need = need - _FEAS_TOL            # admit what the MILP's tolerances admit
        self.table = table                      # rows x tasks array of z indices

    @classmethod
    def of(cls, model: Model) -> Optional["AccuracySet"]:
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
            # (8b): default profiles; with each task a parent of the next, every source-to-sink
            # path is a subset of all tasks and ln acc <= 0, so the path through all is the row
            if pb.min_accuracy is None or any(vobj[k].profile is not None for k in zkeys):
                return None
            if any(pb.tasks[i - 1].name not in pb.tasks[i].parents for i in range(1, len(pb.tasks))):
                return None
            if any(not 0 < vobj[k].accuracy <= 1 for k in zkeys):
                return None
            weight = {k: math.log(vobj[k].accuracy) for k in zkeys}
            need = math.log(max(pb.min_accuracy, 1e-12))
        groups = []
        for t in tasks:
            idx = [i for i, k in enumerate(zkeys) if k[0] == t]
            if not idx:
                return None
            groups.append((np.array(idx, dtype=np.int64), np.array([weight[zkeys[i]] for i in idx])))
        return cls(len(zkeys), groups=groups, need=need)

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

    PARETO_CAP = 20000

    def _pareto(self, y, k):
        """Exact: per task, extend the (weight, cost) pairs no other pair beats on both; None
        when the pairs outgrow PARETO_CAP."""
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
            if keep.sum() > self.PARETO_CAP:
                return None
            W, C = W2[keep], C2[keep]
            pick = np.concatenate([pick[src[keep]], idx[var[keep]][:, None]], axis=1)
        order = np.argsort(C, kind="stable")[:k]
        return [(float(C[j]), pick[j].tolist()) for j in order]

    BUCKETS = 8192

    def _buckets(self, y, k):
        """When the exact search is too large: a dynamic program over the row's slack cut in
        BUCKETS steps. Rounding each task's shortfall *down* admits a superset of Z, so its
        minimum is a valid beta; rounding *up* admits a subset, whose choices are in Z."""
        top = [float(g.max()) for _, g in self.groups]
        slack = sum(top) - self.need                 # the total shortfall a choice may have
        if slack < 0:
            return math.inf, []
        step = max(slack, 1e-9) / self.BUCKETS

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


@dataclass
class HullResult:
    status: str                     # ok | infeasible | stopped
    lower: float = -math.inf        # proven lower bound on the full problem
    choice: Optional[dict] = None   # best choice found
    value: float = math.inf         # R's LP value with that choice fixed (<= its placement cost)
    x: Optional[list] = None        # R's solution for it (warm start)
    cuts: list = field(default_factory=list)   # (y, beta): y.z >= beta for every feasible plan
    iterations: int = 0
    root: Optional[float] = None    # R's LP bound before the cuts


def _highs(lp, threads=None, presolve="off"):
    import highspy
    from atoll.planner.solve import _silence_highs_banner
    _silence_highs_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if threads:
        h.setOptionValue("threads", int(threads))
    h.passModel(lp)
    h.setOptionValue("presolve", presolve)
    return h


def _limit(h, deadline: float) -> None:
    """HiGHS' clock runs across the run() calls of one instance: its limit is a total."""
    h.setOptionValue("time_limit", float(h.getRunTime() + max(0.05, deadline - time.perf_counter())))


def _optimal(h) -> bool:
    import highspy
    return h.getModelStatus() == highspy.HighsModelStatus.kOptimal


def _infeasible(h) -> bool:
    import highspy
    return h.getModelStatus() in (highspy.HighsModelStatus.kInfeasible,
                                  highspy.HighsModelStatus.kUnboundedOrInfeasible)


def hull_phase(R: Relaxation, Z: Optional[AccuracySet], time_limit: float,
               opts=None, columns_per_round: int = 10, max_rounds: int = 300, smoothing: float = 0.5,
               candidates: int = 2) -> HullResult:
    """Steps (a)-(c) up to the candidate choices: R's LP, then column generation over Z for the
    accuracy hull cuts and the bound, then the best of the choices the master uses most."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    h = _highs(R.lp, getattr(opts, "threads", None), presolve="on")
    h.setOptionValue("time_limit", float(max(0.05, time_limit)))
    h.run()
    if _infeasible(h):
        return HullResult("infeasible")
    if not _optimal(h):
        return HullResult("stopped")
    h.setOptionValue("presolve", "off")        # from here on: warm-started simplex
    h.setOptionValue("simplex_strategy", 0)    # let HiGHS choose primal or dual per solve
    root = h.getInfo().objective_function_value
    res = HullResult("ok", lower=root, root=root)
    sol = h.getSolution()
    x = np.array(sol.col_value)
    best_of: dict = {}                          # the LP's own rounding: each task's largest z
    for i, (t, _m) in enumerate(R.zkeys):
        if t not in best_of or x[R.zcol[i]] > x[R.zcol[best_of[t]]]:
            best_of[t] = i
    rounding = sorted(best_of.values())
    if Z is None:
        _evaluate_fixed(h, R, [rounding], res)
        return res
    price = np.zeros(len(R.zkeys))              # what the coupling rows charge each z
    y_row = np.array(sol.row_dual)
    for r, i, a in R.coupling_z:
        price[i] -= a * y_row[r]
    beta0, first = Z.minimize(price, columns_per_round)
    if not math.isfinite(beta0):
        return HullResult("infeasible")         # no choice meets the accuracy SLO
    if not first:                               # the coarse search found no choice surely in Z
        _evaluate_fixed(h, R, [rounding], res)
        return res
    master = _Master(h, R, res.root)
    for _, sel in first:
        master.add(sel)
    best = res.lower
    center = None                               # the duals of the best bound so far
    while time.perf_counter() < deadline:
        _limit(h, deadline)
        h.run()
        if not _optimal(h):
            break
        res.iterations += 1
        obj = h.getInfo().objective_function_value
        sol = h.getSolution()
        dual = np.array(sol.row_dual)
        y, mu = dual[master.link], dual[master.conv]
        # an unused variant's link dual is only bounded above (its z at 0 keeps a reduced cost
        # d >= 0): raise it to that bound, y + d. The duals stay feasible and optimal (the rows'
        # right-hand sides are 0, so the dual objective is unchanged), and the pricing no longer
        # sees unused variants as cheaper than R says they are (far fewer rounds).
        zv = np.array(sol.col_value)[R.zcol]
        d = np.array(sol.col_dual)[R.zcol]
        up = (zv <= 1e-9) & (d > 0)
        y[up] = np.minimum(y[up] + d[up], master.big)
        beta, found = Z.minimize(y, columns_per_round)
        if not math.isfinite(beta):
            return HullResult("infeasible")
        rc = beta - mu                          # least reduced cost of a column w_k
        lb = obj + min(0.0, rc)
        lb -= 1e-9 * (1.0 + abs(lb))            # the simplex' dual tolerance, generously
        res.cuts.append((y.copy(), beta))
        if lb > best or center is None:
            best, center = max(best, lb), y.copy()
        if (rc >= -1e-9 * max(1.0, abs(obj)) or obj - best <= 1e-6 * max(1.0, abs(obj))
                or res.iterations >= max_rounds):
            break
        new = [sel for val, sel in found if val - mu < -1e-12]
        if smoothing > 0:                       # also price at duals pulled toward the center
            ys = smoothing * center + (1 - smoothing) * y
            new += [sel for val, sel in Z.minimize(ys, columns_per_round)[1] if float(y[sel].sum()) - mu < -1e-12]
        if not sum(master.add(sel) for sel in new):
            break
    res.lower = max(res.lower, best)
    # step (c): the choices the master uses most, each priced by R's LP with z fixed
    used = []
    if _optimal(h):
        w = h.getSolution().col_value
        used = [list(k) for _, k in sorted(((w[j], k) for k, j in master.cols.items() if w[j] > 1e-7), reverse=True)]
    picks = used[:candidates] or [sel for _, sel in first[:1]]
    master.evaluate(picks, res, deadline + 0.25 * time_limit)
    return res


class _Master:
    """The Dantzig-Wolfe master on R's LP instance: link rows z_i - sum_k w_k zhat_ki + s+ - s- = 0
    (slacks penalised), convexity row sum_k w_k = 1, a column w_k per choice zhat_k in Z."""

    def __init__(self, h, R: Relaxation, root: float):
        import highspy
        self.h, self.R = h, R
        lp = R.lp
        nz = len(R.zkeys)
        self.n0, m0 = lp.num_col_, lp.num_row_
        self.big = 10.0 * max(1.0, abs(root))
        h.addVars(2 * nz, np.zeros(2 * nz), np.full(2 * nz, highspy.kHighsInf))
        self.slack = np.arange(self.n0, self.n0 + 2 * nz, dtype=np.int32)
        h.changeColsCost(2 * nz, self.slack, np.full(2 * nz, self.big))
        for i, c in enumerate(R.zcol):
            h.addRow(0.0, 0.0, 3, np.array([c, self.n0 + 2 * i, self.n0 + 2 * i + 1], dtype=np.int32),
                     np.array([1.0, 1.0, -1.0]))
        h.addRow(1.0, 1.0, 0, np.array([], dtype=np.int32), np.array([]))
        self.link = np.arange(m0, m0 + nz)
        self.conv = m0 + nz
        self.cols: dict[tuple, int] = {}

    def add(self, sel) -> bool:
        import highspy
        key = tuple(sorted(sel))
        if key in self.cols:
            return False
        self.cols[key] = self.n0 + len(self.slack) + len(self.cols)
        self.h.addCol(0.0, 0.0, highspy.kHighsInf, len(key) + 1,
                      np.array([self.link[i] for i in key] + [self.conv], dtype=np.int32),
                      np.array([-1.0] * len(key) + [1.0]))
        return True

    def evaluate(self, picks, res: HullResult, deadline: float) -> None:
        """R's LP value of each choice: its column w_k fixed at 1 (the others then 0)."""
        import highspy
        h = self.h
        seen = set()
        for sel in picks:
            key = tuple(sorted(sel))
            if key in seen or time.perf_counter() > deadline:
                continue
            seen.add(key)
            self.add(key)
            j = self.cols[key]
            h.changeColBounds(j, 1.0, 1.0)
            _limit(h, deadline)
            h.run()
            if _optimal(h):
                x = h.getSolution().col_value
                if max(x[int(c)] for c in self.slack) <= 1e-7:      # no penalised slack: R feasible
                    v = h.getInfo().objective_function_value
                    if v < res.value:
                        res.value = v
                        res.choice = {self.R.zkeys[i][0]: self.R.zkeys[i][1] for i in key}
                        res.x = list(x[:self.n0])
            h.changeColBounds(j, 0.0, highspy.kHighsInf)


def _evaluate_fixed(h, R: Relaxation, picks, res: HullResult) -> None:
    """R's LP value of each choice, with z's bounds fixed (no master)."""
    nz = len(R.zkeys)
    zcol = R.zcol.astype(np.int32)
    lo_z = np.array([R.lp.col_lower_[c] for c in R.zcol])
    hi_z = np.array([R.lp.col_upper_[c] for c in R.zcol])
    for sel in picks:
        lo, hi = np.zeros(nz), np.zeros(nz)
        lo[list(sel)] = hi[list(sel)] = 1.0
        if np.any(lo < lo_z - 1e-9) or np.any(hi > hi_z + 1e-9):
            continue
        h.changeColsBounds(nz, zcol, lo, hi)
        h.run()
        if _optimal(h) and h.getInfo().objective_function_value < res.value:
            res.value = h.getInfo().objective_function_value
            res.choice = {R.zkeys[i][0]: R.zkeys[i][1] for i in sel}
            res.x = list(h.getSolution().col_value)
    h.changeColsBounds(nz, zcol, lo_z, hi_z)


def hull_milp(R: Relaxation, hull: HullResult, time_limit: float, gap: float, opts=None,
              enough: Optional[float] = None):
    """Step (c), continued: R as a MILP in z with the hull cuts, warm-started with the best
    choice; stops early once its bound reaches ``enough``. Returns (lower bound, choice, value):
    the bound is the solver's dual bound (+inf when R has no integer point: no plan exists)."""
    import highspy
    lp = R.lp
    h = _highs(lp, getattr(opts, "threads", None), presolve="on")
    nz = len(R.zkeys)
    h.changeColsIntegrality(nz, R.zcol.astype(np.int32), np.array([highspy.HighsVarType.kInteger] * nz))
    for y, beta in hull.cuts[-40:]:          # the latest (the last duals' cut closes the hull LP)
        h.addRow(beta - 1e-9 * (1.0 + abs(beta)), highspy.kHighsInf, nz, R.zcol.astype(np.int32), y)
    if hull.x is not None:
        sol = highspy.HighsSolution()
        sol.col_value = list(hull.x)
        sol.value_valid = True
        h.setSolution(sol)
    if enough is not None and math.isfinite(enough):
        def check(e):
            if e.data_out.mip_dual_bound >= enough:
                e.interrupt()
        h.cbMipInterrupt += check
    h.setOptionValue("mip_rel_gap", float(gap))
    h.setOptionValue("time_limit", float(max(0.05, time_limit)))
    h.run()
    info = h.getInfo()
    if _infeasible(h):
        return math.inf, None, math.inf
    lower = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else -math.inf
    if info.primal_solution_status != 2:
        return lower, None, math.inf
    x = h.getSolution().col_value
    choice = {R.zkeys[i][0]: R.zkeys[i][1] for i in range(nz) if x[R.zcol[i]] > 0.5}
    return lower, choice, info.objective_function_value
