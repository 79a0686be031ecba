"""``Worker`` on the wire, the calling side: :class:`WorkerClient`, the one client of agents'
Worker services (an agent's data plane, and the coordinator's profiler).

It keeps one channel per Worker address (over TLS with ``credentials`` when given), presents
``tokens(node_id)`` — the coordinator's capability token for that node — as
``authorization: Bearer`` on every call that names the node, and speaks in plain values: a prompt and sampling settings in, :class:`Delta` values out. gRPC failures
reach the caller as ``grpc.aio.AioRpcError``, whose status code says whether another replica
may be tried. The serving side is the agent's servicer, ``atoll.agent.worker``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

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
    def __init__(self, credentials: grpc.ChannelCredentials | None = None,
                 tokens: Callable[[str], str] | None = None):
        self.credentials = credentials
        self.tokens = tokens
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _metadata(self, node_id: str, extra: Sequence[tuple[str, str]] = ()) -> tuple | None:
        """``extra`` (trace context) plus, when a token source is set and ``node_id`` names the
        node serving there, the token this call presents to it."""
        md = tuple(extra)
        if self.tokens is not None and node_id:
            md = tuple((k, v) for k, v in md if k != "authorization") + (
                ("authorization", "Bearer " + self.tokens(node_id)),)
        return md or None

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
                       request_id: str = "", node_id: str = "") -> AsyncIterator[Delta]:
        """Stream one generation from the Worker at ``address`` (``adapter`` empty: the base model);
        ``metadata`` rides along (trace context); ``node_id`` is the node serving there (whose
        token the call presents)."""
        req = worker_pb2.GenerateRequest(prompt=prompt, adapter=adapter, request_id=request_id,
                                         sampling=worker_pb2.SamplingParams(max_tokens=max_tokens,
                                                                            temperature=temperature, stop=list(stop)))
        async for resp in self._stub(address).Generate(req, timeout=timeout, metadata=self._metadata(node_id, metadata)):
            yield Delta(resp.text, resp.prompt_tokens, resp.completion_tokens, resp.finished)

    async def embed(self, address: str, text: str, *, adapter: str, timeout: float,
                    metadata: Sequence[tuple[str, str]] = (), node_id: str = "") -> list[float]:
        resp = await self._stub(address).Embed(worker_pb2.EmbedRequest(text=text, adapter=adapter), timeout=timeout,
                                               metadata=self._metadata(node_id, metadata))
        return list(resp.embedding)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
