"""ClientService servicer: what people and programs call (nodes now; workflows later)."""

from __future__ import annotations

import logging

from atoll.coordinator import convert
from atoll.coordinator.registry import Registry
from atoll.errors import InvalidArgument
from atoll.logs import kv
from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc
from atoll.rpc import handle_errors
from atoll.specs.node import TIERS

log = logging.getLogger("atoll.coordinator")


class ClientApi(control_pb2_grpc.ClientServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    @handle_errors
    async def ListNodes(self, request, context):
        if request.tier and request.tier not in TIERS:
            raise InvalidArgument(f"unknown tier {request.tier[:40]!r}", hint="one of " + ", ".join(TIERS))
        if request.state not in convert.PB_TO_STATE and request.state != common_pb2.NODE_STATE_UNSPECIFIED:
            raise InvalidArgument(f"unknown node state {request.state}")
        state = convert.PB_TO_STATE.get(request.state, "")
        recs = self.registry.list(tier=request.tier, region=request.region, state=state)
        return control_pb2.ListNodesResponse(
            nodes=[convert.node_to_pb(r, self.registry.age(r)) for r in recs])

    @handle_errors
    async def GetNode(self, request, context):
        rec = self.registry.resolve(request.node)
        return convert.node_to_pb(rec, self.registry.age(rec))

    @handle_errors
    async def DrainNode(self, request, context):
        rec = self.registry.drain(request.node)
        log.info("node drained by operator", extra=kv(node=rec.name, id=rec.id))
        return convert.node_to_pb(rec, self.registry.age(rec))
