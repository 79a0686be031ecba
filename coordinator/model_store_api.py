"""ModelStore servicer: push and fetch content-addressed model/adapter archives.

Who may touch what (the ownership rules of ``atoll.core.access``): a user pushes into its own
tenant and stats and fetches only blobs its tenant owns (or public ones); an admin any blob; a
node, presenting its node token, fetches only blobs its current assignments reference. Anything
else is NOT_FOUND, as if the blob did not exist.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Callable, Iterator

from atoll.coordinator import auth, convert
from atoll.coordinator.blobs import BlobStore
from atoll.core.archive import check_name
from atoll.core.errors import InvalidArgument, NotFound
from atoll.core.rpc import Malformed, check_parsed, handle_errors
from atoll.proto.v1 import control_pb2_grpc


PUSH_QUEUE = 8              # chunks (at most 16 MiB each) between the stream and the writing thread
_END, _ABORT = object(), object()


async def _feed(pipe: queue.Queue, item, writer: asyncio.Future) -> bool:
    """Queue ``item`` for the writer without blocking the event loop; False if it is gone."""
    while True:
        try:
            pipe.put_nowait(item)
            return True
        except queue.Full:
            if writer.done():
                return False
            await asyncio.sleep(0.005)


def _drain(pipe: queue.Queue) -> Iterator[tuple]:
    while True:
        item = pipe.get()
        if item is _END:
            return
        if item is _ABORT:
            raise InvalidArgument("push aborted")
        yield item


class ModelStoreApi(control_pb2_grpc.ModelStoreServicer):
    """``references(node_id)``: the blob names the node's current assignments reference."""

    def __init__(self, blobs: BlobStore, references: Callable[[str], set[str]] = lambda node_id: set()):
        self.blobs = blobs
        self.references = references

    def _info(self, name: str) -> dict:
        node = auth.caller_node()
        if node:
            # The assignments first, and the store only for a blob they name: a blob that is
            # not assigned to this node gets one answer whether or not it is stored, so a node
            # token cannot ask which hashes tenants have pushed.
            if check_name(name) not in self.references(node):
                raise NotFound(f"no blob {name} is assigned to node {node}",
                               hint="a node fetches only what its assignments name")
            return self.blobs.info(name)
        return self.blobs.info_for(name, None if auth.caller_is_admin() else auth.caller_tenant())

    @handle_errors
    async def Push(self, request_iterator, context):
        """Chunks go to the writing thread through a short queue, so a push holds a few MiB of
        memory whatever its size; the thread refuses a push past the size cap at once."""
        pipe: queue.Queue = queue.Queue(maxsize=PUSH_QUEUE)
        writer = asyncio.ensure_future(asyncio.to_thread(self.blobs.put, _drain(pipe), auth.caller_tenant()))
        n, end = 0, _ABORT
        try:
            async for c in request_iterator:
                if isinstance(c, Malformed):
                    raise InvalidArgument(f"malformed chunk: {c.error}")
                if not await _feed(pipe, (c.data, c.name, c.kind), writer):
                    break                          # the writer stopped: its error is the answer
                n += 1
            if not n and not writer.done():
                raise InvalidArgument("empty push", hint="send at least one chunk")
            end = _END
        finally:
            await _feed(pipe, end, writer)
            if end is _ABORT:
                await asyncio.gather(writer, return_exceptions=True)
        return convert.blob_info(await writer)

    @handle_errors
    async def Stat(self, request, context):
        return convert.blob_info(self._info(request.name))

    @handle_errors
    async def Fetch(self, request, context):
        """Each chunk is read from disk in a thread: many nodes fetching large blobs at once
        (a cold start of a fleet) never hold up the event loop that every other call shares."""
        check_parsed(request)
        info = await asyncio.to_thread(self._info, request.name)     # the thread sees the caller (a copied context)
        chunks = self.blobs.read(request.name, request.offset)
        try:
            while (piece := await asyncio.to_thread(next, chunks, None)) is not None:
                data, off, total = piece
                yield convert.blob_chunk(request.name, info["kind"], data, off, total)
        finally:
            chunks.close()
