"""Registry logic without gRPC: tokens, validation, names, drain, restart grace, node identity."""

import pytest

from atoll.coordinator.join_tokens import hash_token
from atoll.coordinator.registry import Registry
from atoll.coordinator.store import SqliteStore
from atoll.core import credentials as cred
from atoll.core.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from atoll.core.rpc import RECONNECT_BACKOFF_CAP_S

TOKEN = "join-token-123"
HOST = cred.new_private_key()          # the node key of "this host" in most tests


def join(reg, token, node_id, spec, capacity=None, status=None, key=HOST, now=None):
    """Register as a host holding ``key`` (a fresh proof each time, as an agent does)."""
    proof = cred.make_proof(key, node_id, reg._wall() if now is None else now)
    return reg.register(token, node_id, spec, capacity or {}, status or {}, proof)


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
            join(reg, tok, "", spec())
    assert reg.nodes == {}


@pytest.mark.parametrize("bad,field", [({"tier": "cloud"}, "tier"), ({"price_per_hour": -1}, "price_per_hour"),
                                       ({"name": "bad name!"}, "name"), ({"region": ""}, "region")])
def test_invalid_spec_is_invalid_argument_naming_the_field(tmp_path, bad, field):
    reg, _, _ = make(tmp_path)
    with pytest.raises(InvalidArgument) as ei:
        join(reg, TOKEN, "", spec(**bad))
    assert field in str(ei.value)


def test_negative_capacity_and_bad_node_id(tmp_path):
    reg, _, _ = make(tmp_path)
    with pytest.raises(InvalidArgument, match="memory_bytes"):
        join(reg, TOKEN, "", spec(), {"memory_bytes": -5})
    with pytest.raises(InvalidArgument, match="node_id"):
        join(reg, TOKEN, "x'; DROP TABLE nodes", spec())


def test_stable_id_and_name_conflict(tmp_path):
    reg, clock, _ = make(tmp_path)
    nid, tok = join(reg, TOKEN, "", spec())
    again, _ = join(reg, TOKEN, nid, spec(price_per_hour=0.5))
    assert again == nid and reg.nodes[nid].spec["price_per_hour"] == 0.5
    other = cred.new_private_key()
    with pytest.raises(AlreadyExists):       # another host claims a live node's name
        join(reg, TOKEN, "", spec(), key=other)
    assert reg.sessions_closed == 0
    reg.close_session(reg.sessions[nid])
    assert reg.sessions_closed == 1          # counted: the autoscaler runs a pass at once
    took, _ = join(reg, TOKEN, "", spec())   # no live session, same key: same host, node_id file lost
    assert took == nid
    stale = reg.sessions[nid]
    reg.close_session(stale)
    reg.close_session(stale)                 # a session closed twice counts once
    assert reg.sessions_closed == 2
    with pytest.raises(AlreadyExists, match="another node key"):   # another key: not while it may come back
        join(reg, TOKEN, "", spec(), key=other)
    clock.t += 10.0
    reg.sweep()
    assert reg.nodes[nid].state == "LOST"
    fresh, _ = join(reg, TOKEN, "", spec(), key=other)     # a LOST node's name may go to a new node...
    assert fresh != nid and not reg.nodes[fresh].trusted   # ...under a new id, inheriting nothing


def test_heartbeats_keep_ready_and_silence_loses(tmp_path):
    reg, clock, _ = make(tmp_path)
    nid, tok = join(reg, TOKEN, "", spec())
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
    nid, tok = join(reg, TOKEN, "", spec())
    sess = reg.open_session(nid, tok)
    reg.drain("gpu-1")
    assert reg.nodes[nid].state == "DRAINING"
    assert sess.outbox.get_nowait() == {"drain": True}
    assert store.get_node(nid).drain_requested
    # an operator's drain survives the agent re-registering
    join(reg, TOKEN, nid, spec())
    assert reg.nodes[nid].state == "DRAINING"
    with pytest.raises(NotFound):
        reg.drain("nobody")


def test_restart_restores_nodes_with_grace_then_loses_silent_ones(tmp_path):
    reg, clock, store = make(tmp_path)
    a, _ = join(reg, TOKEN, "", spec(name="a"))
    b, _ = join(reg, TOKEN, "", spec(name="b"))
    reg.flush()
    # "kill -9": a new registry over the same store
    t0 = clock.t
    reg2 = Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0, mono=clock, wall=clock)
    assert {r.name: r.state for r in reg2.list()} == {"a": "READY", "b": "READY"}
    _, tok = join(reg2, TOKEN, a, spec(name="a"))  # a reconnects, b never does
    sess = reg2.open_session(a, tok)
    # b may be between two reconnect attempts: it is not LOST while a lease plus the agents'
    # longest back-off has not passed since the restart
    quiet = reg2.liveness.lost_after + RECONNECT_BACKOFF_CAP_S
    while clock.t + 1.0 <= t0 + quiet:
        clock.t += 1.0
        reg2.heartbeat(sess, 1, None, None, False)
        reg2.sweep()
        assert reg2.nodes[b].state != "LOST", clock.t - t0
    for _ in range(4):
        clock.t += 1.0
        reg2.heartbeat(sess, 1, None, None, False)
        reg2.sweep()
    assert reg2.nodes[a].state == "READY"
    assert reg2.nodes[b].state == "LOST"
    assert store.get_node(b).state == "LOST"


