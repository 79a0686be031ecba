"""What the coordinator publishes to agents (routing states, key sets: level-triggered by
digest) and how entries' load reports reach the autoscaler."""

from __future__ import annotations

from types import SimpleNamespace

from atoll.coordinator.deploy import Sent
from atoll.coordinator.entry_load import EntryLoads, spread
from atoll.coordinator.publish import Publisher, desired_routing, entries, to_send
from atoll.core.apikeys import KeyEntry, key_set
from atoll.specs.routing import RoutingTable, may_carry, may_hold, routing_digest
from atoll.wire.dataplane import EntryLoad

from .helpers import endpoint, route


def table(*routes) -> RoutingTable:
    return RoutingTable({r.workflow: r for r in routes})


def test_trusted_only_routes_go_only_to_trusted_nodes_and_never_to_renters():
    secret = route("secret", trusted_only=True, endpoints=[endpoint("a")])
    public = route("public", endpoints=[endpoint("b")])
    want = desired_routing(table(secret, public), {"dc": ("datacenter", True), "edge": ("edge", True),
                                                   "dc-u": ("datacenter", False), "rent": ("renter", False),
                                                   "rent-t": ("renter", True)})
    assert set(want["dc"].routes) == set(want["edge"].routes) == {"secret", "public"}
    assert set(want["rent"].routes) == set(want["dc-u"].routes) == set(want["rent-t"].routes) == {"public"}
    assert want["dc"] is want["edge"] or want["dc"].digest == want["edge"].digest
    assert want["dc"].digest != want["rent"].digest and want["dc-u"] is want["dc-u"]
    assert not may_carry(secret, "renter") and may_carry(secret, "edge") and may_carry(public, "renter")
    assert may_hold(secret, "edge", True) and not may_hold(secret, "edge", False)
    assert not may_hold(secret, "renter", True) and may_hold(public, "renter", False)


def test_digests_change_with_content_only():
    a = route("a", endpoints=[endpoint("1"), endpoint("2")])
    b = route("b", endpoints=[endpoint("3")])
    assert routing_digest([a, b]) == routing_digest([b, a])
    assert routing_digest([a]) != routing_digest([route("a", endpoints=[endpoint("1")])])
    assert routing_digest([a]) != routing_digest([route("a", endpoints=[endpoint("1"), endpoint("2")], state="IDLE")])
    k1 = key_set([KeyEntry("k1", "t", "user", "h")])
    assert k1.digest == key_set([KeyEntry("k1", "t", "user", "h")]).digest and k1.enforced
    revoked = key_set([KeyEntry("k1", "t", "user", "h", revoked=True)])
    assert revoked.digest != k1.digest and not revoked.enforced


def test_to_send_is_level_triggered():
    s1, s2 = object(), object()
    want = {"n1": (5, "v5"), "n2": (5, "v5"), "n3": (5, "v5")}
    sends = to_send(want, {"n1": 5, "n2": 4}, {"n1": s1, "n2": s2}, {}, now=0.0)
    assert sends == [("n2", "v5")]                   # n1 holds it; n3 has no session
    sent = {"n2": Sent(5, 0.0, s2)}
    assert to_send(want, {"n2": 4}, {"n2": s2}, sent, now=1.0) == []          # just sent: wait
    assert to_send(want, {"n2": 4}, {"n2": s2}, sent, now=6.0) == [("n2", "v5")]   # still differs: again
    assert to_send(want, {"n2": 4}, {"n2": object()}, sent, now=1.0) == [("n2", "v5")]  # a new session: at once


def test_publisher_pushes_what_each_node_lacks():
    pushed: dict[str, list] = {"dc": [], "rent": []}
    sessions = {n: SimpleNamespace(push=pushed[n].append) for n in pushed}
    reg = SimpleNamespace(sessions=sessions, nodes={"dc": SimpleNamespace(tier="datacenter", trusted=True),
                                                   "rent": SimpleNamespace(tier="renter", trusted=False)})
    pub = Publisher(reg, EntryLoads(SimpleNamespace(records={})))
    t = table(route("secret", trusted_only=True, endpoints=[endpoint("a")]), route("public"))
    keys = key_set([KeyEntry("k", "t", "user", "h")])
    assert pub.publish(t, keys, now=0.0) == 4
    assert set(pushed["rent"][0]["routing"].routes) == {"public"} and pushed["rent"][1]["keys"] is keys
    assert not pub.current("dc", keys, t)
    for n in pushed:      # the agents report what they hold
        pub.heartbeat(n, pushed[n][0]["routing"].digest, keys.digest, [])
    assert pub.current("dc", keys, t) and pub.publish(t, keys, now=10.0) == 0
    # a workflow turned READY since the last pass: no node holds it yet, whatever that pass said
    newer = table(route("secret", trusted_only=True, endpoints=[endpoint("a")]), route("public"), route("new"))
    assert not pub.current("dc", keys, newer) and not pub.current("rent", keys, newer)
    assert pub.current("dc", keys, t)
    reg.nodes["dc"].trusted = False           # the operator untrusts dc: the secret route leaves it
    assert pub.publish(t, keys, now=11.0) == 1 and set(pushed["dc"][-1]["routing"].routes) == {"public"}
    pub.session_closed("rent")
    assert "rent" not in pub.routing_reported


