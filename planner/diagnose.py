"""What to say when no plan exists: the SLO that fails and the best value reachable."""

from __future__ import annotations

from typing import Optional

from atoll.core.errors import PlanInfeasible
from atoll.planner import solve as S
from atoll.planner.milp import Model
from atoll.planner.options import PlanOptions
from atoll.planner.problem import PlanProblem


class SLOInfeasible(PlanInfeasible):
    """PlanInfeasible with the accuracy under which the throughput was measured (if any)."""

    def __init__(self, message: str, *, slo: str, asked=None, reachable=None, hint=None,
                 accuracy: Optional[float] = None):
        self.accuracy = accuracy
        super().__init__(message, slo=slo, asked=asked, reachable=reachable, hint=hint)


def placeable_variants(problem: PlanProblem) -> dict[str, list]:
    """task -> variants that can run on at least one allowed pool."""
    return {t.name: [m for m in t.variants if any(problem.mu(m, p) > 0 for p in problem.pools)]
            for t in problem.tasks}


def max_accuracy(problem: PlanProblem) -> float:
    """Best end-to-end accuracy any choice of placeable variants reaches (capacity ignored)."""
    cand = placeable_variants(problem)
    if any(not v for v in cand.values()):
        return 0.0
    if problem.accuracy_model == "table":
        ok = [acc for combo, acc in problem.accuracy_table
              if all(any(m.name == vn for m in cand[t]) for t, vn in combo)]
        return max(ok, default=0.0)
    if problem.accuracy_model == "additive":
        return 1.0 - sum(1.0 - max(m.accuracy for m in cand[t.name]) for t in problem.tasks)
    # profiles are non-decreasing, so the best output of each task, in topological order, is optimal
    best = {s.name: 1.0 for s in problem.sources}
    for t in problem.tasks:
        x = min(best[p] for p in t.parents)
        best[t.name] = max(m.out_accuracy(x) for m in cand[t.name])
    return min(best[s] for s in problem.sinks())


def diagnose(problem: PlanProblem, opts: PlanOptions) -> PlanInfeasible:
    """Name the SLO that cannot be met and the best value reachable."""
    cand = placeable_variants(problem)
    for t in problem.tasks:
        if not cand[t.name]:
            return SLOInfeasible(
                f"task {t.name!r}: no variant can run on any allowed node (no throughput profile for "
                f"their hardware, too little GPU memory, or the tier/region is forbidden"
                f"{'; trusted_only: only nodes the operator trusts count' if problem.trusted_only else ''})",
                slo="memory", hint="add nodes of a profiled hardware class or lift a placement ban")
    if problem.min_accuracy is not None:
        best = max_accuracy(problem)
        if best < problem.min_accuracy - 1e-9:
            return SLOInfeasible(
                f"accuracy {problem.min_accuracy:.3f} asked, at most {best:.3f} reachable with the "
                f"variants that fit the nodes given", slo="accuracy", asked=problem.min_accuracy,
                reachable=best, hint="lower slo.min_accuracy or add more accurate variants")
    if problem.max_accuracy_loss is not None:
        best_loss = sum(max(m.accuracy for m in problem.task(t).variants) - max(m.accuracy for m in c)
                        for t, c in cand.items())
        if best_loss > problem.max_accuracy_loss + 1e-9:
            return SLOInfeasible(
                f"accuracy loss at most {problem.max_accuracy_loss:.3f} asked, at least {best_loss:.3f} "
                f"reachable on the nodes given", slo="accuracy", asked=problem.max_accuracy_loss,
                reachable=best_loss, hint="raise slo.max_accuracy_loss or add nodes for the best variants")
    model = Model(problem, up_only=opts.data_up_only, mode="throughput")
    res = S.run(model, opts, time_limit=max(5.0, opts.time_limit))
    asked = problem.total_source_rate
    if res.status not in ("optimal", "time_limit"):
        return SLOInfeasible(
            f"no plan meets the SLOs (throughput {asked:g} req/s asked); the reachable throughput "
            f"could not be computed within the time limit", slo="throughput", asked=asked,
            hint="raise the time limit, add nodes, or relax the SLOs")
    alpha = res.objective or 0.0
    if res.status == "time_limit" and res.bound is not None:
        alpha = res.bound                   # "at most": the solver's bound on the maximum
    reach = alpha * asked
    acc = problem.min_accuracy
    cond = f" with accuracy >= {acc:.2f}" if acc is not None else ""
    if problem.accuracy_model == "additive" and problem.max_accuracy_loss is not None:
        cond = f" with accuracy loss <= {problem.max_accuracy_loss:.3f}"
    return SLOInfeasible(
        f"throughput {asked:g} req/s asked, at most {reach:.4g} req/s reachable{cond} on the nodes given",
        slo="throughput", asked=asked, reachable=reach, accuracy=acc,
        hint="add nodes, lift placement bans or bandwidth caps, or relax the accuracy SLO")
