"""The planner's public interface: a pure function from a PlanProblem (and an optional previous
Plan) to a Plan, and every planning policy behind that same interface.

``plan(problem, previous=None, options=PlanOptions())`` solves the MILP of
:mod:`atoll.planner.milp`; ``PLANNERS`` maps every policy name to a function with the same
interface (the MILP and its baselines), so ``atoll plan --planner NAME`` is one line per policy.
``problem_from_specs`` assembles a problem from the workflow, cluster and catalog specs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from atoll.planner.baselines import cloud_only_plan, greedy_plan, most_accurate_plan
from atoll.planner.build import problem_from_specs
from atoll.planner.diagnose import SLOInfeasible, max_accuracy
from atoll.planner.driver import milp_plan
from atoll.planner.explain import explain
from atoll.planner.jellybean import jellybean_plan
from atoll.planner.options import PlanOptions
from atoll.planner.plan import HostCounts, HostGroup, Plan, Replica, Route, node_assignments
from atoll.planner.problem import Edge, Network, PlanProblem, Pool, Source, Task, Variant


def plan(problem: PlanProblem, previous: Optional[Plan] = None,
         options: Optional[PlanOptions] = None) -> Plan:
    """Least-cost plan meeting the SLOs; raises PlanInfeasible naming the SLO that fails.
    With ``options.explain`` the plan carries the binding constraints and each SLO's cost."""
    p = milp_plan(problem, previous=previous, options=options)
    if options is not None and options.explain:
        p = replace(p, explain=explain(problem, p, options, replan=milp_plan))
    return p


PLANNERS: dict[str, Callable[..., Plan]] = {
    "milp": plan,
    "greedy": greedy_plan,
    "cloud_only": cloud_only_plan,
    "most_accurate": most_accurate_plan,
    "jellybean": jellybean_plan,
}

__all__ = ["plan", "PLANNERS", "PlanOptions", "PlanProblem", "Plan", "HostCounts", "HostGroup", "Replica", "Route",
           "Variant", "Task", "Source", "Edge", "Pool", "Network", "SLOInfeasible", "max_accuracy",
           "node_assignments", "problem_from_specs", "explain"]