class FakeWorkflows:
    def __init__(self):
        self.records = {"auto": SimpleNamespace(state="READY"), "plain": SimpleNamespace(state="READY"),
                        "zero": SimpleNamespace(state="IDLE")}
        self.events: list = []

    def spec(self, name):
        return SimpleNamespace(autoscaling=None if name == "plain" else object())

    def request_started(self, name):
        self.events.append(("start", name))

    def request_finished(self, name, completion_tokens=None):
        self.events.append(("end", name, completion_tokens))

    def wake(self, name):
        self.events.append(("wake", name))


def test_entry_loads_replay_through_the_autoscalers_functions():
    wm = FakeWorkflows()
    loads = EntryLoads(wm)
    loads.report("n1", [EntryLoad("auto", started=3, finished=2, failed=1, completion_tokens={"gen": 7},
                                  in_flight=1),
                        EntryLoad("plain", started=5, finished=5, in_flight=0),
                        EntryLoad("zero", started=1, in_flight=1)])
    assert wm.events.count(("start", "auto")) == 3
    assert ("end", "auto", {"gen": 7}) in wm.events and ("end", "auto", None) in wm.events
    assert not any(e[1] == "plain" for e in wm.events)          # no autoscaling: nothing counted
    assert ("wake", "zero") in wm.events                       # a request at any entry wakes it
    wm.events.clear()
    loads.node_gone("n1")                                      # in flight there: ended now
    assert wm.events == [("end", "auto", None), ("end", "zero", None)]
    assert spread(10, 3) == [4, 3, 3] and sum(spread(7, 7)) == 7


def _node(name, region, tier="datacenter", state="READY", addr=None, trusted=False, registered_at=0.0):
    addr = f"{name}.host:7443" if addr is None else addr
    return SimpleNamespace(name=name, id=name, region=region, tier=tier, state=state, trusted=trusted,
                           registered_at=registered_at, status={"entry_address": addr} if addr else {})


def test_entries_are_ready_nodes_with_an_entry_region_first():
    ns = [_node("b", "us"), _node("a", "eu"), _node("c", "eu", tier="renter"), _node("d", "eu", state="LOST"),
          _node("e", "eu", addr="")]
    assert [e.node_name for e in entries(ns, "eu")] == ["a", "c", "b"]
    assert [e.node_name for e in entries(ns, "eu", lambda tier: tier != "renter")] == ["a", "b"]


def test_an_address_two_nodes_report_is_listed_once_for_the_one_that_holds_it():
    """A host that copies another's entry address is not listed in its place: the trusted node,
    else the one that is not a renter, else the longest registered keeps it."""
    dc = _node("dc-1", "eu", addr="10.0.0.5:7443", trusted=True, registered_at=200.0)
    copy = _node("zz-evil", "eu", tier="renter", addr="10.0.0.5:7443", registered_at=100.0)
    assert [(e.node_name, e.address) for e in entries([copy, dc])] == [("dc-1", "10.0.0.5:7443")]
    edge = _node("edge-1", "eu", tier="edge", addr="10.0.0.6:7443", registered_at=300.0)
    rent = _node("rent-1", "eu", tier="renter", addr="10.0.0.6:7443", registered_at=100.0)
    first = _node("rent-2", "eu", tier="renter", addr="10.0.0.7:7443", registered_at=100.0)
    later = _node("rent-3", "eu", tier="renter", addr="10.0.0.7:7443", registered_at=150.0)
    assert [e.node_name for e in entries([rent, edge, later, first])] == ["edge-1", "rent-2"]


def test_entry_loads_reach_the_real_autoscaler(tmp_path):
    """Through the workflow manager's own functions: arrivals, in flight, and nothing left over."""
    import dataclasses

    from atoll.coordinator.records import WorkflowRecord
    from tests.control.test_routing_table import setup

    wm, reg, sess, status = setup(tmp_path)
    rec = wm.records["wf"]
    wm.records["wf"] = dataclasses.replace(rec, spec_yaml=rec.spec_yaml + "autoscaling: {metric: in_flight}\n")
    wm._specs.clear()
    assert isinstance(wm.records["wf"], WorkflowRecord) and wm.spec("wf").autoscaling is not None
    loads = EntryLoads(wm)
    loads.report("n1", [EntryLoad("wf", started=5, finished=3, failed=1, completion_tokens={"chat": 12}, in_flight=2)])
    loads.report("n2", [EntryLoad("wf", started=1, in_flight=1)])
    a = wm.autoscaler
    w = a._of("wf")                                   # the autoscaler's own per-workflow signals
    assert w.in_flight == 3 and len(w.arrivals) == 6 and w.work == {"chat": 6.0}      # 12 tokens over 2 answered requests
    loads.node_gone("n1")
    loads.node_gone("n2")
    assert w.in_flight == 0


def test_the_forwarder_closes_channels_to_addresses_no_entry_reports_any_more():
    """A host that reports a new entry address at every heartbeat leaves no channel behind."""
    import asyncio

    import atoll.coordinator.forward as fwd
    from atoll.wire.dataplane import EntryInfo

    async def go():
        listed = [EntryInfo("n", "eu", "datacenter", "127.0.0.1:1", "id-n")]
        f = fwd.EntryForwarder(lambda region, workflow: listed)
        for i in range(fwd.MAX_CHANNELS + 50):
            listed[0] = EntryInfo("n", "eu", "datacenter", f"127.0.0.1:{1000 + i}", "id-n")
            f._stub(listed[0].address)
        await asyncio.sleep(0.05)
        n = len(f._channels)
        await f.close()
        return n

    assert asyncio.run(go()) <= fwd.MAX_CHANNELS
