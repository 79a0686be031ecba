"""Registry logic without gRPC: tokens, validation, names, drain, restart grace, node identity."""

import math
import re

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
    for reserved in ("coordinator", "Coordinator"):      # a host named so received proofs meant for the store
        with pytest.raises(InvalidArgument, match="node_id"):
            join(reg, TOKEN, reserved, spec())
    assert not re.fullmatch(r"[A-Za-z0-9-]{8,64}", cred.COORDINATOR_AUDIENCE)   # no node id can equal it


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


# ---------------------------------------------------------------------- cut off for good
def lose(reg, clock, node_id):
    """Let ``node_id``'s session go and its lease run out: it is LOST."""
    sess = reg.sessions.get(node_id)
    if sess is not None:
        reg.close_session(sess)
    clock.t += 10.0
    reg.sweep()
    assert reg.nodes[node_id].state == "LOST"


def test_a_removed_node_stays_cut_off_when_a_new_key_takes_its_name_and_after_a_restart(tmp_path):
    """Audit finding 3: a new node taking a removed (LOST) node's name used to drop the removed
    node's record, with it its revocation (its node tokens were accepted again) and its key's
    binding (the removed host re-registered under its old id)."""
    reg, clock, store = make(tmp_path)
    x, _ = join(reg, TOKEN, "", spec())
    reg.remove("gpu-1")
    lose(reg, clock, x)
    assert reg.revoked_nodes()[x] == math.inf
    newcomer = cred.new_private_key()
    y, _ = join(reg, TOKEN, "", spec(), key=newcomer)       # a new key may still take the name over
    assert y != x and reg.resolve("gpu-1").id == y and x not in reg.nodes
    assert [r.name for r in reg.list()] == ["gpu-1"]         # the removed node is off the listings

    def still_cut_off(r):
        assert r.revoked_nodes().get(x) == math.inf and y not in r.revoked_nodes()
        with pytest.raises(Unauthenticated, match=f"node {x} was removed by an operator") as ei:
            join(r, TOKEN, x, spec(name="gpu-2"))            # its old id, its old key
        assert ei.value.reason == "revoked"
        with pytest.raises(Unauthenticated, match=f"belongs to node {x} .gpu-1., which was removed by an operator"):
            join(r, TOKEN, "", spec(name="gpu-3"))           # its old key under a new name, the join token
        with pytest.raises(Unauthenticated, match="bound to another node key"):
            join(r, TOKEN, x, spec(name="gpu-4"), key=cred.new_private_key())   # its id stays bound
        assert set(r.nodes) == {y}

    still_cut_off(reg)
    assert [n.id for n in store.list_retired_nodes()] == [x]
    # a coordinator restart (a new registry over the same store) keeps all of it
    still_cut_off(Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0, mono=clock, wall=clock))


def test_a_removed_nodes_key_cannot_join_again_under_another_name(tmp_path):
    reg, clock, _ = make(tmp_path)
    x, _ = join(reg, TOKEN, "", spec())
    reg.remove(x)
    with pytest.raises(Unauthenticated, match="which was removed by an operator; a cut-off node key cannot"):
        join(reg, TOKEN, "", spec(name="gpu-2"))             # no node_id, another name: still its key
    other, _ = join(reg, TOKEN, "", spec(name="gpu-2"), key=cred.new_private_key())
    assert other != x


def test_a_node_whose_name_was_taken_over_is_cut_off_when_its_join_token_is_revoked_later(tmp_path):
    reg, clock, store = make(tmp_path)
    info, jt = reg.tokens.create(tiers=["renter"])
    x, _ = join(reg, jt, "", spec())
    lose(reg, clock, x)
    y, _ = join(reg, TOKEN, "", spec(), key=cred.new_private_key())
    assert x not in reg.nodes and x not in reg.revoked_nodes()
    reg.tokens.revoke(info["id"])
    assert reg.revoked_nodes()[x] == math.inf and y not in reg.revoked_nodes()
    with pytest.raises(Unauthenticated, match=f"joined with join token {info['id']}, which was revoked"):
        join(reg, TOKEN, x, spec(name="gpu-2"))


