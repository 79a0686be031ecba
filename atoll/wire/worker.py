"""``Worker`` on the wire, the calling side: :class:`WorkerClient`, the one client of agents'
Worker services (an agent's data plane, and the coordinator's profiler).

It keeps one channel per Worker address (over TLS with ``credentials`` when given), presents
``tokens(node_id)`` — the coordinator's capability token for that node — as
``authorization: Bearer`` on every call that names the node, and speaks in plain values: a
prompt (or chat messages) and sampling settings in, :class:`Delta` values out
(:func:`delta_to_pb` / :func:`delta_from_pb` are the stream's two directions; the agent's
servicer packs with the first). gRPC failures
reach the caller as ``grpc.aio.AioRpcError``, whose status code says whether another replica
may be tried. The serving side is the agent's servicer, ``atoll.agent.worker``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping, Sequence

import grpc

from atoll.core.apikeys import header
from atoll.core.rpc import PEER_CHANNEL_OPTIONS
from atoll.proto.v1 import worker_pb2, worker_pb2_grpc

SERVICE = worker_pb2.DESCRIPTOR.services_by_name["Worker"]
# trailing metadata of a Generate stream: the Worker's requests in flight (all callers') as it
# finished this one; entries weigh a replica on their own host against the plan's pick with it
LOAD_KEY = "atoll-in-flight"
# ... and how many of them had no first token yet (queued, or in their prefill): a replica that
# reports none has a free place in its batch, so a hedged call there starts at once
WAITING_KEY = "atoll-waiting"


def _count(trailing, key: str) -> int | None:
    v = header(trailing, key)
    return int(v) if v.isdigit() and len(v) <= 9 else None


def load_of(trailing) -> int | None:
    return _count(trailing, LOAD_KEY)


def waiting_of(trailing) -> int | None:
    return _count(trailing, WAITING_KEY)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, its text, and the likeliest
    alternatives as (token id, log-probability, text), most likely first."""

    token_id: int
    logprob: float
    text: str
    top: tuple[tuple[int, float, str], ...] = ()


@dataclass(frozen=True)
class Delta:
    """One message of a generation stream: new text of choice ``index``, the token counts so far
    (``completion_tokens`` of that choice), and its end (``finish_reason``: length | stop |
    cancelled). ``logprobs`` holds one entry per new token when they were asked for."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool
    index: int = 0
    finish_reason: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


def logprobs_from_pb(ms) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(lp.token_id, lp.logprob, lp.text, tuple((t.token_id, t.logprob, t.text) for t in lp.top))
                 for lp in ms)


def logprobs_to_pb(lps: Sequence[TokenLogprob]) -> list[worker_pb2.TokenLogprob]:
    return [worker_pb2.TokenLogprob(token_id=lp.token_id, logprob=lp.logprob, text=lp.text,
                                    top=[worker_pb2.TopLogprob(token_id=i, logprob=v, text=s) for i, v, s in lp.top])
            for lp in lps]


def delta_from_pb(resp: worker_pb2.GenerateResponse) -> Delta:
    return Delta(resp.text, resp.prompt_tokens, resp.completion_tokens, resp.finished, resp.index,
                 resp.finish_reason, tuple(resp.token_ids), logprobs_from_pb(resp.logprobs))


def delta_to_pb(d: Delta) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(
        token_ids=d.token_ids, text=d.text, finished=d.finished, finish_reason=d.finish_reason,
        prompt_tokens=d.prompt_tokens, completion_tokens=d.completion_tokens, index=d.index,
        logprobs=logprobs_to_pb(d.logprobs))


@dataclass(frozen=True)
class Embedding:
    vector: list[float]
    tokens: int                    # prompt tokens the worker embedded


class WorkerClient:
    def __init__(self, credentials: grpc.ChannelCredentials | None = None,
                 tokens: Callable[[str], str] | None = None):
        self.credentials = credentials
        self.tokens = tokens
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}     # built once per address, not per call

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
                grpc.aio.secure_channel(address, self.credentials, options=PEER_CHANNEL_OPTIONS) if self.credentials
                else grpc.aio.insecure_channel(address, options=PEER_CHANNEL_OPTIONS))
        return ch

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(self.channel(address))
        return stub

    async def generate(self, address: str, prompt: str | Sequence[int], *, adapter: str, max_tokens: int | None,
                       temperature: float, stop: Sequence[str] = (), top_p: float = 1.0, seed: int | None = None,
                       n: int = 1, logprobs: bool = False, top_logprobs: int = 0,
                       messages: Sequence[Mapping[str, str]] | None = None,
                       timeout: float, metadata: Sequence[tuple[str, str]] = (), request_id: str = "",
                       node_id: str = "", on_load: Callable[[int], None] | None = None,
                       on_waiting: Callable[[int], None] | None = None) -> AsyncIterator[Delta]:
        """Stream one generation from the Worker at ``address`` (``adapter`` empty: the base model):
        of ``prompt`` (text, or token ids), or of a chat (``messages``: role, content and optional name),
        which the worker renders with its model's own template. ``max_tokens`` None: up to a stop
        token or the context. ``n`` choices come interleaved, each delta naming its index.
        ``metadata`` rides along (trace context); ``node_id`` is the node serving there (whose
        token the call presents); ``on_load(n)``: the Worker's requests in flight as it finished
        this one (:data:`LOAD_KEY`), and ``on_waiting(n)`` how many of them had no first token yet
        (:data:`WAITING_KEY`), when it said."""
        sampling = worker_pb2.SamplingParams(
            max_tokens=max_tokens or 0, no_max_tokens=max_tokens is None, temperature=temperature, stop=list(stop),
            top_p=top_p, has_seed=seed is not None, seed=seed or 0, n=n, logprobs=logprobs or top_logprobs > 0,
            top_logprobs=top_logprobs)
        if messages is not None:
            req = worker_pb2.GenerateRequest(adapter=adapter, sampling=sampling, request_id=request_id, messages=[
                worker_pb2.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", ""))
                for m in messages])
        else:
            req = worker_pb2.GenerateRequest(adapter=adapter, sampling=sampling, request_id=request_id)
            if isinstance(prompt, str):
                req.prompt = prompt
            else:
                req.prompt_token_ids.extend(prompt)
        call = self._stub(address).Generate(req, timeout=timeout, metadata=self._metadata(node_id, metadata))
        async for resp in call:
            yield delta_from_pb(resp)
        if on_load is not None or on_waiting is not None:
            trailing = await call.trailing_metadata()
            for callback, n in ((on_load, load_of(trailing)), (on_waiting, waiting_of(trailing))):
                if callback is not None and n is not None:
                    callback(n)

    async def embed(self, address: str, text: str, *, adapter: str, timeout: float,
                    metadata: Sequence[tuple[str, str]] = (), node_id: str = "") -> Embedding:
        resp = await self._stub(address).Embed(worker_pb2.EmbedRequest(text=text, adapter=adapter), timeout=timeout,
                                               metadata=self._metadata(node_id, metadata))
        return Embedding(list(resp.embedding), resp.tokens)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
