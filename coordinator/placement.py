"""Placement: a workflow spec on an immutable fleet snapshot -> a typed plan and the replicas it
puts on concrete nodes. Pure: :func:`place` reads its inputs and returns a :class:`Placement`.

Planning: the READY nodes free for the workflow become pools (``fleet.fleet_pools``); the
planner's problem is built from the spec on those pools, with the throughput measured on the
fleet replacing the declared figure for this workflow (:func:`with_measured`) and every source
rate times the autoscaler's ``scale`` (``PlanProblem.scaled``). ``trusted_only`` is the
planner's rule (a forbidden ``renter`` tier, ``atoll.planner.build``). A re-plan passes the live
assignments: the planner's churn penalty keeps replicas in place unless moving them pays.

Two placements are several plans merged with ``Plan.merge`` (each planned for a share of the
rate on its own nodes; their assignments concatenated):

- an on-demand floor (``autoscaling.on_demand_floor``): that share of the rate is planned first
  on non-preemptible nodes only, the rest on all the nodes left, so losing every spot host keeps
  the floor serving;
- failure domains (``placement.min_failure_domains`` n > 1, without a floor): the rate is split
  in n equal shares, each planned on one domain's nodes, domains tried cheapest first.

Assignments (:func:`assign`): each of the plan's host groups (a base-model group on ``count``
hosts of a pool) takes ``count`` nodes of its pool, preferring nodes that already hold that
group (a re-plan moves as little as it can), then nodes that already hold its base model
(loaded, or complete in their fetch cache: a cold start without the fetch); every member
(task, variant) of the group becomes one replica on each of those nodes. A replica's routing
weight is the request rate the plan gives its (task, variant, pool) divided by the hosts that
share it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace
from typing import Callable, Collection, Mapping, Optional, Sequence

from atoll.coordinator.fleet import FleetSnapshot, fleet_pools
from atoll.coordinator.records import Assignment, Constraints, Deployment, FailureDomains, OnDemandFloor
from atoll.coordinator.stages import VariantServing, WorkflowServing
from atoll.core.errors import PlanInfeasible
from atoll.planner.api import HostCounts, Plan, PlanProblem
from atoll.planner.api import plan as milp_plan
from atoll.planner.build import problem_from_specs
from atoll.specs.cluster import ClusterSpec
from atoll.specs.common import parse_obj
from atoll.specs.workflow import WorkflowSpec

Planner = Callable[..., Plan]        # (problem, previous=HostCounts | None) -> Plan


@dataclass(frozen=True)
class Placement:
    plan: Plan
    assignments: tuple[Assignment, ...]
    deployment: Deployment             # constraints, and the floor or the failure domains if any


@dataclass(frozen=True)
class _Part:
    plan: Plan
    assignments: tuple[Assignment, ...]
    constraints: Constraints


def place(workflow: str, spec: WorkflowSpec, serving: WorkflowServing, fleet: FleetSnapshot, *,
          previous: Sequence[Assignment] = (), scale: float = 1.0, planner: Planner = milp_plan) -> Placement:
    """Plan ``spec`` with its sources' rates times ``scale`` on ``fleet``; raises PlanInfeasible."""
    floor = float(spec.autoscaling.on_demand_floor) if spec.autoscaling is not None else 0.0
    domains = int(spec.placement.min_failure_domains)

    def part(share: float, on_demand_only: bool = False, exclude: Collection[str] = frozenset()) -> _Part:
        return _plan_part(workflow, spec, serving, fleet, previous=previous, factors=(scale, share),
                          on_demand_only=on_demand_only, exclude=frozenset(exclude), planner=planner)

    if floor <= 0 and domains > 1:
        return _spread(spec, fleet, domains, part)
    if floor <= 0:
        one = part(1.0)
        return Placement(one.plan, one.assignments, Deployment(constraints=one.constraints))
    base = part(floor, on_demand_only=True)
    if floor >= 1.0:
        return Placement(base.plan, base.assignments, Deployment(constraints=base.constraints))
    rest = part(1.0 - floor, exclude={a.node_id for a in base.assignments})
    return Placement(Plan.merge([base.plan, rest.plan], variants=rest.plan.variants),
                     base.assignments + rest.assignments,
                     Deployment(constraints=rest.constraints,
                                on_demand_floor=OnDemandFloor(floor, base.plan.total_cost_per_hour)))


def _spread(spec: WorkflowSpec, fleet: FleetSnapshot, n: int, part: Callable[..., _Part]) -> Placement:
    """At least ``n`` failure domains per stage: ``n`` equal shares of the rate, each planned on
    one domain's nodes (domains tried cheapest first)."""
    label = spec.placement.failure_domain
    by_dom: dict[str, list] = {}
    for nd in fleet.nodes:
        by_dom.setdefault(nd.domain(label), []).append(nd)
    if len(by_dom) < n:
        raise PlanInfeasible(f"failure domains: {n} asked, {len(by_dom)} available among the READY nodes "
                             f"(by {label!r})", slo="failure_domains", asked=n, reachable=len(by_dom),
                             hint=f"label more nodes with {label}=... or lower min_failure_domains")
    order = sorted(by_dom, key=lambda d: min(x.price_per_hour for x in by_dom[d]))
    parts: list[_Part] = []
    used: set[str] = set()
    all_ids = {x.id for x in fleet.nodes}
    for d in order:
        if len(parts) == n:
            break
        keep = {x.id for x in by_dom[d]}
        try:
            parts.append(part(1.0 / n, exclude=(all_ids - keep) | used))
            used |= keep
        except PlanInfeasible:
            continue
    if len(parts) < n:
        raise PlanInfeasible(f"failure domains: only {len(parts)} of the {n} asked can each carry 1/{n} of "
                             "the load", slo="failure_domains", asked=n, reachable=len(parts),
                             hint="add capacity in more domains or lower min_failure_domains")
    return Placement(Plan.merge([p.plan for p in parts]), tuple(a for p in parts for a in p.assignments),
                     Deployment(constraints=parts[0].constraints, failure_domains=FailureDomains(label, n)))


