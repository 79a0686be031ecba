"""The two-phase method's variant phase: a relaxation R with a proven bound, tightened by the
accuracy hull cuts (block (11) of :mod:`atoll.planner.milp`); :mod:`atoll.planner.two_phase`
drives it. Each step's bound is valid on its own:

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
b. Accuracy hull cuts. Let Z be the variant choices that meet the accuracy SLO
   (:mod:`atoll.planner.accuracy_set`). For prices y, beta(y) <= min over z in Z of y.z is
   computed by a search over Z, so y.z >= beta(y) holds for every feasible plan. R's LP alone
   mixes variants (a task half served by a fast, inaccurate variant and half by a slow,
   accurate one meets the SLO "on average"); these cuts remove such points. The prices come
   from Dantzig-Wolfe column generation (:class:`_Master`): R's LP with z = sum_k w_k zhat_k
   over choices zhat_k in Z (w >= 0, sum w = 1, slacks on these link rows at a high price keep
   it feasible); the pricing problem is beta of the link rows' duals. At every round
   LB = master objective + min(0, beta - convexity dual) (the Lagrangian bound; a beta taken
   over a superset of Z only lowers it), valid whether or not the generation converged. At
   convergence it is min { R's LP : z in conv(Z) }, and the cut of the last duals alone gives
   R's LP that value. Two devices cut the rounds: an unused variant's link dual (free below its
   reduced cost) is raised to that bound, an equally optimal dual; and each round also prices
   duals pulled half way toward those of the best bound so far (the columns found there are
   added only if they price out at the master's own duals).
c. The choices the master uses most are each priced by R's LP with their column fixed; the
   cheapest is the choice. R as a MILP in z with the cuts of (b) (HiGHS branch and cut,
   :class:`ChoiceMilp`) picks a choice when (b) gives none and bounds the choices not placed
   yet when :mod:`atoll.planner.two_phase` branches on the choice. Built with ``node_costs``,
   R also pays block (12) of the MILP: see :func:`_node_cost_rows`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pulp

from atoll.planner import highs
from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.milp import Model


@dataclass
class Relaxation:
    """R as highspy arrays: an LP (``lp.integrality_`` empty); z's columns are ``zcol``."""

    lp: object                       # highspy.HighsLp
    cols: list                       # the pulp variable of each column
    zkeys: list                      # (task, variant) of each z, in ``model.z`` order
    zcol: np.ndarray                 # column of each z
    coupling_z: tuple                # (row, z index, coefficient) of z in rows other than Z's own
    substituted: int                 # node counts replaced by their load


def relaxation(model: Model, node_costs: bool = False) -> Relaxation:
    """Step (a): R, with node counts continuous and substituted by their loads where that keeps
    the optimum (see the module docstring); rows (10) and (12) holding a substituted count
    dropped, and with ``node_costs`` block (12) paid as :func:`_node_cost_rows` says."""
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
                or any(not n.startswith(("c3_", "c4_", "c10_", "c12_")) for n, _, _ in rows)
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
    extra = _node_cost_rows(model, expand, cost) if node_costs else []
    for name, con in rows_all:
        if name.startswith("c3_") and any(id(v) in load for v, _ in con.items()):
            continue
        if name.startswith(("c10_", "c12_")) and any(id(v) in load for v, _ in con.items()):
            continue
        row = expand(con.items())
        rhs = -con.constant
        sense = con.sense
        lo.append(rhs if sense in (pulp.LpConstraintGE, pulp.LpConstraintEQ) else -math.inf)
        hi.append(rhs if sense in (pulp.LpConstraintLE, pulp.LpConstraintEQ) else math.inf)
        index.extend(row)
        value.extend(row.values())
        starts.append(len(index))
    extra += [(expand(((hvar[hid], 1.0),)), -math.inf, float(ub)) for hid, ub in extra_rows]
    for row, low, high in extra:
        lo.append(low)
        hi.append(high)
        index.extend(row)
        value.extend(row.values())
        starts.append(len(index))
    for v in model.z.values():                  # a z in no row still gets its column
        expand(((v, 0.0),))
    n, m = len(cols), len(lo)
    lp = highs.row_lp(np.array([cost.get(j, 0.0) for j in range(n)]),
                      np.array([-math.inf if v.lowBound is None else float(v.lowBound) for v in cols]),
                      np.array([math.inf if v.upBound is None else float(v.upBound) for v in cols]),
                      np.array(lo, dtype=float), np.array(hi, dtype=float),
                      np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32),
                      np.array(value, dtype=float), prob.objective.constant or 0.0)
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


