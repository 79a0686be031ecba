"""Registry logic without gRPC: tokens, validation, names, drain, restart grace."""

import pytest

from atoll.coordinator.registry import Registry, hash_token
from atoll.coordinator.store import SqliteStore
from atoll.core.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

TOKEN = "join-token-123"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(tmp_path, clock=None, interval=1.0):
    clock = clock or Clock()
    store = SqliteStore(tmp_path / "s.db")
    return Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=interval,
                    mono=clock, wall=clock), clock, store


def spec(**o):
    s = {"name": "gpu-1", "tier": "renter", "region": "us-west", "zone": "", "price_per_hour": 0.4,
         "preemptible": True, "labels": {}}
    s.update(o)
    return s


def test_wrong_or_missing_token_is_unauthenticated(tmp_path):
    reg, _, _ = make(tmp_path)
    for tok in ("", "nope"):
        with pytest.raises(Unauthenticated):
            reg.register(tok, "", spec(), {}, {})
    assert reg.nodes == {}


@pytest.mark.parametrize("bad,field", [({"tier": "cloud"}, "tier"), ({"price_per_hour": -1}, "price_per_hour"),
                                       ({"name": "bad name!"}, "name"), ({"region": ""}, "region")])
def test_invalid_spec_is_invalid_argument_naming_the_field(tmp_path, bad, field):
    reg, _, _ = make(tmp_path)
    with pytest.raises(InvalidArgument) as ei:
        reg.register(TOKEN, "", spec(**bad), {}, {})
    assert field in str(ei.value)


def test_negative_capacity_and_bad_node_id(tmp_path):
    reg, _, _ = make(tmp_path)
    with pytest.raises(InvalidArgument, match="memory_bytes"):
        reg.register(TOKEN, "", spec(), {"memory_bytes": -5}, {})
    with pytest.raises(InvalidArgument, match="node_id"):
        reg.register(TOKEN, "x'; DROP TABLE nodes", spec(), {}, {})


def test_stable_id_and_name_conflict(tmp_path):
    reg, _, _ = make(tmp_path)
    nid, tok = reg.register(TOKEN, "", spec(), {}, {})
    again, _ = reg.register(TOKEN, nid, spec(price_per_hour=0.5), {}, {})
    assert again == nid and reg.nodes[nid].spec["price_per_hour"] == 0.5
    with pytest.raises(AlreadyExists):       # another host claims a live node's name
        reg.register(TOKEN, "", spec(), {}, {})
    reg.close_session(reg.sessions[nid])
    took, _ = reg.register(TOKEN, "", spec(), {}, {})   # no live session: same host, state dir lost
    assert took == nid


def test_heartbeats_keep_ready_and_silence_loses(tmp_path):
    reg, clock, _ = make(tmp_path)
    nid, tok = reg.register(TOKEN, "", spec(), {}, {})
    sess = reg.open_session(nid, tok)
    for _ in range(10):
        clock.t += 1.0
        reg.heartbeat(sess, 1, None, {"queue_depth": 1}, False)
        assert reg.sweep() == []
    clock.t += 3.0
    assert [t.new for t in reg.sweep()] == ["LOST"]
    with pytest.raises(Unauthenticated):
        reg.open_session(nid, "forged")


def test_drain_is_persisted_and_sent_to_the_agent(tmp_path):
    reg, clock, store = make(tmp_path)
    nid, tok = reg.register(TOKEN, "", spec(), {}, {})
    sess = reg.open_session(nid, tok)
    reg.drain("gpu-1")
    assert reg.nodes[nid].state == "DRAINING"
    assert sess.outbox.get_nowait() == {"drain": True}
    assert store.get_node(nid).drain_requested
    # an operator's drain survives the agent re-registering
    reg.register(TOKEN, nid, spec(), {}, {})
    assert reg.nodes[nid].state == "DRAINING"
    with pytest.raises(NotFound):
        reg.drain("nobody")


def test_restart_restores_nodes_with_grace_then_loses_silent_ones(tmp_path):
    reg, clock, store = make(tmp_path)
    a, _ = reg.register(TOKEN, "", spec(name="a"), {}, {})
    b, _ = reg.register(TOKEN, "", spec(name="b"), {}, {})
    reg.flush()
    # "kill -9": a new registry over the same store
    reg2 = Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0, mono=clock, wall=clock)
    assert {r.name: r.state for r in reg2.list()} == {"a": "READY", "b": "READY"}
    _, tok = reg2.register(TOKEN, a, spec(name="a"), {}, {})  # a reconnects, b never does
    sess = reg2.open_session(a, tok)
    for _ in range(8):
        clock.t += 1.0
        reg2.heartbeat(sess, 1, None, None, False)
        reg2.sweep()
    assert reg2.nodes[a].state == "READY"
    assert reg2.nodes[b].state == "LOST"
    assert store.get_node(b).state == "LOST"


def test_list_filters(tmp_path):
    reg, _, _ = make(tmp_path)
    reg.register(TOKEN, "", spec(name="e1", tier="edge", region="eu"), {}, {})
    reg.register(TOKEN, "", spec(name="d1", tier="datacenter", region="us"), {}, {})
    assert [r.name for r in reg.list(tier="edge")] == ["e1"]
    assert [r.name for r in reg.list(region="us")] == ["d1"]
    assert [r.name for r in reg.list(state="READY")] == ["d1", "e1"]
    with pytest.raises(InvalidArgument):
        reg.list(state="ALIVE")
