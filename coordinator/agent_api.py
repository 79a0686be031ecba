"""AgentService servicer: agents register and keep one heartbeat stream each. Thin: unpack,
call the registry, pack.

Every stream's first answer carries the node's capability token (``identity.Issuer``), and a
fresh one follows down the stream before it expires. A refused registration or heartbeat is
logged with the peer's address and the reason."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from atoll.coordinator import convert
from atoll.coordinator.identity import Issuer
from atoll.coordinator.registry import Registry
from atoll.core.errors import AtollError, Unauthenticated
from atoll.core.logs import kv
from atoll.core.rpc import check_parsed, handle_errors, status_code
from atoll.core.tls import peer_has_verified_cert
from atoll.proto.v1 import control_pb2_grpc
from atoll.wire.agent_service import heartbeat_extras, proof_from_pb
from atoll.wire.nodes import capacity_from_pb, spec_from_pb, status_from_pb

log = logging.getLogger("atoll.coordinator")
FIRST_HEARTBEAT_S = 10.0    # an opened Heartbeat stream must send its first message this soon


class AgentApi(control_pb2_grpc.AgentServiceServicer):
    def __init__(self, registry: Registry, metrics, issuer: Issuer, require_client_cert: bool = False,
                 dataplane=None):
        """``dataplane``: the :class:`~atoll.coordinator.publish.Publisher` that reads the
        routing and key digests and the entries' load in each heartbeat."""
        self.registry = registry
        self.metrics = metrics
        self.issuer = issuer
        self.require_client_cert = require_client_cert
        self.dataplane = dataplane

    def _check_peer(self, context) -> None:
        if self.require_client_cert and not peer_has_verified_cert(context):
            raise Unauthenticated("agents must present a client certificate (mutual TLS)",
                                  hint="connect to the coordinator's --agent-listen port with --tls-ca, "
                                       "--tls-cert and --tls-key")

    @handle_errors
    async def Register(self, request, context):
        try:
            self._check_peer(context)
            node_id, token = self.registry.register(
                request.join_token, request.node_id, spec_from_pb(request.spec),
                capacity_from_pb(request.capacity), status_from_pb(request.status), proof_from_pb(request))
        except AtollError as exc:
            _refused("registration refused", context, exc, node=request.spec.name[:64], id=request.node_id[:64])
            raise
        rec = self.registry.nodes[node_id]
        log.info("agent registered", extra=kv(node=request.spec.name, id=node_id, tier=request.spec.tier,
                                               region=request.spec.region, trusted=rec.trusted,
                                               peer=context.peer()))
        return convert.register_response(node_id, token, self.registry.interval, self.registry.liveness.lost_after,
                                         self.issuer.public_raw, rec.trusted)

    async def Heartbeat(self, request_iterator, context):
        try:       # a stream is anyone's until its first message names a session: it may not idle
            first = await asyncio.wait_for(context.read(), FIRST_HEARTBEAT_S)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no heartbeat within {FIRST_HEARTBEAT_S:g} s of opening the stream")
        if first is grpc.aio.EOF:
            return
        try:
            check_parsed(first)
            self._check_peer(context)
            sess = self.registry.open_session(first.node_id, first.session_token)
            self._handle(sess, first, refresh=False)
        except AtollError as exc:
            _refused("heartbeat refused", context, exc, id=getattr(first, "node_id", "")[:64])
            await context.abort(status_code(exc), str(exc))
        await context.write(convert.heartbeat_response(first.seq, self.registry.interval, [self._credential(sess)]))
        writer = asyncio.ensure_future(self._writer(sess, context))
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                try:
                    check_parsed(req)
                    if req.node_id != sess.node_id or req.session_token != sess.token:
                        exc = Unauthenticated("heartbeat for another session on this stream")
                        exc.reason = "session"
                        self.metrics.identity_refusal("session")
                        raise exc
                    self._handle(sess, req)
                except AtollError as exc:
                    _refused("heartbeat refused", context, exc, id=sess.node_id)
                    await context.abort(status_code(exc), str(exc))
        finally:
            writer.cancel()
            self.registry.close_session(sess)
            if self.dataplane is not None and sess.node_id not in self.registry.sessions:
                self.dataplane.session_closed(sess.node_id)

    def _credential(self, sess) -> dict:
        """A fresh node token for the session's node (with its trust and tier now), remembered on
        the session."""
        rec = self.registry.nodes[sess.node_id]
        token, expires = self.issuer.node_token(sess.node_id, trusted=rec.trusted, tier=rec.tier,
                                                holder=rec.public_key)
        sess.credential_expires = expires
        return {"credential": (token, expires)}

    def _handle(self, sess, req, refresh: bool = True) -> None:
        t0 = time.perf_counter()
        self.registry.heartbeat(
            sess, req.seq,
            capacity_from_pb(req.capacity) if req.has_capacity else None,
            status_from_pb(req.status) if req.HasField("status") else None,
            req.draining, req.assignments_generation)
        if req.has_price:
            self.registry.set_price(sess.node_id, req.price_per_hour, req.preemptible)
        if self.dataplane is not None:
            try:
                self.dataplane.heartbeat(sess.node_id, *heartbeat_extras(req))
            except Exception:  # noqa: BLE001 - a node's liveness never depends on its load report
                log.exception("entry load report failed", extra=kv(node=sess.node_id[:12]))
        if refresh and self.issuer.needs_refresh(sess.credential_expires):
            sess.push(self._credential(sess))
        done = time.perf_counter()
        self.metrics.observe_heartbeat(done - t0, (time.time() - req.sent_unix) if req.sent_unix else None)

    async def _writer(self, sess, context) -> None:
        while True:
            ins = await sess.outbox.get()
            batch = [ins]
            while not sess.outbox.empty():
                batch.append(sess.outbox.get_nowait())
            await context.write(convert.heartbeat_response(sess.last_seq, self.registry.interval, batch))


def _refused(what: str, context, exc: AtollError, **fields) -> None:
    """Log a refused agent call with who knocked and why (identity refusals are warnings)."""
    reason = getattr(exc, "reason", "")
    (log.warning if reason else log.info)(what, extra=kv(peer=context.peer(), reason=reason or exc.code,
                                                         error=str(exc)[:300], **fields))