class _Column:
    """A column of R that is no variable of the MILP (R's own compute-cost columns), >= 0."""
    lowBound, upBound = 0.0, None


def _node_cost_rows(model: Model, expand, cost: dict) -> list[tuple[dict, float, float]]:
    """Block (12) in R: with node counts lowered to their loads the rows (12) would cut off
    plans, so R pays instead C >= max(its fractional compute cost, sum over groups g of C_g),
    C_g >= K_vm z[v,m] for each member (v, m) of g and C_g >= the class-price load of g. For a
    plan, C = its compute cost and C_g = the class-price cost of g's nodes satisfy them all, so
    R stays a relaxation. Edits ``cost`` (R's objective) and returns the rows."""
    if not model.cover_cost:
        return []
    compute = expand(model.seg_cost)
    for j, a in compute.items():
        cost[j] -= a
    total = _Column()
    groups = {g: _Column() for g in model.group_nodes}
    (jt,) = expand(((total, 0.0),))
    cost[jt] = 1.0
    rows = [({**{j: -a for j, a in compute.items()}, jt: 1.0}, 0.0, math.inf)]
    rows.append((expand([(total, 1.0)] + [(c, -1.0) for c in groups.values()]), 0.0, math.inf))
    for g, c in groups.items():
        rows.append((expand([(c, 1.0)] + [(h, -price) for h, price in model.group_nodes[g].items()]), 0.0, math.inf))
    for (t, m), k in model.cover_cost.items():
        rows.append((expand([(groups[model.vgroup[(t, m)]], 1.0), (model.z[(t, m)], -k)]), 0.0, math.inf))
    return rows


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


def hull_phase(R: Relaxation, Z: Optional[AccuracySet], time_limit: float,
               opts=None, columns_per_round: int = 10, max_rounds: int = 300, smoothing: float = 0.5,
               candidates: int = 2) -> HullResult:
    """Steps (a)-(c) up to the candidate choices: R's LP, then column generation over Z for the
    accuracy hull cuts and the bound, then the best of the choices the master uses most."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    h = highs.new(R.lp, getattr(opts, "threads", None), presolve="on")
    h.setOptionValue("time_limit", float(max(0.05, time_limit)))
    h.run()
    if highs.infeasible(h):
        return HullResult("infeasible")
    if not highs.optimal(h):
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
        highs.set_deadline(h, deadline)
        h.run()
        if not highs.optimal(h):
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
    if highs.optimal(h):
        w = h.getSolution().col_value
        used = [list(k) for _, k in sorted(((w[j], k) for k, j in master.cols.items() if w[j] > 1e-7), reverse=True)]
    picks = used[:candidates] or [sel for _, sel in first[:1]]
    master.evaluate(picks, res, deadline + 0.25 * time_limit)
    return res


class _Master:
    """The Dantzig-Wolfe master on R's LP instance: link rows z_i - sum_k w_k zhat_ki + s+ - s- = 0
    (slacks penalised), convexity row sum_k w_k = 1, a column w_k per choice zhat_k in Z."""

    def __init__(self, h, R: Relaxation, root: float):
        self.h, self.R = h, R
        lp = R.lp
        nz = len(R.zkeys)
        self.n0, m0 = lp.num_col_, lp.num_row_
        self.big = 10.0 * max(1.0, abs(root))
        h.addVars(2 * nz, np.zeros(2 * nz), np.full(2 * nz, highs.INF))
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
        key = tuple(sorted(sel))
        if key in self.cols:
            return False
        self.cols[key] = self.n0 + len(self.slack) + len(self.cols)
        self.h.addCol(0.0, 0.0, highs.INF, len(key) + 1,
                      np.array([self.link[i] for i in key] + [self.conv], dtype=np.int32),
                      np.array([-1.0] * len(key) + [1.0]))
        return True

    def evaluate(self, picks, res: HullResult, deadline: float) -> None:
        """R's LP value of each choice: its column w_k fixed at 1 (the others then 0)."""
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
            highs.set_deadline(h, deadline)
            h.run()
            if highs.optimal(h):
                x = h.getSolution().col_value
                if max(x[int(c)] for c in self.slack) <= 1e-7:      # no penalised slack: R feasible
                    v = h.getInfo().objective_function_value
                    if v < res.value:
                        res.value = v
                        res.choice = {self.R.zkeys[i][0]: self.R.zkeys[i][1] for i in key}
                        res.x = list(x[:self.n0])
            h.changeColBounds(j, 0.0, highs.INF)


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
        if highs.optimal(h) and h.getInfo().objective_function_value < res.value:
            res.value = h.getInfo().objective_function_value
            res.choice = {R.zkeys[i][0]: R.zkeys[i][1] for i in sel}
            res.x = list(h.getSolution().col_value)
    h.changeColsBounds(nz, zcol, lo_z, hi_z)


