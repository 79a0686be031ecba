"""Node tokens revoked before they expire, against real processes: revoking the join token a node
joined with, or untrusting a node, makes every agent (and the model store) refuse that node's
tokens within 5 s. The revocations travel with the key set the coordinator pushes to agents.

Before this, a node token was good on every agent until it expired (10 minutes), whatever the
operator did: the assertions that wait for UNAUTHENTICATED below time out there."""

from __future__ import annotations

import math
import time

import grpc
import pytest

from atoll.coordinator.identity import NODE_SCOPES
from atoll.coordinator.join_tokens import revoked_nodes
from atoll.coordinator.records import NodeRecord
from atoll.core import credentials as cred
from atoll.core.apikeys import key_set, with_revoked_nodes
from atoll.core.errors import Unauthenticated
from atoll.proto.v1 import control_pb2, control_pb2_grpc, worker_pb2, worker_pb2_grpc
from atoll.wire.dataplane import keys_from_pb, keys_to_pb
from tests.control.helpers import wait_for

from .conftest import rpc_code
from .hostile import HOLDER_B64, presented

REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# A node no workflow of the other tests can use: no variant profiles t4, and nothing runs in eu-west.
REV = dict(name="rev-1", tier="datacenter", region="eu-west", price_per_hour=9.0, labels={"hardware": "t4"})
WITHIN_S = 5.0


CALLEE: dict[str, str] = {}          # Worker address -> its node id (the audience of a proof)


def node_token(fleet, node_id: str, now: float) -> str:
    """A node token exactly as the coordinator issues it (its signing key, its claims), naming
    HOLDER as its holder's key."""
    signing = cred.private_from_pem(fleet.meta("signing_key").encode())
    return cred.sign_token(signing, sub=cred.node_subject(node_id), aud=cred.ANY_NODE, scopes=NODE_SCOPES,
                           now=now, ttl=600, holder=HOLDER_B64)


def generate_code(addr: str, token: str) -> grpc.StatusCode:
    """What an agent's Worker answers a node-token holder (anything but a refusal: admitted)."""
    with grpc.insecure_channel(addr) as ch:
        stub = worker_pb2_grpc.WorkerStub(ch)
        return rpc_code(lambda: list(stub.Generate(worker_pb2.GenerateRequest(prompt="hi", model="no-such-model"),
                                                   timeout=10, metadata=presented(token, CALLEE[addr]))))


