"""Placement inside a pool: a re-plan keeps its nodes; then nodes that already hold the base
model (loaded, or complete in the agent's fetch cache) are taken before cold ones."""

from __future__ import annotations

from pathlib import Path

from atoll.agent.fetch import cached_names
from atoll.coordinator.fleet import resident_models
from atoll.coordinator.placement import assign, previous_hosts
from atoll.coordinator.records import Assignment
from atoll.coordinator.stages import VariantServing
from atoll.planner.plan import HostGroup, Plan, Replica
from atoll.wire.nodes import status_from_pb, status_to_pb

BASE = "sha256:" + "ab" * 32
SERVING = {("chat", "v"): VariantServing(base_model=BASE, adapter="", kind="llm")}


def plan(count: int) -> Plan:
    return Plan(planner="milp", status="optimal", variants={"chat": "v"},
                hosts=(HostGroup(group="g0", pool="p", count=count, members=(("chat", "v"),), cost_per_hour=0.0),),
                replicas=(Replica(task="chat", variant="v", pool="p", location="", replicas=count, rate=4.0,
                                  utilization=0.0, cost_per_hour=0.0),),
                routes=(), compute_cost_per_hour=0.0, transfer_cost_per_hour=0.0, accuracy=1.0,
                solve_seconds=0.0, gap=None)


def held(node_id: str, group: str) -> Assignment:
    """A live replica of the workflow on ``node_id`` (only its node and group matter here)."""
    return Assignment(replica_id=f"wf.chat.v.{node_id}", workflow="wf", task="chat", variant="v", node_id=node_id,
                      base_model=BASE, adapter="", adapter_source="", kind="llm", weight=1.0, group=group)


POOLS = {"p": ["n1", "n2", "n3", "n4"]}


def test_nodes_holding_the_base_model_are_chosen_first():
    cold = assign("wf", plan(2), POOLS, SERVING)
    assert [a.node_id for a in cold] == ["n1", "n2"]                    # by id when nothing differs
    resident = {"n3": resident_models({"cached_models": [BASE]}),
                "n4": resident_models({"loaded": [{"base_model": BASE, "adapters": [], "state": "ready"}]}),
                "n1": resident_models({"cached_models": ["sha256:" + "cd" * 32]})}   # another model
    warm = assign("wf", plan(2), POOLS, SERVING, resident=resident)
    assert sorted(a.node_id for a in warm) == ["n3", "n4"]


def test_a_replan_keeps_its_nodes_before_warm_ones():
    previous = [held("n1", "g0")]
    out = assign("wf", plan(2), POOLS, SERVING, previous=previous, resident={"n4": {BASE}})
    assert sorted(a.node_id for a in out) == ["n1", "n4"]


def test_agent_reports_complete_fetches_only(tmp_path: Path):
    cache = tmp_path / "blobs"
    assert cached_names(cache) == []                                  # no cache yet
    done = cache / ("ab" * 32)
    done.mkdir(parents=True)
    (done / ".complete").write_text(BASE + "\n")
    (cache / (("ef" * 32) + ".part")).write_bytes(b"half")            # a fetch under way
    (cache / ("cd" * 32)).mkdir()                                     # extracted, not marked complete
    assert cached_names(cache) == [BASE]
    (cache / (("ef" * 32) + ".part")).unlink()                        # the directory changed: listed again
    (cache / ("cd" * 32) / ".complete").write_text("x")
    (cache / ("ee" * 32)).mkdir()
    assert cached_names(cache) == [BASE, "sha256:" + "cd" * 32]
    d = status_from_pb(status_to_pb({"cached_models": cached_names(cache)}))
    assert d["cached_models"] == [BASE, "sha256:" + "cd" * 32]


def test_previous_hosts_counts_nodes_per_group_and_pool_on_todays_pools():
    pools = {"a": ["n1", "n2"], "b": ["n3"]}
    previous = [held("n1", "g0"), held("n1", "g0"),                                  # two replicas, one node
                held("n2", "g0"), held("n3", "g1"),
                held("gone", "g0")]                                                   # left the fleet
    assert previous_hosts(pools, previous) == {("g0", "a"): 2, ("g1", "b"): 1}
