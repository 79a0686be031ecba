"""Large fleets: choose the variants on a relaxation with a proven bound, then place whole nodes,
branching on the variant choice until the gap is proven or the time is spent.

The full MILP of :mod:`atoll.planner.milp` is exact, but on thousands of nodes HiGHS spends its
time in root cuts over thousands of node-count integers. The two-phase method keeps a proven
lower bound, and so an honest gap:

1. *Variant phase* on a relaxation R of the MILP (:mod:`atoll.planner.decompose`): every
   integer but the variant binaries z is continuous. R relaxes integrality and drops valid
   rows, so its bound LB_R is a bound on the full problem; the accuracy hull cuts tighten it.
   It proposes the choice of least R value.
2. *Placement phase*: fix the chosen variants and solve the (much smaller) MILP with integer
   node counts: the plan, with cost UB, and the placement's own proven bound P(choice) -- the
   least cost of any plan with that choice.
3. *Branching on the choice*, while the gap is short and time is left. Every plan either uses
   one of the choices placed so far or another one, so

       LB = max( LB_R,  min( min over placed choices of P(choice),  B_rest ) )

   where B_rest bounds the choices not placed yet: R as a MILP in z with one no-good row per
   placed choice, and with block (12) paid for whole nodes (R built ``node_costs=True``), so
   that B_rest sees the node integrality R's plain LP ignores. Each step raises the weakest
   term: it places the best remaining choice when B_rest is the least term (finding better
   plans on the way), or goes on with the placement whose P is.

The reported gap is (UB - LB) / UB; the status is "optimal" once it is within the target and
"time_limit" only when the time limit ends the search first.

Where the bound is weak: small fleets with many tasks (``chain/100/10/8/8`` of the benchmark).
Both P(choice) (HiGHS on the placement MILP) and B_rest (R's loads) let every task spread over
every location in the same proportions, so consecutive tasks never pay for the data between
them, while a plan with whole nodes does. A bound over per-location patterns that pays that
mismatch (``bench/planner_location_bound.py``) lifts P(choice) most of the way for a fixed
choice, but the same relaxation over all choices falls back below B_rest: it would have to be
used inside this branching on the choice. ``docs/planner.md`` ("What is left") has the figures.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

from atoll.planner import decompose as D
from atoll.planner import solve as S
from atoll.planner.accuracy_set import AccuracySet
from atoll.planner.baselines import pick_cheapest_variants
from atoll.planner.diagnose import diagnose
from atoll.planner.milp import Model
from atoll.planner.options import PlanOptions
from atoll.planner.plan import Plan
from atoll.planner.problem import PlanProblem


def proven_gap(cost: float, lower: Optional[float]) -> Optional[float]:
    """(cost - lower) / cost, or None without a proven bound on the whole problem."""
    if lower is None or not math.isfinite(lower) or lower <= 0:
        return None
    return max(0.0, (cost - lower) / cost) if cost > 1e-9 else 0.0


@dataclass
class _Placed:
    """One placed choice: its placement model, its best cost and its proven bound."""
    model: Model
    cost: float                 # inf when no plan was found for it
    bound: float                # P(choice); inf when it has no plan at all


class _Search:
    def __init__(self, problem: PlanProblem, model: Model, opts: PlanOptions, t0: float, up: bool,
                 previous, churn: float):
        self.pb, self.model, self.opts = problem, model, opts
        self.up, self.previous, self.churn = up, previous, churn
        self.deadline = t0 + opts.time_limit
        self.placed: dict[tuple, _Placed] = {}
        self.best: Optional[tuple] = None        # key of the incumbent's choice
        self.lower_r = -math.inf                 # LB_R
        self.rest = -math.inf                    # B_rest
        self.steps: list[str] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    @property
    def ub(self) -> float:
        return self.placed[self.best].cost if self.best is not None else math.inf

    def lower(self) -> float:
        terms = [self.rest] + [p.bound for p in self.placed.values()]
        return max(self.lower_r, min(terms))

    def gap(self) -> Optional[float]:
        return proven_gap(self.ub, self.lower()) if math.isfinite(self.ub) else None

    def done(self) -> bool:
        g = self.gap()
        return g is not None and g <= self.opts.gap + 1e-12

    def place(self, choice: dict, time_limit: float) -> None:
        """Place ``choice`` (or go on with its placement): stop once the plan is within the gap
        of the bound held, or once the placement's bound shows it cannot beat the incumbent."""
        key = tuple(sorted(choice.items()))
        old = self.placed.get(key)
        fixed = old.model if old else Model(self.pb, up_only=self.up, previous=self.previous,
                                            churn_penalty=self.churn, fix_choice=choice)
        lo = self.lower()
        stop = lo / (1.0 - self.opts.gap) if math.isfinite(lo) and lo > 0 else None
        enough = self.ub * (1 - self.opts.gap) if math.isfinite(self.ub) and self.best != key else None
        kept = [(v, v.varValue) for v in fixed.prob.variables()] if old and math.isfinite(old.cost) else None
        warm = kept is not None or S.rounded_start(fixed, self.opts)
        res = S.run(fixed, self.opts, time_limit=max(0.05, time_limit), stop_at=stop, bound_at=enough,
                    rel_gap=0.5 * self.opts.gap, warm=warm)
        if res.status == "infeasible":
            self.placed[key] = _Placed(fixed, math.inf, math.inf)
            return
        cost = res.objective if res.status in ("optimal", "time_limit") else math.inf
        bound = res.bound if res.bound is not None else (cost if res.status == "optimal" else -math.inf)
        if old is not None:
            bound = max(bound, old.bound)
            if cost >= old.cost and kept is not None:   # the earlier plan stays: its values back
                for v, x in kept:
                    v.varValue = x
                cost = old.cost
        self.placed[key] = _Placed(fixed, cost, min(bound, cost))
        if cost < self.ub:
            self.best = key

    def extract(self) -> Optional[Plan]:
        if self.best is None:
            return None
        g = self.gap()
        status = "optimal" if g is not None and g <= self.opts.gap + 1e-12 else "time_limit"
        notes = (f"solver {S.solver_name(self.opts)}, two-phase: {', then '.join(self.steps)}",)
        return S.extract(self.placed[self.best].model, planner="milp", status=status,
                         seconds=self.opts.time_limit - self.left(), gap=g, notes=notes, previous=self.previous)


