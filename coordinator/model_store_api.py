"""ModelStore servicer: push and fetch content-addressed model/adapter archives."""

from __future__ import annotations

import asyncio

from atoll.coordinator import convert
from atoll.coordinator.auth import caller_tenant
from atoll.coordinator.blobs import BlobStore
from atoll.core.errors import InvalidArgument
from atoll.core.rpc import Malformed, check_parsed, handle_errors
from atoll.proto.v1 import control_pb2_grpc


class ModelStoreApi(control_pb2_grpc.ModelStoreServicer):
    def __init__(self, blobs: BlobStore):
        self.blobs = blobs

    @handle_errors
    async def Push(self, request_iterator, context):
        chunks = []
        async for c in request_iterator:
            if isinstance(c, Malformed):
                raise InvalidArgument(f"malformed chunk: {c.error}")
            chunks.append((c.data, c.name, c.kind))
        if not chunks:
            raise InvalidArgument("empty push", hint="send at least one chunk")
        info = await asyncio.to_thread(self.blobs.put, iter(chunks), caller_tenant())
        return convert.blob_info(info)

    @handle_errors
    async def Stat(self, request, context):
        return convert.blob_info(self.blobs.info(request.name))

    @handle_errors
    async def Fetch(self, request, context):
        check_parsed(request)
        info = self.blobs.info(request.name)
        for data, off, total in self.blobs.read(request.name, request.offset):
            yield convert.blob_chunk(request.name, info["kind"], data, off, total)
