"""The node registry: who is in the fleet, what each node offers, and whether it is alive.

Plain logic, no gRPC: the servicers unpack messages into dicts, call these methods and pack the
results. Everything runs on the coordinator's event loop thread.

Identity: every registration proves possession of the agent's Ed25519 node key
(:func:`atoll.core.credentials.check_proof`: signature, freshness, no replay). The first
registration of a node id binds that key to the id, with the tier/region scope and the trust
its join token grants (``join_tokens.py``); a later registration for that id with another key
is refused, and with the bound key needs no join token but stays within the recorded scope.
A node removed by the operator, or whose join token was revoked, is cut off for good: its id's
tokens stay revoked and its key is refused, under any name and with any join token. When a new
node takes a LOST node's name over, the old record is *retired* (``Registry.retired``, the
store's ``retired_nodes``), not forgotten: its id stays bound to its key, and its removal or
revocation holds.
Refusals are counted by reason (``atoll_identity_refusals_total``) and carry the reason on the
error (``exc.reason``) so the servicer logs it with the peer. Trust is the operator's:
:meth:`Registry.set_trusted`.

Durability: a registration and a drain are committed to the store before they are
acknowledged. Heartbeats only touch memory; :meth:`Registry.flush` writes the heartbeat times
and changed statuses of touched nodes in one transaction every few seconds, and every liveness
transition is written when it happens.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import re
import secrets
import time
import uuid
from itertools import chain
from dataclasses import dataclass, field
from typing import Callable

from pydantic import ValidationError

from atoll.coordinator.identity import NODE_TOKEN_TTL
from atoll.coordinator.join_tokens import Grant, JoinTokens, check_scope, cut_off, revoked_nodes
from atoll.coordinator.liveness import DRAINING, LOST, READY, STATES, Liveness, Transition
from atoll.coordinator.records import NodeRecord
from atoll.coordinator.store import Store
from atoll.core import credentials as cred
from atoll.core.errors import (AlreadyExists, AtollError, InvalidArgument, NotFound, PermissionDenied,
                               ResourceExhausted, Unauthenticated)
from atoll.core.rpc import RECONNECT_BACKOFF_CAP_S
from atoll.specs.common import validation_to_spec_error
from atoll.specs.config import check_address
from atoll.specs.node import NodeConfig

_NODE_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")
RESERVED_IDS = {"coordinator"}     # names the fleet's own parties use; never a node's id
MAX_GPUS = 256
JOIN_BURST = 100          # new nodes one join token admits at once ...
JOIN_RATE = 2.0           # ... and a second after that (per token: the bootstrap one is "bootstrap")
MAX_NODES = 20_000        # live nodes (not LOST)
# A host re-prices itself at most this often: a price change within this many seconds of the
# last one applied for that node waits, the latest value winning, and is applied when the
# window ends (by the liveness sweep, or the node's next heartbeat). Each applied change writes
# the node's row and asks for a re-plan.
PRICE_HOLD_S = 5.0

# What a node's status may hold (NodeStatus, see ``atoll.wire.nodes``); a registration or a
# heartbeat with more is refused (INVALID_ARGUMENT), so no host can bloat ListNodes,
# ListEntries or the store.
MAX_ADDRESS_BYTES = 255           # worker_address, entry_address: HOST:PORT
MAX_STATUS_ENTRIES = 4096         # entries of each map or list
MAX_STATUS_KEY_BYTES = 256        # a map key (replica id, hardware name), a cached model's name
MAX_STATUS_TEXT_BYTES = 4096      # a string value: a model name or path (PATH_MAX), a state, a message
MAX_STATUS_BYTES = 256 << 10      # the whole status, as JSON


def _refusal(exc: AtollError, reason: str) -> AtollError:
    exc.reason = reason          # the servicer logs it with the peer
    return exc


@dataclass
class Session:
    """One agent's live heartbeat stream. ``outbox`` carries instructions down the stream."""

    node_id: str
    token: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_seq: int = 0
    closed: bool = False
    draining: bool = False
    credential_expires: float = 0.0     # when the node token last sent on this stream expires

    def push(self, instruction: dict) -> None:
        if not self.closed:
            self.outbox.put_nowait(instruction)


