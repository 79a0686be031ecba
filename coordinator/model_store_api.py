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
from atoll.core.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted
from atoll.core.pools import Held, Pool
from atoll.core.rpc import Malformed, check_parsed, handle_errors
from atoll.proto.v1 import control_pb2_grpc


PUSH_QUEUE = 8              # chunks (at most 16 MiB each) between the stream and the writing thread
# A push holds a writing thread (of the store's own pool) while it lasts: at most MAX_PUSHES at
# once, MAX_PUSHES_PER_TENANT of one tenant, and a push that sends nothing for PUSH_IDLE_S ends
# (DEADLINE_EXCEEDED). Before, 8 pushes that sent 1 KiB and then nothing held every thread of
# asyncio's default executor, and every tenant's planning and every fetch waited for ever.
MAX_PUSHES = 8
MAX_PUSHES_PER_TENANT = 2
PUSH_IDLE_S = 60.0
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
        try:
            item = pipe.get(timeout=PUSH_IDLE_S + 5.0)    # the stream's own idle limit ends it first
        except queue.Empty:
            raise DeadlineExceeded("push stalled") from None
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
        self._writers = Pool("push", MAX_PUSHES)
        self._pushes = Held()                      # tenant -> pushes under way

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
        tenant = auth.caller_tenant() or ""
        if self._pushes.total() >= MAX_PUSHES:
            raise ResourceExhausted(f"{MAX_PUSHES} pushes are under way", hint="retry when one has finished")
        if self._pushes.of(tenant) >= MAX_PUSHES_PER_TENANT:
            raise ResourceExhausted(f"tenant {tenant or '(none)'!r} already has {MAX_PUSHES_PER_TENANT} pushes under way",
                                    hint="push one blob at a time, or retry when one has finished")
        with self._pushes.holding(tenant):
            return await self._push(request_iterator, tenant)

    async def _push(self, request_iterator, tenant: str):
        pipe: queue.Queue = queue.Queue(maxsize=PUSH_QUEUE)
        writer = asyncio.ensure_future(self._writers.run(self.blobs.put, _drain(pipe), tenant))
        n, end = 0, _ABORT
        chunks = request_iterator.__aiter__()
        try:
            while True:
                try:
                    c = await asyncio.wait_for(chunks.__anext__(), PUSH_IDLE_S)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(f"push stalled: no chunk for {PUSH_IDLE_S:g} s",
                                           hint="send the chunks without pausing") from None
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
