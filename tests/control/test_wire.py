"""The wire layer: typed values survive the trip through their messages, and both sides of a
message agree (the coordinator packs what the SDK and the agent unpack)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from atoll.coordinator.convert import deployment_to_pb, planned_status
from atoll.coordinator.records import (Autoscale, Constraints, Deployment, FailureDomains, OnDemandFloor,
                                       WorkflowRecord)
from atoll.planner.plan import HostGroup, Plan, Replica, Route
from atoll.specs.assignment import AssignmentSet, ReplicaItem, generation_of
from atoll.wire import nodes
from atoll.wire.agent_service import instruction_from_pb, instruction_to_pb
from atoll.wire.client_service import deployment_dict, plan_dict, plan_from_pb, plan_to_pb


def plan(gap=0.0125) -> Plan:
    return Plan(planner="milp", status="optimal", variants={"b": "v2", "a": "v1"},
                hosts=(HostGroup("m@fp16", "pool-1", 2, (("b", "v2"), ("a", "v1")), 3.5),),
                replicas=(Replica("b", "v2", "pool-1", "eu/datacenter", 2, 3.25, 0.8, 2.0, ("a:v1",)),
                          Replica("a", "v1", "pool-1", "eu/datacenter", 2, 1.5, 0.4, 1.5, ("b:v2",))),
                routes=(Route("src", "b", "eu/edge", "eu/datacenter", 3.25, 2.0, 1.0, 0.01),),
                compute_cost_per_hour=3.5, transfer_cost_per_hour=0.01, accuracy=0.875, solve_seconds=0.25, gap=gap,
                moved_replicas=1, notes=("a note",))


@pytest.mark.parametrize("gap", [0.0125, None])
def test_a_plan_crosses_the_wire_typed(gap):
    p = plan(gap)
    back = plan_from_pb(plan_to_pb(p))
    assert back == p
    assert list(back.to_dict()["tasks"]) == ["b", "a"]              # the plan's task order is kept


FACTS = [Deployment(), Deployment(constraints=Constraints(True, False, ("edge", "renter"), ("ap",))),
         Deployment(constraints=Constraints(False, False, (), ()), on_demand_floor=OnDemandFloor(0.5, 1.25),
                    autoscale=Autoscale(2.0, 8.0, "utilisation 1.4 above 1 for 5 s", 1700000000.0)),
         Deployment(constraints=Constraints(False, False, (), ()), failure_domains=FailureDomains("region", 2),
                    autoscale=Autoscale(0.0, 0.0, "no request for 60 s", 1700000000.0, scale_before_zero=1.5))]


@pytest.mark.parametrize("facts", FACTS)
def test_deployment_facts_read_the_same_on_both_sides_of_the_wire(facts):
    assert deployment_dict(deployment_to_pb(facts)) == facts.to_dict()
    assert Deployment.from_dict(facts.to_dict()) == facts


def test_the_sdk_shows_a_plan_as_its_dict_and_the_deployment_facts():
    rec = WorkflowRecord(name="wf", spec_yaml="", state="PLANNED", plan=plan(), deployment=FACTS[3])
    shown = plan_dict(planned_status(rec))
    assert shown == {**plan().to_dict(), **FACTS[3].to_dict()}
    assert shown["failure_domains"] == {"label": "region", "domains": 2}
    assert shown["autoscale"]["scale_before_zero"] == 1.5


def test_node_messages_round_trip():
    spec = {"name": "n1", "tier": "edge", "region": "eu", "zone": "eu-1a", "price_per_hour": 0.5,
            "preemptible": True, "labels": {"hardware": "a10"}}
    cap = {"gpus": [{"index": 0, "name": "NVIDIA A10", "memory_total_bytes": 24 << 30, "memory_free_bytes": 1 << 30,
                     "compute_capability": "8.6"}], "cpu_cores": 8, "memory_bytes": 1 << 36, "disk_bytes": 1 << 40,
           "simulated": True, "agent_version": "0.1"}
    status = {"loaded": [{"base_model": "/m", "adapters": ["a"], "state": "ready", "message": ""}], "queue_depth": 3,
              "running_requests": 2, "measured_throughput": {"a": 1.5}, "kv_cache_usage": 0.25,
              "worker_address": "h:1", "replica_states": {"r": "ready"}, "replica_messages": {"r": ""},
              "replica_load_seconds": {"r/load": 0.5}, "cached_models": ["sha256:" + "ab" * 32], "ttft_seconds": 0.125,
              "entry_address": "h:2", "replica_queue_depth": {"r": 4}}
    assert nodes.spec_from_pb(nodes.spec_to_pb(spec)) == spec
    assert nodes.capacity_from_pb(nodes.capacity_to_pb(cap)) == cap
    assert nodes.status_from_pb(nodes.status_to_pb(status)) == status
    info = nodes.node_from_pb(nodes.node_to_pb(node_id="id-1", spec=spec, capacity=cap, status=status,
                                               state="SUSPECT", last_heartbeat=5.0, age=1.25, registered=1.0,
                                               heartbeats=9))
    assert (info["state"], info["gpus"], info["labels"], info["status"]) == ("SUSPECT", cap["gpus"],
                                                                             spec["labels"], status)


@pytest.mark.parametrize("ins", [{"drain": True}, {"reregister": True},
                                 {"assignments": AssignmentSet(42, (ReplicaItem("r", "wf", "t", "v", "/m", "a", "/a"),
                                                                    ReplicaItem("s", "wf", "t", "w", "/m", "", "",
                                                                                "embedding")))}])
def test_instructions_round_trip(ins):
    assert instruction_from_pb(instruction_to_pb(ins)) == ins


def test_the_generation_digest_is_the_one_agents_already_report():
    """Coordinators before this one digested the same rows the same way, so an upgraded
    coordinator does not resend sets agents have applied."""
    items = [ReplicaItem("wf.b", "wf", "t", "v", "/m", "", ""), ReplicaItem("wf.a", "wf", "t", "v", "/m", "x", "/x")]
    rows = sorted((asdict(i) for i in items), key=lambda r: r["replica_id"])
    old = int.from_bytes(hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).digest()[:8], "big") >> 1
    assert generation_of(items) == old