class Registry:
    def __init__(self, store: Store, *, join_token_hash: str, heartbeat_interval: float,
                 metrics=None, mono: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, join_burst: int = JOIN_BURST,
                 join_rate: float = JOIN_RATE, max_nodes: int = MAX_NODES):
        self.store = store
        self.tokens = JoinTokens(store, join_token_hash, clock=wall)
        self._nonces = cred.NonceCache()
        self.interval = heartbeat_interval
        self.liveness = Liveness(heartbeat_interval)
        self.metrics = metrics
        self._mono, self._wall = mono, wall
        self.nodes: dict[str, NodeRecord] = {}
        # Nodes whose name another node took over (see the module doc): not in the fleet, but
        # their id stays bound to their key and their removal or revocation holds.
        self.retired: dict[str, NodeRecord] = {}
        self._by_name: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}
        self.sessions_closed = 0      # heartbeat streams ended so far (the autoscaler runs a pass at once on one)
        self._dirty: dict[str, bool] = {}      # node id -> status changed since last flush
        self._listeners: list[Callable[[Transition], None]] = []
        self.applied_generation: dict[str, int] = {}   # node id -> assignments generation it applied
        # Bumps whenever what routes depend on changes: a node registered, a state transition,
        # a new Worker address or replica states (the coordinator rebuilds its routing table).
        self.serving_changes = 0
        self._price_listeners: list[Callable[[str, float, float], None]] = []
        self._price_applied: dict[str, float] = {}                    # node id -> when (mono) its price last changed
        self._price_pending: dict[str, tuple[float, bool]] = {}       # node id -> the latest price held back
        self.join_burst, self.join_rate, self.max_nodes = join_burst, join_rate, max_nodes
        self._joins: dict[str, tuple[float, float]] = {}   # join token id -> (admissions left, when)
        self._restore()

    # -- start-up -------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Load nodes from the store. Nodes that were alive get a grace period to reconnect: the
        agents' longest reconnect back-off plus two intervals (their Register and first heartbeat
        on a busy host), on top of the lease, before they can be marked LOST. A shorter one loses
        agents that are merely between two attempts, and re-plans their workflows for nothing."""
        grace = RECONNECT_BACKOFF_CAP_S + 2 * max(1.0, self.interval)
        now = self._mono()
        for rec in self.store.list_nodes():
            self.nodes[rec.id] = rec
            self._by_name[rec.name] = rec.id
            last = now + grace if rec.state != LOST else now
            self.liveness.track(rec.id, rec.state, last, draining=rec.drain_requested or rec.state == DRAINING)
        for rec in self.store.list_retired_nodes():
            if rec.id not in self.nodes:
                self.retired[rec.id] = rec

    def add_listener(self, fn: Callable[[Transition], None]) -> None:
        self._listeners.append(fn)

    # -- agents -----------------------------------------------------------------------------------
    def register(self, join_token: str, node_id: str, spec: dict, capacity: dict, status: dict,
                 proof: cred.Proof | None = None) -> tuple[str, str]:
        """Admit an agent. Returns (node id, session token)."""
        try:
            spec = validate_spec(spec)
            validate_capacity(capacity)
            validate_status(status)
            if node_id and (not _NODE_ID.match(node_id) or node_id.lower() in RESERVED_IDS):
                raise InvalidArgument(f"node_id {node_id[:80]!r} is not a valid id",
                                      hint="8-64 letters, digits or '-'; remove the agent's state dir to get a new one")
        except InvalidArgument:
            self._count_registration("rejected", "invalid")
            raise
        name = spec["name"]
        key = self._proven_key(proof, node_id)
        if not node_id:             # the host lost its node_id file but kept its key: same node
            owner = self.nodes.get(self._by_name.get(name, ""))
            if owner is not None and owner.public_key == key:
                node_id = owner.id
        old = (self.nodes.get(node_id) or self.retired.get(node_id)) if node_id else None
        bound = bool(old and old.public_key)
        if bound and not hmac.compare_digest(old.public_key, key):
            raise self._refuse(Unauthenticated(
                f"node {node_id} is bound to another node key ({_short(old.public_key)}); this agent "
                f"presents {_short(key)}", hint="a node id cannot be copied to another host; remove node_id "
                "from this agent's state dir to join as a new node"), "key_mismatch")
        if bound:
            self._check_not_cut_off(old)
        self._check_key_not_cut_off(key)
        if bound:
            grant = Grant.of_scope(old.scope, old.trusted)
        else:
            try:
                grant = self.tokens.admit(join_token)
            except Unauthenticated as exc:
                self._count_registration("rejected", "unauthenticated")
                raise self._refuse(exc, "join_token") from None
        try:
            check_scope(grant, spec["tier"], spec["region"])
        except PermissionDenied as exc:
            raise self._refuse(exc, "scope") from None
        owner = self._by_name.get(name)
        if owner and owner != node_id:
            orec = self.nodes.get(owner)
            if owner in self.sessions:
                self._count_registration("rejected", "invalid")
                raise AlreadyExists(f"node name {name!r} is in use by live node {owner}",
                                    hint="give this host another name in node.yaml")
            if orec is not None and orec.public_key and orec.state != LOST:
                raise self._refuse(AlreadyExists(
                    f"node name {name!r} belongs to node {owner}, which has another node key",
                    hint="give this host another name in node.yaml, or wait until that node is LOST"), "name_taken")
        if not bound:
            self._check_room(name, owner)
            self._take_join(grant.token)
        if not node_id:
            node_id = uuid.uuid4().hex
        if not bound:
            self.tokens.spend(grant)
        drain_requested = bool(old and old.drain_requested)
        state = DRAINING if drain_requested else READY
        rec = NodeRecord(id=node_id, name=name, spec=spec, capacity=capacity, status=status,
                         state=state, registered_at=old.registered_at if old else self._wall(),
                         last_heartbeat=self._wall(), heartbeats=old.heartbeats if old else 0,
                         drain_requested=drain_requested, public_key=key, trusted=grant.trusted,
                         scope=grant.scope())
        self.store.upsert_node(rec)                      # durable before we acknowledge
        if old and old.name != name and self._by_name.get(old.name) == node_id:
            self._by_name.pop(old.name, None)
        if owner and owner != node_id:                   # the name moved to a new id: the old one retires
            displaced = self.nodes.pop(owner, None)
            if displaced is not None:
                self.retired[owner] = displaced
            self.liveness.forget(owner)
            self.applied_generation.pop(owner, None)
        self.retired.pop(node_id, None)                  # a retired node (not cut off) is back
        self._price_pending.pop(node_id, None)           # its spec's price is the news now
        self.nodes[node_id] = rec
        self._by_name[name] = node_id
        old_state = self.liveness.state(node_id)
        self.liveness.track(node_id, state, self._mono(), draining=drain_requested)
        if old_state is not None and old_state != state:
            self._emit(Transition(node_id, old_state, state))
        prev = self.sessions.pop(node_id, None)
        if prev:
            prev.closed = True
        token = secrets.token_hex(16)
        self.sessions[node_id] = Session(node_id, token)
        self.serving_changes += 1
        self._count_registration("accepted", "")
        return node_id, token

    def _check_room(self, name: str, owner: str | None) -> None:
        """A new node that adds a record (its name is not taking over another's) needs the fleet
        to hold fewer than ``max_nodes`` live ones (LOST records do not count: a cap on them
        would let whoever filled it keep honest hosts out for good, as removed nodes' records
        stay). The live ones are what every heartbeat, listing and plan works over."""
        if owner is not None or len(self.nodes) < self.max_nodes:
            return
        live = sum(1 for nid in self.nodes if self.liveness.state(nid) != LOST)
        if live >= self.max_nodes:
            raise self._refuse(ResourceExhausted(
                f"the fleet holds {live} live nodes, its limit (max_nodes)",
                hint="drain or remove nodes, or raise max_nodes"), "fleet_full")

    def _take_join(self, token_id: str) -> None:
        """One admission of a new node from this join token's bucket: ``join_burst`` at once,
        then ``join_rate`` a second. Past it the registration is RESOURCE_EXHAUSTED, which an
        agent retries with its back-off; a node already bound to its key never waits here."""
        now = self._mono()
        left, then = self._joins.get(token_id, (float(self.join_burst), now))
        left = min(float(self.join_burst), left + (now - then) * self.join_rate)
        if left < 1.0:
            raise self._refuse(ResourceExhausted(
                f"join token {token_id!r} admitted {self.join_burst} new nodes lately; the next in "
                f"{(1.0 - left) / self.join_rate:.1f} s", hint="agents retry by themselves; raise join_rate or "
                "join_burst for a larger onboarding"), "join_rate")
        self._joins[token_id] = (left - 1.0, now)

    def _proven_key(self, proof: cred.Proof | None, node_id: str) -> str:
        """The node key the proof shows possession of (base64url), or the refusal."""
        why = cred.check_proof(proof, node_id, self._wall(), self._nonces) if proof is not None else "no_key"
        if why == "no_key":
            raise self._refuse(Unauthenticated("this agent presents no node key",
                                               hint="upgrade the agent: it creates STATE_DIR/node.key"), why)
        if why:
            what = {"bad_signature": "the node key's signature does not verify",
                    "stale_proof": f"the registration's timestamp is more than {cred.FRESHNESS_S:.0f} s from the "
                                   "coordinator's clock",
                    "replayed_proof": "this registration was already used (replayed)"}[why]
            raise self._refuse(Unauthenticated(what, hint="check the host's clock; a replayed or forged "
                                                          "registration is refused"), why)
        return base64.urlsafe_b64encode(proof.public_key).decode()

    def _refuse(self, exc: AtollError, reason: str) -> AtollError:
        if self.metrics is not None:
            self.metrics.identity_refusal(reason)
        return _refusal(exc, reason)

    def set_trusted(self, ref: str, trusted: bool) -> NodeRecord:
        """The operator's decision: may trusted_only workflows run on this node? Its node token
        says so: a node still connected gets a fresh one at its next heartbeat, either way.
        Untrusting it also revokes the node tokens it holds (every agent refuses them once the key
        set with the revocation reaches it)."""
        rec = self.resolve(ref)
        if rec.trusted != trusted:
            rec.trusted = trusted
            if not trusted:
                rec.tokens_before = self._wall()
            sess = self.sessions.get(rec.id)
            if sess is not None:
                sess.credential_expires = 0.0              # re-issued at its next heartbeat
            self.store.upsert_node(rec)
            self.serving_changes += 1
        return rec

    def revoked_nodes(self) -> dict[str, float]:
        """The node-token revocations agents and the model store enforce (node id -> unix
        seconds, see :func:`atoll.coordinator.join_tokens.revoked_nodes`)."""
        return revoked_nodes(chain(self.nodes.values(), self.retired.values()), self.tokens.revoked_ids(),
                             self._wall(), NODE_TOKEN_TTL + cred.CLOCK_SKEW_S)

    def remove(self, ref: str) -> NodeRecord:
        """The operator throws a node out: every token of it is revoked, its session closed (it
        is drained, so its work is re-planned, and it goes LOST), its key refused from now on. The record stays so
        that the refusal holds; the host can come back only as a new node (a new key, a join token)."""
        rec = self.drain(ref)                          # no new work; its replicas are re-planned off it
        rec.tokens_before, rec.trusted = math.inf, False
        self.store.upsert_node(rec)
        self.serving_changes += 1
        self.cut_off()
        return rec

    def _check_not_cut_off(self, rec: NodeRecord) -> None:
        if not cut_off(rec, self.tokens.revoked_ids()):
            return
        raise self._refuse(Unauthenticated(
            f"node {rec.id} {_why_cut_off(rec)}", hint="ask an admin for a join token and join as a new node "
                                                       "(remove node_id and node.key from the state dir)"), "revoked")

    def _check_key_not_cut_off(self, key: str) -> None:
        """A node key that belonged to a node cut off (removed, or its join token revoked) joins
        nothing again: not under another name, not with a new id, not with any join token."""
        revoked = self.tokens.revoked_ids()
        for rec in chain(self.nodes.values(), self.retired.values()):
            if rec.public_key and rec.public_key == key and cut_off(rec, revoked):
                raise self._refuse(Unauthenticated(
                    f"this node key ({_short(key)}) belongs to node {rec.id} ({rec.name}), which "
                    f"{_why_cut_off(rec)}; a cut-off node key cannot register again",
                    hint="ask an admin for a join token and join as a new node (remove node_id and node.key "
                         "from the state dir)"), "revoked")

    def cut_off(self) -> list[str]:
        """Close the heartbeat sessions of nodes removed or whose join token was revoked (they
        can no longer register either); the ids of the nodes cut off now."""
        out = []
        revoked = self.tokens.revoked_ids()
        for node_id, sess in list(self.sessions.items()):
            rec = self.nodes.get(node_id)
            if rec is not None and cut_off(rec, revoked):
                self.close_session(sess)
                out.append(node_id)
        return out

    def open_session(self, node_id: str, token: str) -> Session:
        sess = self.sessions.get(node_id)
        if sess is None or sess.closed or not hmac.compare_digest(sess.token, token or ""):
            exc = Unauthenticated("unknown heartbeat session", hint="register again")
            raise self._refuse(exc, "session") if node_id in self.nodes else exc
        rec = self.nodes.get(node_id)
        if rec is not None:
            self._check_not_cut_off(rec)
        return sess

    def close_session(self, sess: Session) -> None:
        sess.closed = True
        if self.sessions.get(sess.node_id) is sess:
            del self.sessions[sess.node_id]
            self.sessions_closed += 1

    def add_price_listener(self, fn: Callable[[str, float, float], None]) -> None:
        self._price_listeners.append(fn)

    def set_price(self, node_id: str, price: float, preemptible: bool) -> None:
        """The host re-priced itself (a marketplace renter, a spot instance): persist and tell,
        at most once per :data:`PRICE_HOLD_S` per node. A change within that window of the last
        applied one is held back (the latest wins) and applied when the window ends."""
        rec = self.nodes.get(node_id)
        if rec is None:
            return
        if not (0 <= price <= 10_000) or price != price:
            raise InvalidArgument(f"price_per_hour {price} outside 0..10000")
        now = self._mono()
        if now - self._price_applied.get(node_id, -math.inf) < PRICE_HOLD_S:
            self._price_pending[node_id] = (price, bool(preemptible))
            return
        self._price_pending.pop(node_id, None)
        self._apply_price(rec, price, bool(preemptible), now)

    def apply_held_prices(self) -> int:
        """Apply the held-back price changes whose window has ended; how many changed a price."""
        if not self._price_pending:
            return 0
        now, n = self._mono(), 0
        for node_id, (price, preemptible) in list(self._price_pending.items()):
            if now - self._price_applied.get(node_id, -math.inf) < PRICE_HOLD_S:
                continue
            del self._price_pending[node_id]
            rec = self.nodes.get(node_id)
            if rec is not None:
                n += self._apply_price(rec, price, preemptible, now)
        return n

    def _apply_price(self, rec: NodeRecord, price: float, preemptible: bool, now: float) -> bool:
        old = float(rec.spec.get("price_per_hour", 0.0))
        if old == price and bool(rec.spec.get("preemptible")) == preemptible:
            return False
        rec.spec = {**rec.spec, "price_per_hour": price, "preemptible": preemptible}
        self._price_applied[rec.id] = now
        self.store.upsert_node(rec)
        for fn in self._price_listeners:
            fn(rec.id, old, price)
        return True

    def heartbeat(self, sess: Session, seq: int, capacity: dict | None, status: dict | None,
                  draining: bool, generation: int | None = None) -> None:
        rec = self.nodes.get(sess.node_id)
        if rec is None or sess.closed:
            raise Unauthenticated("unknown heartbeat session", hint="register again")
        if status is not None and status != rec.status:
            validate_status(status)          # before anything is touched: an oversize report is refused
        now = self._mono()
        sess.last_seq = seq
        if generation is not None:
            self.applied_generation[rec.id] = generation
        rec.last_heartbeat = self._wall()
        rec.heartbeats += 1
        if capacity is not None:
            validate_capacity(capacity)
            if capacity != rec.capacity:
                rec.capacity = capacity
                self.store.set_node_capacity(rec.id, capacity)
        if status is not None and status != rec.status:
            if _serving_facts(status) != _serving_facts(rec.status):
                self.serving_changes += 1
            rec.status = status
            self._dirty[rec.id] = True
        else:
            self._dirty.setdefault(rec.id, False)
        if draining and not sess.draining:
            sess.draining = True
            t = self.liveness.set_draining(rec.id, True, now)
            self._apply(t)
            sess.push({"drain": True})   # acknowledges the agent's drain
        t = self.liveness.heartbeat(rec.id, now)
        self._apply(t)

    # -- operators --------------------------------------------------------------------------------
    def resolve(self, ref: str) -> NodeRecord:
        if not ref:
            raise InvalidArgument("node is required", hint="give a node name or id")
        rec = self.nodes.get(ref) or self.nodes.get(self._by_name.get(ref, ""))
        if rec is None:
            raise NotFound(f"no node named or with id {ref[:80]!r}", hint="see `atoll nodes`")
        return rec

    def drain(self, ref: str) -> NodeRecord:
        rec = self.resolve(ref)
        rec.drain_requested = True
        t = self.liveness.set_draining(rec.id, True)
        self.store.set_node_state(rec.id, self.liveness.state(rec.id) or rec.state, drain_requested=True)
        self._apply(t, persist=False)
        rec.state = self.liveness.state(rec.id) or rec.state
        sess = self.sessions.get(rec.id)
        if sess:
            sess.push({"drain": True})
        return rec

    def list(self, tier: str = "", region: str = "", state: str = "") -> list[NodeRecord]:
        if state and state not in STATES:
            raise InvalidArgument(f"unknown state {state!r}", hint="one of " + ", ".join(STATES))
        out = [r for r in self.nodes.values()
               if (not tier or r.tier == tier) and (not region or r.region == region)
               and (not state or r.state == state)]
        return sorted(out, key=lambda r: r.name)

    def age(self, rec: NodeRecord) -> float:
        return max(0.0, self._wall() - rec.last_heartbeat)

    # -- periodic duties ------------------------------------------------------------------------
    def sweep(self) -> list[Transition]:
        self.apply_held_prices()
        ts = self.liveness.sweep(self._mono())
        for t in ts:
            self._apply(t)
        return ts

    def flush_rows(self) -> list[tuple]:
        """Take the rows to persist (heartbeat times, changed statuses) since the last flush.
        Cheap, on the event loop; the write itself can then run in a thread."""
        if not self._dirty:
            return []
        dirty, self._dirty = self._dirty, {}
        return [(nid, self.nodes[nid].last_heartbeat, self.nodes[nid].heartbeats,
                 dict(self.nodes[nid].status) if changed else None)
                for nid, changed in dirty.items() if nid in self.nodes]

    def flush(self) -> int:
        """Persist heartbeat times (and changed statuses) of nodes touched since the last flush."""
        rows = self.flush_rows()
        if rows:
            self.store.touch_nodes(rows)
        return len(rows)

    # -- internals ------------------------------------------------------------------------------
    def _apply(self, t: Transition | None, persist: bool = True) -> None:
        if t is None:
            return
        rec = self.nodes.get(t.node_id)
        if rec is not None:
            rec.state = t.new
            if persist:
                self.store.set_node_state(rec.id, t.new)
        self.serving_changes += 1
        self._emit(t)

    def _emit(self, t: Transition) -> None:
        if self.metrics is not None:
            self.metrics.transition(t)
        for fn in self._listeners:
            fn(t)

    def _count_registration(self, result: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.registration(result, reason)


def _serving_facts(status: dict) -> tuple:
    """What routes depend on in a node's status: its Worker address and replica states."""
    return status.get("worker_address", ""), status.get("replica_states") or {}


def validate_spec(spec: dict) -> dict:
    """Check a NodeSpec from the wire with the same rules as node.yaml."""
    try:
        cfg = NodeConfig.model_validate({k: v for k, v in spec.items() if v not in (None,)})
    except ValidationError as exc:
        err = validation_to_spec_error(exc, "node spec")
        raise InvalidArgument(err.message) from None
    return cfg.model_dump(exclude={"simulated_hardware"})


def validate_capacity(cap: dict) -> None:
    gpus = cap.get("gpus") or []
    if len(gpus) > MAX_GPUS:
        raise InvalidArgument(f"capacity.gpus: {len(gpus)} GPUs reported, at most {MAX_GPUS}")
    for i, g in enumerate(gpus):
        for k in ("memory_total_bytes", "memory_free_bytes"):
            if int(g.get(k, 0) or 0) < 0:
                raise InvalidArgument(f"capacity.gpus[{i}].{k} is negative")
        if len(str(g.get("name", ""))) > 256:
            raise InvalidArgument(f"capacity.gpus[{i}].name is longer than 256 characters")
        if len(str(g.get("compute_capability", "") or "")) > 32:
            raise InvalidArgument(f"capacity.gpus[{i}].compute_capability is longer than 32 characters")
    if len(str(cap.get("agent_version", "") or "")) > 128:
        raise InvalidArgument("capacity.agent_version is longer than 128 characters")
    for k in ("cpu_cores", "memory_bytes", "disk_bytes"):
        if int(cap.get(k, 0) or 0) < 0:
            raise InvalidArgument(f"capacity.{k} is negative")


def _why_cut_off(rec: NodeRecord) -> str:
    return "was removed by an operator" if rec.tokens_before == math.inf else \
        f"joined with join token {rec.scope.get('token')}, which was revoked"


def _check_text(what: str, value, limit: int) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(f"status.{what} must be a string")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > limit:
        raise InvalidArgument(f"status.{what} is {n} bytes, at most {limit}",
                              hint="a node's status is bounded; see docs/security.md, Bounded inputs")


def _check_entries(what: str, items) -> None:
    if len(items) > MAX_STATUS_ENTRIES:
        raise InvalidArgument(f"status.{what} has {len(items)} entries, at most {MAX_STATUS_ENTRIES}",
                              hint="a node's status is bounded; see docs/security.md, Bounded inputs")


def validate_status(status: dict) -> None:
    """Bound what a node reports about itself (NodeStatus as a dict): addresses are HOST:PORT of
    at most :data:`MAX_ADDRESS_BYTES`, every map and list at most :data:`MAX_STATUS_ENTRIES`
    entries, keys and names at most :data:`MAX_STATUS_KEY_BYTES`, other strings at most
    :data:`MAX_STATUS_TEXT_BYTES`, the whole at most :data:`MAX_STATUS_BYTES` as JSON.
    InvalidArgument naming the field otherwise."""
    for k in ("worker_address", "entry_address"):
        addr = status.get(k) or ""
        _check_text(k, addr, MAX_ADDRESS_BYTES)
        if addr:
            try:
                check_address(addr, allow_zero_port=False)
            except ValueError as exc:
                raise InvalidArgument(f"status.{k}: {str(exc)[:200]}") from None
    for k in ("measured_throughput", "replica_states", "replica_messages", "replica_load_seconds",
              "replica_queue_depth"):
        d = status.get(k) or {}
        _check_entries(k, d)
        for key, val in d.items():
            _check_text(f"{k} key", key, MAX_STATUS_KEY_BYTES)
            if isinstance(val, str):
                _check_text(f"{k}[{key[:40]!r}]", val, MAX_STATUS_TEXT_BYTES)
    cached = status.get("cached_models") or []
    _check_entries("cached_models", cached)
    for x in cached:
        _check_text("cached_models entry", x, MAX_STATUS_KEY_BYTES)
    loaded = status.get("loaded") or []
    _check_entries("loaded", loaded)
    for i, x in enumerate(loaded):
        for k in ("base_model", "state", "message"):
            _check_text(f"loaded[{i}].{k}", x.get(k) or "", MAX_STATUS_TEXT_BYTES)
        adapters = x.get("adapters") or []
        _check_entries(f"loaded[{i}].adapters", adapters)
        for a in adapters:
            _check_text(f"loaded[{i}].adapters entry", a, MAX_STATUS_TEXT_BYTES)
    n = len(json.dumps(status))
    if n > MAX_STATUS_BYTES:
        raise InvalidArgument(f"the node status is {n} bytes, at most {MAX_STATUS_BYTES}",
                              hint="a node's status is bounded; see docs/security.md, Bounded inputs")


def _short(key_b64: str) -> str:
    return cred.fingerprint(base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))) if key_b64 else "none"