def _plan_part(workflow: str, spec: WorkflowSpec, serving: WorkflowServing, fleet: FleetSnapshot, *,
               previous: Sequence[Assignment], factors: tuple[float, ...], on_demand_only: bool,
               exclude: frozenset[str], planner: Planner) -> _Part:
    """One plan on the snapshot's nodes less ``exclude`` (and less preemptible ones when
    ``on_demand_only``), for the declared rates times each of ``factors``."""
    nodes = [n for n in fleet.nodes if n.id not in exclude and not (on_demand_only and n.preemptible)]
    if not nodes:
        raise PlanInfeasible("no READY nodes are free for this workflow", slo="capacity", asked=None,
                             reachable=0.0, hint="start agents (`atoll agent`) or delete other workflows")
    pools = fleet_pools(nodes)
    cluster = parse_obj(ClusterSpec, {"name": "live-fleet", "pools": pools}, source="live fleet")
    problem = with_measured(problem_from_specs(spec, cluster, None, workflow_source=workflow), fleet.measured)
    for f in factors:
        if f != 1.0:
            problem = problem.scaled(f)
    pool_nodes = {p["name"]: p["node_ids"] for p in pools}
    prev = HostCounts(previous_hosts(pool_nodes, previous)) if previous else None
    plan = planner(problem, previous=prev)
    constraints = Constraints(trusted_only=bool(spec.placement.trusted_only), on_demand_only=on_demand_only,
                              forbid_tiers=tuple(problem.forbid_tiers), forbid_regions=tuple(problem.forbid_regions))
    assignments = assign(workflow, plan, pool_nodes, serving.variants, previous, fleet.taken | exclude,
                         {n.id: n.resident for n in nodes})
    return _Part(plan, assignments, constraints)


def with_measured(problem: PlanProblem, measured: Mapping[tuple[str, str, str], float]) -> PlanProblem:
    """``problem`` with measured req/s per replica ((task, variant, hardware) -> rps) in place of
    the declared figures, for the hardware classes its pools have."""
    if not measured:
        return problem
    classes = {p.hardware for p in problem.pools}
    tasks = []
    for t in problem.tasks:
        variants = []
        for v in t.variants:
            rps = dict(v.rps)
            for (task, variant, hw), x in measured.items():
                if task == t.name and variant == v.name and hw in classes:
                    if x:
                        rps[hw] = x
                    else:
                        rps.pop(hw, None)
            variants.append(replace(v, rps=rps))
        tasks.append(replace(t, variants=tuple(variants)))
    return replace(problem, tasks=tuple(tasks))


def previous_hosts(pool_nodes: Mapping[str, Sequence[str]],
                   previous: Sequence[Assignment]) -> dict[tuple[str, str], int]:
    """Nodes per (host group, pool) of a live deployment's assignments, on today's pools (nodes
    gone from the fleet are dropped): the previous placement a re-plan's churn penalty uses."""
    pool_of = {nid: name for name, ids in pool_nodes.items() for nid in ids}
    nodes = {(a.group, pool_of[a.node_id], a.node_id) for a in previous if a.node_id in pool_of}
    return dict(collections.Counter((g, pool) for g, pool, _ in nodes))


def assign(workflow: str, plan: Plan, pool_nodes: Mapping[str, Sequence[str]],
           serving: Mapping[tuple[str, str], VariantServing], previous: Sequence[Assignment] = (),
           taken: Collection[str] = (), resident: Optional[Mapping[str, Collection[str]]] = None
           ) -> tuple[Assignment, ...]:
    """Turn ``plan`` into replicas on concrete nodes. ``pool_nodes[pool]`` lists the pool's node
    ids; ``previous`` (this workflow's live assignments) makes placement sticky; ``taken`` are
    node ids not to use; ``resident[node_id]`` the base models a node already holds."""
    resident = resident or {}
    held = {a.node_id: a.group for a in previous}
    used = set(taken)
    rates = {(r.task, r.variant, r.pool): (float(r.rate), int(r.replicas)) for r in plan.replicas}
    out: list[Assignment] = []
    for h in sorted(plan.hosts, key=lambda h: (h.group, h.pool)):
        candidates = [n for n in pool_nodes.get(h.pool, ()) if n not in used]
        base = serving[h.members[0]].base_model if h.members else ""
        candidates.sort(key=lambda n: (held.get(n) != h.group, base not in resident.get(n, ()), n))
        for node in candidates[: int(h.count)]:
            used.add(node)
            for task, variant in h.members:
                s = serving[(task, variant)]
                rate, hosts = rates.get((task, variant, h.pool), (0.0, max(1, int(h.count))))
                out.append(Assignment(
                    replica_id=f"{workflow}.{task}.{variant}.{node[:8]}", workflow=workflow, task=task,
                    variant=variant, node_id=node, base_model=s.base_model, adapter=s.adapter,
                    adapter_source=s.adapter_source, kind=s.kind, weight=rate / max(hosts, 1), group=h.group))
    return tuple(out)
