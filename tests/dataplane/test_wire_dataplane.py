"""The data plane's messages round-trip: routing states, key sets (down the heartbeat stream),
entries' load (up it), entries as the SDK lists them."""

from __future__ import annotations

from atoll.core.apikeys import KeyEntry, key_set
from atoll.specs.routing import Stage, routing_state
from atoll.wire import agent_service as aw
from atoll.wire import dataplane as dp

from .helpers import endpoint, route


def test_routing_state_and_keys_round_trip_as_instructions():
    r1 = route("wf", tenant="team-a", trusted_only=True, state="IDLE", wakeable=True,
               stages=(Stage("a", "llm", "Q: {input}", ("users",), 8, 0.5, ("\n",)),
                       Stage("b", "embedding", "", ("a",)),
                       Stage("c", "llm", "{input}", ("a",), None, chat=True)),     # a chat stage, no token cap
               endpoints=[endpoint("1", "a", adapter="ad", weight=0.25), endpoint("2", "b", region="us")],
               flows={("users", "a"): [("eu/edge", "eu/datacenter", 2.0)], ("a", "b"): [("eu/datacenter",
                                                                                      "us/datacenter", 2.0)]})
    st = routing_state([r1, route("other")])
    back = aw.instruction_from_pb(aw.instruction_to_pb({"routing": st}))["routing"]
    assert back.digest == st.digest and back.routes == st.routes
    ks = key_set([KeyEntry("k1", "t", "user", "ab" * 32), KeyEntry("k2", "ops", "admin", "cd" * 32, True)])
    kb = aw.instruction_from_pb(aw.instruction_to_pb({"keys": ks}))["keys"]
    assert kb.digest == ks.digest and kb.enforced and dict(kb.keys) == dict(ks.keys)


def test_heartbeat_carries_digests_and_entry_load():
    load = [dp.EntryLoad("wf", 3, 2, 1, {"gen": 9}, 1)]
    req = aw.heartbeat_request(node_id="n", session_token="s", seq=1, draining=False, generation=0, price=None,
                               capacity=None, status=None, sent_unix=0.0, routing_digest=7, keys_digest=9,
                               entry_load=load)
    assert aw.heartbeat_extras(req) == (7, 9, load)


def test_entries_round_trip():
    e = dp.EntryInfo("n1", "eu", "edge", "h:1", "id1", True, "coordinator away", 12.5, 3)
    assert dp.entry_from_pb(dp.entry_to_pb(e)) == e