def test_a_lost_node_whose_name_was_taken_comes_back_under_its_id_with_its_key(tmp_path):
    """Not cut off: a retired node is still itself (same id, same key, no join token needed)."""
    reg, clock, store = make(tmp_path)
    x, _ = join(reg, TOKEN, "", spec())
    lose(reg, clock, x)
    y, _ = join(reg, TOKEN, "", spec(), key=cred.new_private_key())
    back, _ = join(reg, "", x, spec(name="gpu-2"))
    assert back == x and reg.resolve("gpu-2").id == x and reg.resolve("gpu-1").id == y
    assert store.list_retired_nodes() == [] and {r.name for r in store.list_nodes()} == {"gpu-1", "gpu-2"}


# ---------------------------------------------------------------------- bounded status
@pytest.mark.parametrize("status,field", [
    ({"entry_address": "x" * (8 << 20)}, "entry_address is 8388608 bytes, at most 255"),
    ({"worker_address": "h" * 251 + ":7070"}, "worker_address is 256 bytes, at most 255"),
    ({"entry_address": "no-port"}, "entry_address: 'no-port' is not HOST:PORT"),
    ({"worker_address": "10.0.0.1:70000"}, "worker_address: port 70000 out of range"),
    ({"replica_messages": {"r": "m" * 5000}}, "replica_messages['r'] is 5000 bytes"),
    ({"replica_states": {f"r{i}": "ready" for i in range(5000)}}, "replica_states has 5000 entries, at most 4096"),
    ({"cached_models": ["sha256:" + "0" * 1000]}, "cached_models entry is 1007 bytes"),
    ({"loaded": [{"base_model": "b" * 5000, "adapters": [], "state": "", "message": ""}]}, "loaded[0].base_model"),
    ({"replica_messages": {f"r{i}": "m" * 1000 for i in range(300)}}, "the node status is"),
])
def test_an_oversize_status_is_refused_at_registration_and_on_heartbeats(tmp_path, status, field):
    """Audit finding 4: nothing bounded a node's status; two hosts reporting an 8 MiB
    entry_address broke ListNodes and ListEntries for every tenant."""
    reg, _, store = make(tmp_path)
    with pytest.raises(InvalidArgument, match=re.escape(field)):
        join(reg, TOKEN, "", spec(), status=status)
    assert reg.nodes == {} and store.list_nodes() == []
    ok = {"worker_address": "10.0.0.1:7000", "entry_address": "[::1]:7001", "replica_states": {"r": "ready"}}
    nid, tok = join(reg, TOKEN, "", spec(), status=ok)
    sess = reg.open_session(nid, tok)
    with pytest.raises(InvalidArgument, match=re.escape(field)):
        reg.heartbeat(sess, 1, None, status, False)
    assert reg.nodes[nid].status == ok and reg.nodes[nid].heartbeats == 0
    reg.heartbeat(sess, 2, None, {**ok, "entry_address": "entry.example:7001"}, False)   # a fitting one is kept
    assert reg.nodes[nid].status["entry_address"] == "entry.example:7001"


def test_capacity_strings_are_bounded(tmp_path):
    reg, _, _ = make(tmp_path)
    with pytest.raises(InvalidArgument, match="agent_version"):
        join(reg, TOKEN, "", spec(), {"agent_version": "v" * 1000})
    with pytest.raises(InvalidArgument, match="compute_capability"):
        join(reg, TOKEN, "", spec(), {"gpus": [{"name": "L4", "compute_capability": "9" * 100}]})