def test_list_filters(tmp_path):
    reg, _, _ = make(tmp_path)
    join(reg, TOKEN, "", spec(name="e1", tier="edge", region="eu"))
    join(reg, TOKEN, "", spec(name="d1", tier="datacenter", region="us"))
    assert [r.name for r in reg.list(tier="edge")] == ["e1"]
    assert [r.name for r in reg.list(region="us")] == ["d1"]
    assert [r.name for r in reg.list(state="READY")] == ["d1", "e1"]
    with pytest.raises(InvalidArgument):
        reg.list(state="ALIVE")


def test_a_node_id_is_bound_to_the_first_key_that_registered_it(tmp_path):
    reg, _, store = make(tmp_path)
    nid, _ = join(reg, TOKEN, "", spec())
    assert store.get_node(nid).public_key                  # bound, durably
    rogue = cred.new_private_key()
    with pytest.raises(Unauthenticated, match="bound to another node key") as ei:
        join(reg, TOKEN, nid, spec(), key=rogue)           # the copied node_id, with the join token
    assert ei.value.reason == "key_mismatch"
    assert reg.nodes[nid].public_key == store.get_node(nid).public_key
    again, _ = join(reg, "", nid, spec())                   # the real host needs no join token any more
    assert again == nid


def test_proofs_must_verify_be_fresh_and_not_replayed(tmp_path):
    reg, clock, _ = make(tmp_path)
    with pytest.raises(Unauthenticated, match="no node key"):
        reg.register(TOKEN, "", spec(), {}, {}, None)
    stale = cred.make_proof(HOST, "", clock() - 3600)
    with pytest.raises(Unauthenticated, match="timestamp"):
        reg.register(TOKEN, "", spec(), {}, {}, stale)
    good = cred.make_proof(HOST, "", clock())
    forged = cred.Proof(cred.public_bytes(cred.new_private_key()), good.unix, good.nonce, good.signature)
    with pytest.raises(Unauthenticated, match="does not verify"):
        reg.register(TOKEN, "", spec(), {}, {}, forged)
    reg.register(TOKEN, "", spec(), {}, {}, good)
    with pytest.raises(Unauthenticated, match="replayed"):
        reg.register(TOKEN, "", spec(name="gpu-2"), {}, {}, good)


def test_scoped_tokens_decide_tier_region_and_trust(tmp_path):
    reg, clock, _ = make(tmp_path)
    _, renter_tok = reg.tokens.create(tiers=["renter"], regions=["us-west"], uses=1)
    with pytest.raises(PermissionDenied, match="allows tier renter in region us-west; node.yaml claims tier "
                                               "datacenter"):
        join(reg, renter_tok, "", spec(tier="datacenter"))
    nid, _ = join(reg, renter_tok, "", spec())
    assert not reg.nodes[nid].trusted
    with pytest.raises(Unauthenticated, match="used up"):
        join(reg, renter_tok, "", spec(name="gpu-2"), key=cred.new_private_key())
    # the bound node re-registers with its key; its recorded scope still holds it to renter
    with pytest.raises(PermissionDenied):
        join(reg, "", nid, spec(tier="datacenter"))
    _, dc_tok = reg.tokens.create(tiers=["datacenter"], trusted=True, ttl=60)
    dc, _ = join(reg, dc_tok, "", spec(name="dc-1", tier="datacenter"), key=cred.new_private_key())
    assert reg.nodes[dc].trusted and reg.nodes[dc].scope["tiers"] == ["datacenter"]
    boot, _ = join(reg, TOKEN, "", spec(name="dc-2", tier="datacenter"), key=cred.new_private_key())
    assert not reg.nodes[boot].trusted                      # the bootstrap token never trusts
    assert reg.set_trusted("dc-2", True).trusted and reg.store.get_node(boot).trusted
    clock.t += 120
    _, late = reg.tokens.create(ttl=1)
    clock.t += 5
    with pytest.raises(Unauthenticated, match="expired"):
        join(reg, late, "", spec(name="gpu-9"), key=cred.new_private_key())
    info = reg.tokens.list()[-1]
    reg.tokens.revoke(info["id"])
    with pytest.raises(NotFound):
        reg.tokens.revoke("nope")
