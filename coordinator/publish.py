"""Publish the data plane's state to agents: each node's routing state and the API key set, sent
down its heartbeat stream level-triggered by digest, and the entries' load reports read back.

Every reconcile pass computes what each connected node should hold (:func:`desired_routing`):
the routes of every workflow it may serve as an entry or a hop, that is every route except a
``trusted_only`` workflow's on a renter host or on a host the operator does not trust
(:func:`atoll.specs.routing.may_hold`), and the key set. :func:`to_send` picks the nodes whose
reported digest differs, unless the same value went to the same session less than
``RESEND_AFTER`` seconds ago; sending twice is harmless. A
routing table is rebuilt only when a plan, a workflow's state or a replica's state changed
(``WorkflowManager.routing_table``), so a re-plan, a scale event or a replica state change
reaches every agent within one pass (0.25 s) plus a heartbeat's round trip.

:class:`Publisher` is the thin part: it keeps what agents reported (digests from their
heartbeats) and what was sent, pushes the instructions, and hands entries' load reports to
:class:`~atoll.coordinator.entry_load.EntryLoads`.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

from atoll.coordinator.deploy import RESEND_AFTER, Sent
from atoll.coordinator.entry_load import EntryLoads
from atoll.core.apikeys import KeySet
from atoll.core.logs import kv
from atoll.specs.routing import RoutingState, RoutingTable, may_hold, routing_state
from atoll.wire.agent_service import routing_instruction
from atoll.wire.dataplane import EntryInfo, EntryLoad

log = logging.getLogger("atoll.coordinator")
# A heartbeat message carries one routing state; gRPC refuses messages past 16 MiB (and the
# submit-time bounds of coordinator/workflows.py keep the routes' text under 8 MiB).
MAX_ROUTING_BYTES = 12 << 20


def desired_routing(table: RoutingTable, hosts: Mapping[str, tuple[str, bool]]) -> dict[str, RoutingState]:
    """node id -> the routing state it should hold (``hosts``: node id -> (tier, trusted by the
    operator)). Nodes of one tier and trust share one state value."""
    by_kind: dict[tuple[str, bool], RoutingState] = {}
    out = {}
    for node_id, (tier, trusted) in hosts.items():
        st = by_kind.get((tier, trusted))
        if st is None:
            st = by_kind[tier, trusted] = routing_state(r for r in table.routes.values()
                                                        if may_hold(r, tier, trusted))
        out[node_id] = st
    return out


def to_send(desired: Mapping[str, tuple[int, object]], reported: Mapping[str, int], sessions: Mapping[str, object],
            sent: Mapping[str, Sent], now: float, resend_after: float = RESEND_AFTER) -> list[tuple[str, object]]:
    """(node id, value) pairs to send now: ``desired`` maps node id -> (digest, value)."""
    out = []
    for node_id, (digest, value) in desired.items():
        sess = sessions.get(node_id)
        if sess is None or reported.get(node_id) == digest:
            continue
        last = sent.get(node_id)
        if last is not None and last.generation == digest and last.session is sess and now - last.when < resend_after:
            continue
        out.append((node_id, value))
    return out


def entries(nodes: Sequence, region: str = "", carry: Callable[[str], bool] | None = None) -> list[EntryInfo]:
    """The READY nodes that serve an entry, this ``region``'s first (then by name); ``carry(tier)``
    False leaves a node out (a trusted_only workflow's entries are never renters). An address is
    the host's own claim: where several nodes report the same one, only one is listed, the one
    the operator trusts, else not a renter, else the longest registered, so a host that copies
    another's address cannot take its place (its caller tokens would be refused there)."""
    claims: dict[str, object] = {}
    for n in nodes:
        addr = n.status.get("entry_address")
        if n.state != "READY" or not addr or not (carry is None or carry(n.tier)):
            continue
        rank = (not n.trusted, n.tier == "renter", n.registered_at, n.id)
        held = claims.get(addr)
        if held is None or rank < held[0]:
            claims[addr] = (rank, n)
    out = [EntryInfo(n.name, n.region, n.tier, addr, n.id) for addr, (_, n) in claims.items()]
    return sorted(out, key=lambda e: (bool(region) and e.region != region, e.node_name))


class Publisher:
    """Pushes routing states and key sets to connected agents; reads their digests and loads."""

    def __init__(self, registry, loads: EntryLoads):
        self.registry = registry
        self.loads = loads
        self.routing_reported: dict[str, int] = {}
        self.keys_reported: dict[str, int] = {}
        self._sent_routing: dict[str, Sent] = {}
        self._sent_keys: dict[str, Sent] = {}
        self._desired: tuple[object, dict[str, RoutingState]] | None = None
        self._hosts: dict[str, tuple[str, bool]] = {}
        self._sizes: dict[int, int] = {}      # routing state digest -> its size as sent

    def heartbeat(self, node_id: str, routing_digest: int, keys_digest: int, loads: Sequence[EntryLoad]) -> None:
        self.routing_reported[node_id] = routing_digest
        self.keys_reported[node_id] = keys_digest
        if loads:
            self.loads.report(node_id, loads)

    def session_closed(self, node_id: str) -> None:
        self.routing_reported.pop(node_id, None)
        self.keys_reported.pop(node_id, None)
        self.loads.node_gone(node_id)

    def current(self, node_id: str, keys: KeySet, table: RoutingTable) -> bool:
        """Does the node hold the routing state ``table`` decides for it, and ``keys``? (The
        table as it is now, not as the last pass saw it: a workflow that turned READY since then
        is not on the node yet.)"""
        want = self._desired_for(table).get(node_id)
        return (want is None or self.routing_reported.get(node_id) == want.digest) and \
            self.keys_reported.get(node_id) == keys.digest

    def _deliverable(self, st: RoutingState) -> bool:
        """Is ``st`` small enough for one heartbeat message? One that is not would end the stream
        of every node it is sent to (gRPC's 16 MiB cap), so it is not sent, and said once."""
        size = self._sizes.get(st.digest)
        if size is None:
            if len(self._sizes) > 64:
                self._sizes.clear()
            size = self._sizes[st.digest] = routing_instruction(st).routing.ByteSize()
            if size > MAX_ROUTING_BYTES:
                log.error("routing state too large to send; nodes keep the last one they hold",
                          extra=kv(bytes=size, limit=MAX_ROUTING_BYTES, routes=len(st.routes)))
        return size <= MAX_ROUTING_BYTES

    def _desired_for(self, table: RoutingTable) -> dict[str, RoutingState]:
        """Every connected node's routing state under ``table``, recomputed only when the table
        or the connected nodes' tier and trust changed."""
        reg = self.registry
        hosts = {nid: (reg.nodes[nid].tier, reg.nodes[nid].trusted) for nid in reg.sessions if nid in reg.nodes}
        if self._desired is None or self._desired[0] is not table or self._hosts != hosts:
            self._desired, self._hosts = (table, desired_routing(table, hosts)), hosts
        return self._desired[1]

    def publish(self, table: RoutingTable, keys: KeySet, now: float) -> int:
        """One pass: send every connected node what it lacks. Returns the instructions sent."""
        reg = self.registry
        routing = {nid: (st.digest, st) for nid, st in self._desired_for(table).items()}
        hosts = self._hosts
        n = 0
        for kind, want, reported, sent in (
                ("routing", routing, self.routing_reported, self._sent_routing),
                ("keys", {nid: (keys.digest, keys) for nid in hosts}, self.keys_reported, self._sent_keys)):
            for node_id, value in to_send(want, reported, reg.sessions, sent, now):
                if kind == "routing" and not self._deliverable(value):
                    continue                     # the node keeps the last state it holds
                sess = reg.sessions[node_id]
                sess.push({kind: value})
                sent[node_id] = Sent(value.digest, now, sess)
                n += 1
        return n
