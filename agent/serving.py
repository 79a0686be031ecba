"""The agent's Worker endpoint: one gRPC service whose engine changes with the assignments.

:class:`SwitchingWorker` serves ``atoll.v1.Worker`` by delegating to the
:class:`~atoll.agent.worker.WorkerService` of the engine currently loaded; with none loaded it
answers UNAVAILABLE (the data plane then tries another replica). It also measures what it serves:
completed requests per adapter over the last minute, reported in heartbeats as measured
throughput, and requests per adapter still waiting for their first token, reported per replica
(:func:`replica_queues`) so the coordinator's autoscaler sees each workflow's queue. Before a
``Generate`` or ``Embed`` of this node's model reaches the engine, ``admit(method, adapter)``
may refuse the caller (``agent/carry.py``: a ``trusted_only`` workflow's adapter and a node
caller the operator does not trust).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import AsyncIterator, Callable, Mapping, Sequence

import grpc

from atoll.agent.generate import prompt_ids, stream_choices
from atoll.core.errors import AtollError, Unavailable
from atoll.core.rpc import add_service, status_code
from atoll.proto.v1 import worker_pb2
from atoll.specs.assignment import ReplicaItem
from atoll.wire.worker import LOAD_KEY, WAITING_KEY, Delta, Embedding

WINDOW_S = 60.0


class ThroughputMeter:
    def __init__(self, window: float = WINDOW_S, clock=time.monotonic):
        self.window = window
        self.clock = clock
        self.done: dict[str, collections.deque] = {}

    def record(self, key: str) -> None:
        self.done.setdefault(key, collections.deque()).append(self.clock())

    def rates(self) -> dict[str, float]:
        now = self.clock()
        out = {}
        for key, q in self.done.items():
            while q and now - q[0] > self.window:
                q.popleft()
            if q:
                out[key] = len(q) / self.window
        return out


def replica_queues(items: Sequence[ReplicaItem], waiting: Mapping[str, int]) -> dict[str, int]:
    """Replica id -> its requests waiting for a first token, from the waiting requests per adapter
    (``"base"`` for the bare base model); replicas that share an adapter are counted once."""
    out: dict[str, int] = {}
    seen: set[str] = set()
    for it in items:
        key = it.adapter or "base"
        out[it.replica_id] = 0 if key in seen else int(waiting.get(key, 0))
        seen.add(key)
    return out


class SwitchingWorker:
    def __init__(self, admit: Callable[[str, str], None] = lambda method, adapter: None):
        """``admit(method, adapter)``: raises an AtollError to refuse the caller of this call."""
        self.admit = admit
        self.current = None          # WorkerService of the loaded engine
        self.meter = ThroughputMeter()
        self.in_flight = 0
        self.waiting: dict[str, int] = {}     # adapter (or "base") -> requests before their first token

    def add_to_server(self, server) -> None:
        add_service(server, self, worker_pb2.DESCRIPTOR.services_by_name["Worker"])

    async def _svc(self, context):
        svc = self.current
        if svc is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model is loaded on this node yet")
        return svc

    async def _admit(self, svc, method: str, request, context) -> None:
        """Ask ``admit`` about a request for this node's model (one for another model touches
        nothing: the engine's servicer answers NOT_FOUND)."""
        if request.model and request.model not in svc.model_names:
            return
        try:
            self.admit(method, request.adapter)
        except AtollError as exc:
            await context.abort(status_code(exc), str(exc)[:2000])

    async def Generate(self, request, context):
        svc = await self._svc(context)
        await self._admit(svc, "Generate", request, context)
        async for resp in self.counted(getattr(request, "adapter", ""), svc.Generate(request, context)):
            yield resp
        context.set_trailing_metadata(((LOAD_KEY, str(self.in_flight)), (WAITING_KEY, str(self.waiting_total))))

    @property
    def waiting_total(self) -> int:
        """Requests in flight here that have had no first answer yet."""
        return sum(self.waiting.values())

    async def counted(self, adapter: str, stream: AsyncIterator):
        """``stream`` (one request's answers, each with ``finished``) passed through and counted:
        in flight until it ends, waiting (``replica_queues``) until its first answer, and one
        request for the meter when an answer finishes."""
        key = adapter or "base"
        self.in_flight += 1
        self.waiting[key] = self.waiting.get(key, 0) + 1
        waiting = True
        try:
            async for item in stream:
                if waiting:
                    waiting = False
                    self.waiting[key] -= 1
                yield item
                if item.finished:
                    self.meter.record(key)
        finally:
            if waiting:
                self.waiting[key] -= 1
            self.in_flight -= 1

    async def Embed(self, request, context):
        svc = await self._svc(context)
        await self._admit(svc, "Embed", request, context)
        resp = await svc.Embed(request, context)
        self.meter.record(getattr(request, "adapter", "") or "base")
        return resp

    async def LoadAdapter(self, request, context):
        return await (await self._svc(context)).LoadAdapter(request, context)

    async def UnloadAdapter(self, request, context):
        return await (await self._svc(context)).UnloadAdapter(request, context)

    async def ListAdapters(self, request, context):
        return await (await self._svc(context)).ListAdapters(request, context)


class LocalEngine:
    """The engine loaded now, called in process by this agent's data plane (a stage whose
    replica is on this host): the same work as ``Worker.Generate``/``Embed``, without gRPC, and
    counted alike (measured throughput, requests in flight). ``timeout`` is the caller's: the
    request is cancelled when the caller gives up on it."""

    def __init__(self, worker: SwitchingWorker):
        self.worker = worker

    @property
    def in_flight(self) -> int:
        """Requests this host's engine is serving now, from every caller."""
        return self.worker.in_flight

    @property
    def waiting(self) -> int:
        """Of those, the requests that have had no first token yet (queued, or in their prefill)."""
        return self.worker.waiting_total

    def _engine(self):
        svc = self.worker.current
        if svc is None:
            raise Unavailable("no model is loaded on this node yet")
        return svc.engine

    async def generate(self, prompt: str | Sequence[int], *, adapter: str, max_tokens: int | None, temperature: float,
                       stop: Sequence[str], top_p: float = 1.0, seed: int | None = None, n: int = 1,
                       logprobs: bool = False, top_logprobs: int = 0, timeout: float,
                       messages: Sequence[Mapping[str, str]] | None = None) -> AsyncIterator[Delta]:
        """As ``Worker.Generate`` (:func:`~atoll.agent.generate.stream_choices`): ``n`` choices of
        ``prompt`` (text or token ids), or of ``messages`` rendered with the model's own chat template."""
        # The runtime (torch, seconds to import) loads with the first model, so an agent joins the
        # fleet without waiting for it; a request here means a model is loaded.
        from atoll.agent.runtime import SamplingParams

        engine = self._engine()
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=list(stop), top_p=top_p,
                                seed=seed, n=n, logprobs=logprobs or top_logprobs > 0, top_logprobs=top_logprobs)
        choices = stream_choices(engine, prompt=None if messages is not None else (
                                     prompt if isinstance(prompt, str) else list(prompt)), messages=messages,
                                 adapter=adapter or None, params=params)
        async for d in self.worker.counted(adapter, choices):
            yield d

    async def embed(self, text: str, *, adapter: str, timeout: float) -> Embedding:
        engine = self._engine()
        ids = await prompt_ids(engine, prompt=text)
        vec = await asyncio.get_running_loop().run_in_executor(
            None, lambda: engine.embed([ids], adapter=adapter or None))
        self.worker.meter.record(adapter or "base")
        return Embedding(vec[0].tolist(), len(ids))
