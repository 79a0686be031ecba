"""The agent's link to the coordinator: register, then one long-lived heartbeat stream.

:class:`HeartbeatClient` is used by the agent daemon and, unchanged, by the control-plane
benchmark (thousands of clients on one event loop, sharing channels).

Reconnection: any failure (coordinator down, stream cut, session unknown after a coordinator
restart) leads back to Register after an exponential back-off with jitter (base 0.2 s, doubling,
capped at ``max_backoff``), so a restarted coordinator is not hit by a thundering herd.
Refusals that retrying cannot fix (wrong join token, invalid node.yaml, a name in use, another
node's key, a coordinator whose signing key differs from the pinned one) raise
:class:`AgentRefused`.

Identity: every ``Register`` carries a fresh proof of possession of the node key
(``node_key``; without one, an in-memory key is made, as for the benchmark's simulated
agents). The coordinator's public key in the answer goes to ``on_coordinator_key`` (which pins
it, and raises to refuse a changed one); the node token that arrives first on every stream, and
again before it expires, goes to ``on_credential``.

TLS: a connection that fails in the TLS handshake is logged once per distinct reason, as a
warning saying why (the coordinator's certificate not signed by the CA given, a plaintext
peer, ...), while the agent keeps retrying.

Failover: given several coordinators (one channel each), a failure moves on to the next one
after a short pause (50-150 ms); the back-off grows once per round through the list, not per
address. A standby's refusal ("standby; leader is at ADDR") points straight at the leader when
ADDR is one of ours. With one channel the behaviour is exactly the single-coordinator one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc

from atoll.core import credentials as cred
from atoll.core.logs import kv
from atoll.core.rpc import RECONNECT_BACKOFF_CAP_S
from atoll.core.tls import closed_hint, handshake_failure
from atoll.specs.config import leader_from_refusal
from atoll.wire.agent_service import agent_stub, heartbeat_request, instruction_from_pb, register_request

log = logging.getLogger("atoll.agent")

CLOSED_BEFORE_SAYING = 3
FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED}


class AgentRefused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        self.code, self.details = code, details
        super().__init__(f"coordinator refused this agent: {code.name}: {details}")


@dataclass
class Backoff:
    base: float = 0.2
    cap: float = RECONNECT_BACKOFF_CAP_S
    attempt: int = 0
    rng: random.Random = random.Random()

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return d / 2 + self.rng.uniform(0, d / 2)

    def reset(self) -> None:
        self.attempt = 0


class HeartbeatClient:
    """Keeps one agent registered and heartbeating until :meth:`stop`.

    ``status_fn()`` returns the node's current status (the NodeStatus fields as a dict, see
    ``atoll.wire.nodes``) or None; ``on_instruction`` receives each instruction from the
    coordinator as a plain value (see ``atoll.wire.agent_service``; may be a coroutine function).
    ``node_id`` is the id kept by the caller; ``on_node_id`` is called when the coordinator
    assigns one, so the caller can persist it. ``channel`` may be a list (one channel per
    coordinator, ``addresses`` their HOST:PORT in the same order) to fail over between them.
    """

    def __init__(self, channel: grpc.aio.Channel | list[grpc.aio.Channel], *, join_token: str, spec: dict,
                 capacity: dict,
                 node_id: str = "", status_fn: Callable[[], dict | None] | None = None,
                 on_instruction: Callable[[dict], Awaitable[None] | None] | None = None,
                 on_node_id: Callable[[str], None] | None = None, max_backoff: float = RECONNECT_BACKOFF_CAP_S,
                 generation_fn: Callable[[], int] | None = None,
                 rng: random.Random | None = None, addresses: list[str] | None = None,
                 dataplane_fn: Callable[[], tuple] | None = None, on_session: Callable[[], None] | None = None,
                 node_key: cred.PrivateKey | None = None,
                 on_coordinator_key: Callable[[bytes], None] | None = None,
                 on_credential: Callable[[str, float], None] | None = None, tls: bool | None = None):
        self.channels = list(channel) if isinstance(channel, (list, tuple)) else [channel]
        self.addresses = list(addresses or [])
        self._stubs = [agent_stub(c) for c in self.channels]
        self._current = 0
        self._tried = 0                      # addresses tried since the last back-off step
        self.stub = self._stubs[0]
        self.join_token = join_token
        self.spec = spec
        self.capacity = capacity
        self.node_id = node_id
        self.status_fn = status_fn
        self.on_instruction = on_instruction
        self.on_node_id = on_node_id
        self.generation_fn = generation_fn
        self.dataplane_fn = dataplane_fn        # () -> (routing digest, keys digest, entry load)
        self.on_session = on_session            # called after each successful Register
        self.node_key = node_key or cred.new_private_key()
        self.on_coordinator_key = on_coordinator_key
        self.on_credential = on_credential
        self.trusted = False
        self.tls = tls
        self._handshake_said = ""
        self._closed_in_a_row = 0
        self._refusal_said = ""
        self.backoff = Backoff(cap=max_backoff, rng=rng or random.Random())
        self.interval = 5.0
        self.seq = 0
        self.connected = asyncio.Event()
        self.drain_acked = asyncio.Event()
        self._draining = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._capacity_dirty = True
        self._price: tuple[float, bool] | None = None
        self.sent = 0
        self.reconnects = 0
        self.last_error: str = ""

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel to the coordinator in use now."""
        return self.channels[self._current]

    # -- control ------------------------------------------------------------------------------
    def set_capacity(self, cap: dict) -> None:
        if cap != self.capacity:
            self.capacity = cap
            self._capacity_dirty = True

    def set_price(self, price: float, preemptible: bool) -> None:
        """Report a new hourly price (sent on every heartbeat until the next registration)."""
        self._price = (float(price), bool(preemptible))
        self.spec = {**self.spec, "price_per_hour": float(price), "preemptible": bool(preemptible)}
        self._wake.set()

    def poke(self) -> None:
        """Send the next heartbeat now (status changed)."""
        self._wake.set()

    async def drain(self, timeout: float = 5.0) -> bool:
        """Tell the coordinator this node is leaving; wait for its acknowledgement."""
        self._draining = True
        self._wake.set()
        try:
            await asyncio.wait_for(self.drain_acked.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._register()
                await self._stream()
                if self._stop.is_set():
                    break
                self.last_error = "stream closed by the coordinator"
            except AgentRefused:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL and exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise AgentRefused(exc.code(), exc.details() or "") from None
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and any(
                        w in (exc.details() or "") for w in ("join token", "client certificate", "node key")):
                    raise AgentRefused(exc.code(), exc.details() or "") from None
                self.last_error = f"{exc.code().name}: {exc.details()}"
                self._say_handshake(exc.details() or "")
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and self.last_error != self._refusal_said:
                    self._refusal_said = self.last_error        # e.g. a clock too far off: say so once
                    log.warning("the coordinator refused this agent; retrying", extra=kv(
                        node=self.spec.get("name", ""), reason=(exc.details() or "")[:300]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying, the coordinator may come back
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.connected.clear()
            if self._stop.is_set():
                break
            self.reconnects += 1
            delay = self._next_coordinator()
            log.debug("reconnecting", extra=kv(node=self.spec["name"], in_s=round(delay, 2), error=self.last_error))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _next_coordinator(self) -> float:
        """After a failure: move to the next coordinator; return how long to wait first."""
        if len(self._stubs) == 1:
            return self.backoff.next()
        leader = leader_from_refusal(self.last_error)
        if leader in self.addresses and self.addresses.index(leader) != self._current:
            self._current = self.addresses.index(leader)
        else:
            self._current = (self._current + 1) % len(self._stubs)
        self.stub = self._stubs[self._current]
        self._tried += 1
        if self._tried >= len(self._stubs):          # a full round failed: back off
            self._tried = 0
            return self.backoff.next()
        return 0.05 + self.backoff.rng.uniform(0, 0.1)

    def _say_handshake(self, details: str) -> None:
        """Log a refused TLS handshake once per reason (retrying cannot show it otherwise). A
        connection closed while being set up is ambiguous (a restarting coordinator closes them
        too): it is said only after it happened on CLOSED_BEFORE_SAYING attempts in a row."""
        why = handshake_failure(details)
        hint = closed_hint(details, self.tls)
        self._closed_in_a_row = self._closed_in_a_row + 1 if hint else 0
        if not why and self._closed_in_a_row >= CLOSED_BEFORE_SAYING:
            why = hint
        if why and why != self._handshake_said:
            self._handshake_said = why
            log.warning("TLS handshake with the coordinator failed", extra=kv(
                node=self.spec.get("name", ""), coordinator=self.addresses[self._current] if self.addresses else "",
                reason=why))

    async def _register(self) -> None:
        status = self.status_fn() if self.status_fn else None
        req = register_request(join_token=self.join_token, node_id=self.node_id, spec=self.spec,
                               capacity=self.capacity, status=status,
                               proof=cred.make_proof(self.node_key, self.node_id, time.time()))
        resp = await self.stub.Register(req, timeout=10)
        if self.on_coordinator_key is not None:
            try:
                self.on_coordinator_key(bytes(resp.coordinator_public_key))
            except Exception as exc:  # noqa: BLE001 - a changed key is fatal: say so and stop
                raise AgentRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        self.trusted = resp.trusted
        if resp.node_id != self.node_id:
            self.node_id = resp.node_id
            if self.on_node_id:
                self.on_node_id(resp.node_id)
        self._session = resp.session_token
        self.interval = resp.heartbeat_interval_seconds or self.interval
        self._capacity_dirty = True
        if self.on_session:
            self.on_session()

    async def _requests(self):
        while not self._stop.is_set():
            self.seq += 1
            capacity = self.capacity if self._capacity_dirty else None
            self._capacity_dirty = False
            status = self.status_fn() if self.status_fn else None
            self.sent += 1
            routing, keys, load = self.dataplane_fn() if self.dataplane_fn else (0, 0, ())
            yield heartbeat_request(node_id=self.node_id, session_token=self._session, seq=self.seq,
                                    draining=self._draining,
                                    generation=self.generation_fn() if self.generation_fn else 0, price=self._price,
                                    capacity=capacity, status=status, sent_unix=time.time(),
                                    routing_digest=routing, keys_digest=keys, entry_load=load)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def _stream(self) -> None:
        call = self.stub.Heartbeat(self._requests())
        stopper = asyncio.ensure_future(self._stop.wait())
        reader = asyncio.ensure_future(self._read(call))
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
        finally:
            # Whatever ends the stream (stop, an error, or this task being cancelled as when
            # the process dies), nothing of it may keep running.
            stopper.cancel()
            reader.cancel()
            call.cancel()

    async def _read(self, call) -> None:
        first = True
        async for resp in call:
            if first:
                first = False
                self.backoff.reset()
                self._tried = 0
                self.connected.set()
                if resp.heartbeat_interval_seconds:
                    self.interval = resp.heartbeat_interval_seconds
            for ins in map(instruction_from_pb, resp.instructions):
                if "credential" in ins:
                    if self.on_credential:
                        self.on_credential(*ins["credential"])
                    continue
                if ins.get("drain") and self._draining:
                    self.drain_acked.set()
                if ins.get("reregister"):
                    call.cancel()
                    return
                if self.on_instruction:
                    res = self.on_instruction(ins)
                    if asyncio.iscoroutine(res):
                        await res