def fetch_code(fleet, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(fleet.addr) as ch:
        stub = control_pb2_grpc.ModelStoreStub(ch)
        return rpc_code(lambda: list(stub.Fetch(control_pb2.FetchRequest(name="sha256:" + "0" * 64), timeout=10,
                                                metadata=presented(token, cred.COORDINATOR_AUDIENCE))))


def workers(fleet, *names: str) -> list[str]:
    out = []
    for n in names:
        node = fleet.node(n)
        CALLEE[node.status["worker_address"]] = node.id
        out.append(node.status["worker_address"])
    return out


def refused_everywhere_within(fleet, addrs: list[str], token: str, t0: float) -> float:
    """Seconds from ``t0`` until every agent in ``addrs`` and the model store refuse ``token``."""
    seen: list = []

    def refused() -> bool:
        seen[:] = [generate_code(a, token) for a in addrs] + [fetch_code(fleet, token)]
        return all(code == grpc.StatusCode.UNAUTHENTICATED for code in seen)

    try:
        wait_for(refused, 30, interval=0.1, what="every agent and the model store to refuse the revoked token")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the agents, then the model store, answered {seen}") from None
    return time.monotonic() - t0


def admitted(fleet, name: str):
    """The node ``name`` once READY, the other agents' Worker addresses, and a token of the node
    that every one of them admits now."""
    fleet.wait_ready(name)
    rev = fleet.node(name)
    addrs = workers(fleet, "dc-1", "rent-1")
    tok = node_token(fleet, rev.id, time.time())
    for a in addrs:
        assert generate_code(a, tok) not in REFUSED, a
    return rev, addrs, tok


@pytest.mark.integration
def test_revoking_a_join_token_cuts_off_the_nodes_that_joined_with_it(fleet):
    with fleet.client("admin") as c:
        jt = c.create_join_token(["datacenter"], ["eu-west"])
    agent = fleet.agent(REV, token=jt["token"])
    try:
        rev, addrs, tok = admitted(fleet, "rev-1")
        assert fetch_code(fleet, tok) == grpc.StatusCode.NOT_FOUND      # admitted; no such blob
        t0 = time.monotonic()
        with fleet.client("admin") as c:
            c.revoke_join_token(jt["id"])
        took = refused_everywhere_within(fleet, addrs, tok, t0)
        print(f"\nrevoked join token: rev-1's node token refused everywhere after {took:.2f} s")
        assert took < WITHIN_S, took
        # the node itself is cut off: no session, and it cannot register again with its key
        wait_for(lambda: fleet.node("rev-1").state != "READY", 30, what="rev-1 to lose its session")
        wait_for(lambda: "which was revoked" in agent.log(), 30, what="rev-1's registration to be refused")
        fresh = node_token(fleet, rev.id, time.time())            # even a token issued after the revocation
        assert generate_code(addrs[0], fresh) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        agent.stop()


@pytest.mark.integration
def test_untrusting_a_node_revokes_the_tokens_issued_before_and_not_those_after(fleet):
    rent = fleet.node("rent-1")
    dc = workers(fleet, "dc-1")[0]
    with fleet.client("admin") as c:
        c.set_trust("rent-1", True)
        old = node_token(fleet, rent.id, time.time())
        assert generate_code(dc, old) not in REFUSED
        time.sleep(0.05)                                         # iat strictly before the untrust
        t0 = time.monotonic()
        c.set_trust("rent-1", False)
    took = refused_everywhere_within(fleet, [dc], old, t0)
    print(f"\nuntrusted: rent-1's earlier node token refused after {took:.2f} s")
    assert took < WITHIN_S, took
    new = node_token(fleet, rent.id, time.time())               # issued after the untrust: accepted
    assert generate_code(dc, new) not in REFUSED
    assert fleet.node("rent-1").state == "READY"                # still in the fleet, just not trusted


# ---------------------------------------------------------------------- the rules, pure
def test_a_node_token_issued_before_its_nodes_revocation_time_is_refused():
    key = cred.new_private_key()
    tok = cred.sign_token(key, sub=cred.node_subject("n1"), aud=cred.ANY_NODE, scopes=NODE_SCOPES, now=1000.0,
                          ttl=600)
    pub = key.public_key()
    assert cred.verify_token(pub, tok, now=1001.0, revoked={"n2": 2000.0}).node_id == "n1"
    assert cred.verify_token(pub, tok, now=1001.0, revoked={"n1": 999.0}).node_id == "n1"   # issued after
    for when in (1000.5, float("inf")):
        with pytest.raises(Unauthenticated, match="node token of node n1 was revoked"):
            cred.verify_token(pub, tok, now=1001.0, revoked={"n1": when})
    coord = cred.sign_token(key, sub=cred.COORDINATOR, aud="n1", scopes=cred.SCOPES, now=1000.0, ttl=300)
    assert cred.verify_token(pub, coord, now=1001.0, audience="n1", revoked={"n1": float("inf")}).is_coordinator


def test_which_nodes_are_revoked_and_for_how_long():
    joined = [NodeRecord(id="a", name="a", spec={}, scope={"token": "t1"}),
              NodeRecord(id="b", name="b", spec={}, scope={"token": "t2"}),
              NodeRecord(id="c", name="c", spec={}, scope={"token": "bootstrap"}, tokens_before=1000.0)]
    assert revoked_nodes(joined, {"t1"}, now=1100.0, keep=630.0) == {"a": math.inf, "c": 1000.0}
    assert revoked_nodes(joined, set(), now=1700.0, keep=630.0) == {}            # c's old tokens have expired
    ks = key_set([])
    both = with_revoked_nodes(ks, {"a": math.inf})
    assert both.digest != ks.digest and with_revoked_nodes(ks, {}) is ks
    assert keys_from_pb(keys_to_pb(both)).revoked_nodes == {"a": math.inf}


@pytest.mark.integration
def test_removing_a_node_cuts_it_off_even_when_it_joined_with_the_bootstrap_token(fleet):
    agent = fleet.agent(dict(REV, name="rev-2"))                 # the bootstrap join token: not revocable
    try:
        rev, addrs, tok = admitted(fleet, "rev-2")
        t0 = time.monotonic()
        with fleet.client("admin") as c:
            removed = c.remove_node("rev-2")
        assert removed.id == rev.id and not removed.trusted
        took = refused_everywhere_within(fleet, addrs, tok, t0)
        print(f"\nremoved: rev-2's node token refused everywhere after {took:.2f} s")
        assert took < WITHIN_S, took
        wait_for(lambda: "was removed by an operator" in agent.log(), 30, what="rev-2's registration to be refused")
        assert fleet.node("rev-2").state != "READY"
    finally:
        agent.stop()


@pytest.mark.integration
def test_a_removed_node_stays_cut_off_when_a_new_host_takes_its_name(fleet):
    """Audit finding 3: once the removed node was LOST, a new host (another node key) under its
    name dropped its record, and with it the revocation: its node token was accepted again, and
    the removed host re-registered with its key under its old node id."""
    spec = dict(REV, name="rev-3")
    agent = fleet.agent(spec, state="a-rev-3")
    newcomer = None
    try:
        rev, addrs, tok = admitted(fleet, "rev-3")
        with fleet.client("admin") as c:
            c.remove_node("rev-3")
        refused_everywhere_within(fleet, addrs, tok, time.monotonic())
        wait_for(lambda: "was removed by an operator" in agent.log(), 30, what="rev-3's registration to be refused")
        agent.stop()
        wait_for(lambda: fleet.node("rev-3").state == "LOST", 30, what="rev-3 LOST")
        newcomer = fleet.agent(spec, state="a-rev-3-new")           # a new host: a new node key, same name
        fleet.wait_ready("rev-3")
        assert fleet.node("rev-3").id != rev.id
        time.sleep(1.0)                                             # the key set that follows has reached the agents
        assert fetch_code(fleet, tok) == grpc.StatusCode.UNAUTHENTICATED
        assert [generate_code(a, tok) for a in addrs] == [grpc.StatusCode.UNAUTHENTICATED] * len(addrs)
        fresh = node_token(fleet, rev.id, time.time())
        assert fetch_code(fleet, fresh) == grpc.StatusCode.UNAUTHENTICATED
        # the removed host, with its key and its node id, under another name: still refused
        again = fleet.agent(dict(REV, name="rev-3b"), state="a-rev-3")
        wait_for(lambda: f"node {rev.id} was removed by an operator" in again.log(), 30,
                 what="the removed host's registration to be refused")
        assert fleet.node("rev-3b") is None
    finally:
        agent.stop()
        if newcomer is not None:
            newcomer.stop()
