"""Reconcile as pure decisions (deploy.py): each node's desired set and generation from the
assignments, and which sets to send given what agents report and what was sent when."""

from __future__ import annotations

from atoll.coordinator.deploy import RESEND_AFTER, Sent, desired_by_node, to_send
from atoll.coordinator.records import Assignment
from atoll.specs.assignment import ReplicaItem, assignment_set, generation_of


def asg(rid: str, node: str, workflow: str = "wf") -> Assignment:
    return Assignment(replica_id=rid, workflow=workflow, task="chat", variant="v", node_id=node, base_model="/m",
                      adapter="", adapter_source="", kind="llm", weight=1.0, group="g")


def test_each_node_gets_every_workflows_replicas_in_one_set():
    desired = desired_by_node([asg("b.2", "n1", "b"), asg("a.1", "n1", "a"), asg("a.2", "n2", "a")], {}, set())
    assert [i.replica_id for i in desired["n1"].items] == ["a.1", "b.2"]
    assert desired["n1"].generation == generation_of(desired["n1"].items)
    assert sorted(desired) == ["n1", "n2"]


def test_connected_nodes_holding_something_are_told_to_drop_it():
    desired = desired_by_node([], {"n1": 77, "n2": 0, "n3": 55}, {"n1", "n2"})
    assert desired == {"n1": assignment_set([])}            # n2 holds nothing, n3 is not connected


def test_sends_only_what_differs_and_resends_after_a_while_or_to_a_new_session():
    want = {"n1": assignment_set([asg("a.1", "n1").item()])}
    gen = want["n1"].generation
    s1, s2 = object(), object()
    assert to_send(want, {}, {}, {}, now=0.0) == []                                  # not connected
    assert to_send(want, {"n1": gen}, {"n1": s1}, {}, now=0.0) == []                 # applied already
    assert to_send(want, {"n1": 3}, {"n1": s1}, {}, now=0.0) == [("n1", want["n1"])]
    sent = {"n1": Sent(gen, 10.0, s1)}
    assert to_send(want, {"n1": 3}, {"n1": s1}, sent, now=10.0 + RESEND_AFTER - 0.1) == []
    assert to_send(want, {"n1": 3}, {"n1": s1}, sent, now=10.0 + RESEND_AFTER) == [("n1", want["n1"])]
    assert to_send(want, {"n1": 3}, {"n1": s2}, sent, now=10.5) == [("n1", want["n1"])]   # reconnected


def test_an_empty_set_goes_only_to_nodes_that_hold_something():
    empty = {"n1": assignment_set([])}
    assert to_send(empty, {"n1": -1}, {"n1": object()}, {}, now=0.0) == []
    assert to_send(empty, {"n1": 0}, {"n1": object()}, {}, now=0.0) == []
    assert to_send(empty, {"n1": 9}, {"n1": object()}, {}, now=0.0) == [("n1", empty["n1"])]


def test_the_generation_is_a_content_digest_of_the_set():
    a = ReplicaItem("wf.a", "wf", "t", "v", "/m", "", "")
    b = ReplicaItem("wf.b", "wf", "t", "w", "/m", "x", "/x")
    assert generation_of([a, b]) == generation_of([b, a]) != generation_of([a])
    assert 0 < generation_of([a]) < 2 ** 63