class ChoiceMilp:
    """Step (c): R as a MILP in z with the hull cuts. Choices already placed can be excluded
    (a no-good row each: sum of the choice's z <= tasks - 1), so that its bound covers the
    choices not yet placed; with R built ``node_costs=True`` it also pays for whole nodes."""

    def __init__(self, R: Relaxation, hull: HullResult, gap: float, opts=None, warm: bool = True):
        self.R = R
        self.h = highs.new(R.lp, getattr(opts, "threads", None), presolve="on")
        nz = len(R.zkeys)
        self.zcol = R.zcol.astype(np.int32)
        highs.make_integer(self.h, self.zcol)
        for y, beta in hull.cuts[-40:]:      # the latest (the last duals' cut closes the hull LP)
            self.h.addRow(beta - 1e-9 * (1.0 + abs(beta)), highs.INF, nz, self.zcol, y)
        if warm and hull.x is not None and len(hull.x) == R.lp.num_col_:
            highs.start_from(self.h, hull.x)
        self.enough = math.inf
        highs.stop_when(self.h, lambda _primal, dual: dual >= self.enough)
        self.h.setOptionValue("mip_rel_gap", float(gap))
        self.excluded = 0

    def exclude(self, choice: dict) -> None:
        cols = np.array([self.zcol[i] for i, (t, m) in enumerate(self.R.zkeys) if choice.get(t) == m], dtype=np.int32)
        self.h.addRow(-highs.INF, float(len(cols) - 1), len(cols), cols, np.ones(len(cols)))
        self.excluded += 1

    def solve(self, time_limit: float, enough: Optional[float] = None) -> tuple[float, Optional[dict], float]:
        """(lower bound, best choice or None, its R value); stops once the bound reaches
        ``enough``. The bound is +inf when no choice is left (none meets the SLO, or all are
        excluded)."""
        self.enough = math.inf if enough is None else enough
        self.h.setOptionValue("time_limit", float(self.h.getRunTime() + max(0.05, time_limit)))
        self.h.run()
        info = self.h.getInfo()
        if highs.infeasible(self.h):
            return math.inf, None, math.inf
        lower = info.mip_dual_bound if math.isfinite(info.mip_dual_bound) else -math.inf
        if info.primal_solution_status != 2:
            return lower, None, math.inf
        x = self.h.getSolution().col_value
        nz = len(self.R.zkeys)
        choice = {self.R.zkeys[i][0]: self.R.zkeys[i][1] for i in range(nz) if x[self.R.zcol[i]] > 0.5}
        return lower, choice, info.objective_function_value
