"""ModelStore servicer: push and fetch content-addressed model/adapter archives."""

from __future__ import annotations

import asyncio

from atoll.coordinator.blobs import BlobStore
from atoll.core.errors import InvalidArgument
from atoll.proto.v1 import control_pb2, control_pb2_grpc
from atoll.core.rpc import Malformed, check_parsed, handle_errors


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
        from atoll.coordinator.auth import caller_tenant

        info = await asyncio.to_thread(self.blobs.put, iter(chunks), caller_tenant())
        return control_pb2.BlobInfo(**{k: v for k, v in info.items() if k != "tenant"})

    @handle_errors
    async def Stat(self, request, context):
        return control_pb2.BlobInfo(**{k: v for k, v in self.blobs.info(request.name).items() if k != "tenant"})

    @handle_errors
    async def Fetch(self, request, context):
        check_parsed(request)
        info = self.blobs.info(request.name)
        for data, off, total in self.blobs.read(request.name, request.offset):
            yield control_pb2.BlobChunk(name=request.name, kind=info["kind"], data=data, offset=off,
                                        total_bytes=total)
