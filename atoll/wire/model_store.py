"""``ModelStore`` on the wire, the calling side: the SDK pushes a directory archive, an agent
fetches one (resumable from an offset). The serving side is the coordinator's servicer,
``atoll.coordinator.model_store_api``."""

from __future__ import annotations

from typing import AsyncIterator, Callable, Iterator

from atoll.proto.v1 import control_pb2, control_pb2_grpc

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ModelStore"]
CHUNK_BYTES = 1 << 20


def push_archive(channel, data: bytes, *, display_name: str, kind: str, timeout: float,
                 progress: Callable[[int, int], None] | None = None) -> str:
    """Upload ``data`` (a directory archive) in 1 MiB chunks over a blocking channel; returns
    the blob's ``sha256:`` name. ``progress(done, total)`` is called before each chunk."""
    def chunks() -> Iterator[control_pb2.BlobChunk]:
        for off in range(0, max(len(data), 1), CHUNK_BYTES):
            if progress:
                progress(min(off + CHUNK_BYTES, len(data)), len(data))
            yield control_pb2.BlobChunk(name=display_name, kind=kind, data=data[off:off + CHUNK_BYTES], offset=off,
                                        total_bytes=len(data))

    return control_pb2_grpc.ModelStoreStub(channel).Push(chunks(), timeout=timeout).name


async def fetch_chunks(channel, name: str, offset: int, token: str = "",
                       proof: str = "") -> AsyncIterator[tuple[int, bytes, int]]:
    """Stream blob ``name`` from ``offset`` over an asyncio channel: (offset, data, total bytes).
    ``token``: the node's capability token, which lets it fetch what its assignments name, with
    ``proof``, its node key's proof for the coordinator (``credentials.make_call_proof``)."""
    stub = control_pb2_grpc.ModelStoreStub(channel)
    md = ((("authorization", f"Bearer {token}"),) + ((("atoll-proof", proof),) if proof else ())) if token else None
    async for chunk in stub.Fetch(control_pb2.FetchRequest(name=name, offset=offset), metadata=md):
        yield chunk.offset, chunk.data, chunk.total_bytes