def two_phase_plan(problem: PlanProblem, model: Model, opts: PlanOptions, t0: float, up: bool,
                   previous, churn: float) -> tuple[Optional[Plan], float]:
    """Variants on R with the accuracy hull cuts, placement, then branching on the choice.
    Returns (plan or None, the proven lower bound); raises the diagnosis when R shows that no
    plan exists."""
    s = _Search(problem, model, opts, t0, up, previous, churn)
    tl = opts.time_limit
    R = D.relaxation(model)
    Z = AccuracySet.of(model)
    hull = D.hull_phase(R, Z, max(0.2 * tl, opts.phase1_share * tl - (tl - s.left())), opts)
    if hull.status == "infeasible":
        raise diagnose(problem, opts)
    s.lower_r = s.rest = hull.lower if hull.status == "ok" else -math.inf
    s.steps.append(f"hull bound ({hull.iterations} pricing rounds)" if Z is not None else "LP bound")
    choice = hull.choice if hull.choice is not None and problem.accuracy_ok(hull.choice) else None
    milp: Optional[D.ChoiceMilp] = None

    def variant_milp() -> D.ChoiceMilp:
        nonlocal milp
        if milp is None:
            milp = D.ChoiceMilp(D.relaxation(model, node_costs=True), hull, 0.25 * opts.gap, opts, warm=False)
        return milp

    if choice is None:                   # no choice from the hull: R as a MILP in z picks one
        lb, choice, _ = variant_milp().solve(max(0.1 * tl, 0.5 * s.left()))
        s.steps.append("variant MILP")
        if lb == math.inf:
            raise diagnose(problem, opts)
        s.lower_r = s.rest = max(s.lower_r, lb)
    if choice is None:                   # out of time before a first choice: the greedy one
        choice = pick_cheapest_variants(problem, [q for q in problem.pools if problem.pool_allowed(q)])
        if choice is None:
            return None, s.lower_r
    s.place(choice, max(0.3 * tl, 0.6 * s.left()))
    s.steps.append("placement")
    placed, excluded = [choice], 0
    while not s.done() and s.left() > 0.05 * tl and math.isfinite(s.ub):
        weakest_key, weakest = min(s.placed.items(), key=lambda kv: kv[1].bound)
        if weakest.bound < s.rest:       # a placed choice holds the bound down: go on with it
            s.place(dict(weakest_key), s.left() - 0.02 * tl)
            if s.placed[weakest_key].bound <= weakest.bound + 1e-9 * abs(weakest.bound):
                break                    # no progress within the time left
            continue
        m = variant_milp()
        for c in placed[excluded:]:      # the choices placed so far leave the variant MILP
            m.exclude(c)
        excluded = len(placed)
        before = s.rest
        lb, nxt, _ = m.solve(s.left() - 0.02 * tl, enough=s.ub * (1 - opts.gap))
        s.rest = max(s.rest, lb)
        if nxt is not None and not problem.accuracy_ok(nxt):
            m.exclude(nxt)               # within R's tolerance but not the SLO's: no plan lost
            continue
        if nxt is None or lb >= s.ub * (1 - opts.gap):
            if s.rest <= before + 1e-9 * abs(before):
                break                    # no progress within the time left
            continue
        s.place(nxt, s.left() - 0.02 * tl)
        placed.append(nxt)
    if len(placed) > 1 or milp is not None:
        s.steps.append(f"{len(placed)} choices placed")
    return s.extract(), s.lower()