# ---------------------------------------------------------------------- price changes, debounced
def test_price_changes_apply_at_most_once_per_window_and_the_latest_wins(tmp_path):
    """Audit finding 5: every heartbeat's new price was written to the store and re-planned
    every workflow (1,441 of them in 8 s)."""
    from atoll.coordinator import registry

    PRICE_HOLD_S = 5.0                                  # registry.PRICE_HOLD_S, checked at the end
    reg, clock, store = make(tmp_path)
    nid, _ = join(reg, TOKEN, "", spec(price_per_hour=0.4))
    told = []
    reg.add_price_listener(lambda node, old, new: told.append((old, new)))
    writes = []
    upsert = store.upsert_node
    store.upsert_node = lambda rec: (writes.append(rec.spec["price_per_hour"]), upsert(rec))
    reg.set_price(nid, 0.5, True)                       # the first change applies at once
    assert told == [(0.4, 0.5)] and store.get_node(nid).spec["price_per_hour"] == 0.5
    for i in range(1000):                               # a flapping host: 0.10, 0.11, 0.10, ...
        clock.t += 0.001
        reg.set_price(nid, 0.1 + (i % 2) * 0.01, True)
    assert told == [(0.4, 0.5)] and writes == [0.5]     # held back: no write, no re-plan
    reg.sweep()
    assert told == [(0.4, 0.5)]                         # the window has not ended yet
    clock.t += PRICE_HOLD_S
    reg.sweep()                                         # the window ended: the latest value is applied
    assert told == [(0.4, 0.5), (0.5, 0.11)] and writes == [0.5, 0.11]
    assert reg.nodes[nid].spec["price_per_hour"] == store.get_node(nid).spec["price_per_hour"] == 0.11
    clock.t += 1.0
    reg.set_price(nid, 0.4, True)                       # within the next window: held back again
    reg.set_price(nid, 0.11, True)                      # ...and back to what applies: nothing to do
    clock.t += PRICE_HOLD_S
    reg.sweep()
    assert len(told) == 2 and writes == [0.5, 0.11]
    reg.set_price(nid, 0.3, False)                      # after a quiet window: applied at once
    assert told[-1] == (0.11, 0.3) and store.get_node(nid).spec["preemptible"] is False
    assert registry.PRICE_HOLD_S == PRICE_HOLD_S


def test_new_nodes_per_join_token_are_rate_limited_and_the_fleet_is_bounded(tmp_path):
    """One process registered 17,000 nodes in 70 s with the bootstrap token, and a user's
    ListNodes then took 1.5 s: each join token admits ``join_burst`` new nodes at once and
    ``join_rate`` a second after, and the fleet holds at most ``max_nodes`` records. A node bound
    to its key re-registers without waiting, and a new host may still take a LOST node's name."""
    from atoll.core.errors import ResourceExhausted

    clock = Clock()
    reg = Registry(SqliteStore(tmp_path / "s.db"), join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0,
                   mono=clock, wall=clock, join_burst=3, join_rate=0.5, max_nodes=5)
    keys = [cred.new_private_key() for _ in range(6)]
    ids = [join(reg, TOKEN, "", spec(name=f"n{i}"), key=keys[i])[0] for i in range(3)]
    with pytest.raises(ResourceExhausted, match=r"join token 'bootstrap' admitted 3 new nodes lately; the next in 2\.0 s"):
        join(reg, TOKEN, "", spec(name="n3"), key=keys[3])
    assert len(reg.nodes) == 3
    assert join(reg, "", ids[0], spec(name="n0"), key=keys[0])[0] == ids[0]    # bound: no token, no wait
    _, scoped = reg.tokens.create(tiers=["renter"])
    ids.append(join(reg, scoped, "", spec(name="n3"), key=keys[3])[0])       # another token, its own bucket
    clock.t += 2.0
    ids.append(join(reg, TOKEN, "", spec(name="n4"), key=keys[4])[0])        # the bucket refilled one
    assert len(reg.nodes) == 5
    clock.t += 4.0                                                           # room in the bucket, not in the fleet
    with pytest.raises(ResourceExhausted, match="the fleet holds 5 live nodes"):
        join(reg, TOKEN, "", spec(name="n5"), key=keys[5])
    lose(reg, clock, ids[1])
    fresh, _ = join(reg, TOKEN, "", spec(name="n5"), key=keys[5])              # a LOST node leaves room
    assert fresh not in ids and len(reg.nodes) == 6
