"""Placement as a pure step: a spec on an immutable fleet snapshot -> a typed plan, typed
assignments and the deployment facts (on-demand floor, failure domains, constraints), with the
real planner on small fleets and no coordinator around it."""

from __future__ import annotations

import pytest

from atoll.coordinator.fleet import FleetNode, FleetSnapshot
from atoll.coordinator.placement import place, with_measured
from atoll.coordinator.records import FailureDomains
from atoll.coordinator.stages import serving_of
from atoll.core.errors import PlanInfeasible
from atoll.planner.build import problem_from_specs
from atoll.specs.cluster import ClusterSpec
from atoll.specs.common import parse_obj
from atoll.specs.workflow import WorkflowSpec


def spec(**over) -> WorkflowSpec:
    data = {"name": "wf", "sources": [{"name": "users", "rate": 4.0, "region": "eu", "tier": "edge"}],
            "tasks": [{"name": "chat", "variants": [{"name": "v", "accuracy": 0.9, "memory_gb": 1,
                                                    "throughput": {"a10": 2.0}, "model": "/models/base"}]}],
            "edges": [{"from": "users", "to": "chat"}]}
    for key, val in over.items():
        data[key] = val
    return parse_obj(WorkflowSpec, data)


def node(i: int, *, tier: str = "datacenter", region: str = "eu", price: float = 1.0, preemptible: bool = False,
         trusted: bool = False, **labels: str) -> FleetNode:
    return FleetNode(id=f"node{i:04d}-id", name=f"n{i}", region=region, tier=tier, price_per_hour=price,
                     preemptible=preemptible, hardware="a10", gpu_memory_gb=24.0, labels=labels, trusted=trusted)


def run(s: WorkflowSpec, nodes, **kw):
    return place("wf", s, serving_of(s), FleetSnapshot(tuple(nodes)), **kw)


def test_one_plan_and_its_replicas_on_concrete_nodes():
    p = run(spec(), [node(i) for i in range(4)])
    assert sum(r.rate for r in p.plan.replicas) == pytest.approx(4.0)
    assert len({a.node_id for a in p.assignments}) == p.plan.nodes_used() == 2      # 2 req/s per replica
    assert {a.base_model for a in p.assignments} == {"/models/base"}
    assert sum(a.weight for a in p.assignments) == pytest.approx(4.0)
    c = p.deployment.constraints
    assert (c.trusted_only, c.on_demand_only, p.deployment.on_demand_floor, p.deployment.failure_domains) == \
        (False, False, None, None)


def test_scale_plans_the_declared_rate_times_the_factor():
    p = run(spec(), [node(i) for i in range(6)], scale=2.5)
    assert sum(r.rate for r in p.plan.replicas) == pytest.approx(10.0)
    assert p.plan.nodes_used() == 5


def test_an_on_demand_floor_is_planned_first_on_non_preemptible_nodes_and_merged():
    nodes = [node(0, price=3.0), node(1, price=3.0)] + [node(i, tier="renter", price=0.5, preemptible=True)
                                                        for i in range(2, 6)]
    p = run(spec(autoscaling={"on_demand_floor": 0.5}), nodes)
    floor = p.deployment.on_demand_floor
    assert floor.share == 0.5                    # 2 req/s on one 3 $/h host (and a little data transfer)
    assert floor.cost_per_hour == pytest.approx(3.0, abs=1e-3)
    on_demand = {n.id for n in nodes if not n.preemptible}
    assert len([a for a in p.assignments if a.node_id in on_demand]) == 1
    assert sum(r.rate for r in p.plan.replicas) == pytest.approx(4.0)             # both shares, merged
    assert p.plan.compute_cost_per_hour == pytest.approx(3.0 + 0.5)
    assert p.plan.nodes_used() == len({a.node_id for a in p.assignments}) == 2


def test_failure_domains_split_the_rate_over_that_many_domains():
    nodes = [node(0, region="eu", price=1.0), node(1, region="eu", price=1.0),
             node(2, region="us", price=2.0), node(3, region="us", price=2.0), node(4, region="ap", price=9.0)]
    s = spec(placement={"min_failure_domains": 2, "failure_domain": "region"})
    p = run(s, nodes)
    assert p.deployment.failure_domains == FailureDomains("region", 2)
    regions = {n.id: n.region for n in nodes}
    assert sorted({regions[a.node_id] for a in p.assignments}) == ["eu", "us"]      # the two cheapest
    assert sum(r.rate for r in p.plan.replicas) == pytest.approx(4.0)
    with pytest.raises(PlanInfeasible, match="failure domains: 4 asked, 3 available"):
        run(spec(placement={"min_failure_domains": 4, "failure_domain": "region"}), nodes)


def test_trusted_only_uses_only_nodes_the_operator_trusts_whatever_their_tier():
    # cheap renters, a cheap datacenter host nobody trusted (it only *says* it is a datacenter),
    # and the operator-trusted nodes: one expensive datacenter host and one trusted renter
    nodes = [node(0, tier="renter", price=0.1), node(1, tier="renter", price=0.1), node(2, price=0.2),
             node(3, price=5.0, trusted=True), node(4, tier="renter", price=4.0, trusted=True)]
    p = run(spec(placement={"trusted_only": True}), nodes)
    assert {a.node_id for a in p.assignments} == {nodes[3].id, nodes[4].id}
    assert p.deployment.constraints.trusted_only and "renter" not in p.deployment.constraints.forbid_tiers
    free = run(spec(), nodes)                            # without the rule the cheap ones win
    assert {a.node_id for a in free.assignments} <= {n.id for n in nodes[:3]}
    with pytest.raises(PlanInfeasible):
        run(spec(placement={"trusted_only": True}), nodes[:3])


def test_no_free_node_is_infeasible_capacity():
    with pytest.raises(PlanInfeasible, match="no READY nodes are free"):
        run(spec(), [])


def test_measured_throughput_replaces_the_declared_figure_on_the_fleets_hardware():
    s = spec()
    cluster = parse_obj(ClusterSpec, {"name": "c", "pools": [{"name": "p", "hardware": "a10", "tier": "datacenter",
                                                              "region": "eu", "price_per_hour": 1.0, "count": 2}]})
    problem = problem_from_specs(s, cluster)
    measured = with_measured(problem, {("chat", "v", "a10"): 8.0, ("chat", "v", "h100"): 50.0})
    assert dict(measured.tasks[0].variants[0].rps) == {"a10": 8.0}               # h100 is not in the fleet
    assert dict(problem.tasks[0].variants[0].rps) == {"a10": 2.0}                # the input is untouched
    p = run(s, [node(i) for i in range(4)])
    faster = place("wf", s, serving_of(s), FleetSnapshot(tuple(node(i) for i in range(4)),
                                                         measured={("chat", "v", "a10"): 8.0}))
    assert (p.plan.nodes_used(), faster.plan.nodes_used()) == (2, 1)
