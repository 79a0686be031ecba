"""``Worker`` on the wire, the calling side: :class:`WorkerClient`, the one client of agents'
Worker services (an agent's data plane, and the coordinator's profiler).

It keeps one channel per Worker address (over TLS with ``credentials`` when given) and speaks
in plain values: a prompt and sampling settings in, :class:`Delta` values out. gRPC failures
reach the caller as ``grpc.aio.AioRpcError``, whose status code says whether another replica
may be tried. The serving side is the agent's servicer, ``atoll.agent.worker``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import grpc

from atoll.core.rpc import CHANNEL_OPTIONS
from atoll.proto.v1 import worker_pb2, worker_pb2_grpc

SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"]


@dataclass(frozen=True)
class Delta:
    """One message of a generation stream: new text, the token counts so far, the end."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool


class WorkerClient:
    def __init__(self, credentials: grpc.ChannelCredentials | None = None):
        self.credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """The channel to the agent at ``address`` (its Worker and DataPlane services share it)."""
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = (
                grpc.aio.secure_channel(address, self.credentials, options=CHANNEL_OPTIONS) if self.credentials
                else grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS))
        return ch

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return worker_pb2_grpc.WorkerStub(self.channel(address))

    async def generate(self, address: str, prompt: str, *, adapter: str, max_tokens: int, temperature: float,
                       stop: Sequence[str] = (), timeout: float, metadata: Sequence[tuple[str, str]] = (),
                       request_id: str = "") -> AsyncIterator[Delta]:
        """Stream one generation from the Worker at ``address`` (``adapter`` empty: the base model);
        ``metadata`` rides along (trace context, credentials)."""
        req = worker_pb2.GenerateRequest(prompt=prompt, adapter=adapter, request_id=request_id,
                                         sampling=worker_pb2.SamplingParams(max_tokens=max_tokens,
                                                                            temperature=temperature, stop=list(stop)))
        async for resp in self._stub(address).Generate(req, timeout=timeout, metadata=tuple(metadata) or None):
            yield Delta(resp.text, resp.prompt_tokens, resp.completion_tokens, resp.finished)

    async def embed(self, address: str, text: str, *, adapter: str, timeout: float,
                    metadata: Sequence[tuple[str, str]] = ()) -> list[float]:
        resp = await self._stub(address).Embed(worker_pb2.EmbedRequest(text=text, adapter=adapter), timeout=timeout,
                                               metadata=tuple(metadata) or None)
        return list(resp.embedding)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
