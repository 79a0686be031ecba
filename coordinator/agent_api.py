"""AgentService servicer: agents register and keep one heartbeat stream each. Thin: unpack,
call the registry, pack."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from atoll.coordinator import convert
from atoll.coordinator.registry import Registry
from atoll.core.errors import AtollError, Unauthenticated
from atoll.core.logs import kv
from atoll.core.rpc import check_parsed, handle_errors, status_code
from atoll.core.tls import peer_has_verified_cert
from atoll.proto.v1 import control_pb2_grpc
from atoll.wire.agent_service import heartbeat_extras
from atoll.wire.nodes import capacity_from_pb, spec_from_pb, status_from_pb

log = logging.getLogger("atoll.coordinator")


class AgentApi(control_pb2_grpc.AgentServiceServicer):
    def __init__(self, registry: Registry, metrics, require_client_cert: bool = False, dataplane=None):
        """``dataplane``: the :class:`~atoll.coordinator.publish.Publisher` that reads the
        routing and key digests and the entries' load in each heartbeat."""
        self.registry = registry
        self.metrics = metrics
        self.require_client_cert = require_client_cert
        self.dataplane = dataplane

    def _check_peer(self, context) -> None:
        if self.require_client_cert and not peer_has_verified_cert(context):
            raise Unauthenticated("agents must present a client certificate (mutual TLS)",
                                  hint="connect to the coordinator's --agent-listen port with --tls-ca, "
                                       "--tls-cert and --tls-key")

    @handle_errors
    async def Register(self, request, context):
        self._check_peer(context)
        node_id, token = self.registry.register(
            request.join_token, request.node_id, spec_from_pb(request.spec),
            capacity_from_pb(request.capacity), status_from_pb(request.status))
        log.info("agent registered", extra=kv(node=request.spec.name, id=node_id,
                                               tier=request.spec.tier, region=request.spec.region))
        return convert.register_response(node_id, token, self.registry.interval, self.registry.liveness.lost_after)

    async def Heartbeat(self, request_iterator, context):
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        try:
            check_parsed(first)
            self._check_peer(context)
            sess = self.registry.open_session(first.node_id, first.session_token)
            self._handle(sess, first)
        except AtollError as exc:
            await context.abort(status_code(exc), str(exc))
        await context.write(convert.heartbeat_response(first.seq, self.registry.interval))
        writer = asyncio.ensure_future(self._writer(sess, context))
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                try:
                    check_parsed(req)
                    if req.node_id != sess.node_id or req.session_token != sess.token:
                        raise Unauthenticated("heartbeat for another session on this stream")
                    self._handle(sess, req)
                except AtollError as exc:
                    await context.abort(status_code(exc), str(exc))
        finally:
            writer.cancel()
            self.registry.close_session(sess)
            if self.dataplane is not None and sess.node_id not in self.registry.sessions:
                self.dataplane.session_closed(sess.node_id)

    def _handle(self, sess, req) -> None:
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
        done = time.perf_counter()
        self.metrics.observe_heartbeat(done - t0, (time.time() - req.sent_unix) if req.sent_unix else None)

    async def _writer(self, sess, context) -> None:
        while True:
            ins = await sess.outbox.get()
            batch = [ins]
            while not sess.outbox.empty():
                batch.append(sess.outbox.get_nowait())
            await context.write(convert.heartbeat_response(sess.last_seq, self.registry.interval, batch))
