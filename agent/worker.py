"""The Worker gRPC service (``atoll.v1.Worker``) over the batched-LoRA runtime, for grpc.aio.

Thin servicer: unpack the message, call the engine, pack the answer. Model steps run on the
engine's own thread; the event loop only awaits token deltas (bridged with
``call_soon_threadsafe``) and runs slow calls (adapter loading, embeddings) in an executor.
Errors map to status codes through :func:`atoll.core.rpc.handle_errors`: unknown adapter NOT_FOUND,
bad sampling or prompt INVALID_ARGUMENT, a request that cannot fit in the KV cache (or a full
queue) RESOURCE_EXHAUSTED, a chat for a model without a chat template INVALID_ARGUMENT. A client
that cancels its stream cancels the engine request. A request is a text prompt, token ids or chat
messages (rendered with the model's own template), with ``n`` choices and log-probabilities
when asked (see :mod:`atoll.agent.generate`).

Usage by the agent daemon::

    service = WorkerService(engine, registry=prom_registry)
    service.add_to_server(server)        # a grpc.aio.Server
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from atoll.agent.dataplane.chain import MAX_PROMPT_CHARS
from atoll.agent.generate import prompt_ids, stream_choices
from atoll.core.errors import InvalidArgument, NotFound
from atoll.core.rpc import add_service, handle_errors
from atoll.proto.v1 import worker_pb2
from atoll.wire.worker import delta_to_pb

MAX_REQUEST_ID = 64       # as an entry bounds the x-request-id it takes

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)


class WorkerMetrics:
    """Prometheus families fed by the engine's observers and read from ``engine.stats()``."""

    def __init__(self, engine, registry: CollectorRegistry):
        r = registry
        self.ttft = Histogram("atoll_time_to_first_token_seconds", "Time from arrival to the first generated token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("atoll_time_per_output_token_seconds", "Mean time per output token after the first",
                              buckets=_TPOT_BUCKETS, registry=r)
        self.tokens = Counter("atoll_generated_tokens", "Tokens generated", registry=r)
        self.hits = Counter("atoll_adapter_slot_hits", "Requests whose adapter was already on the device", registry=r)
        self.misses = Counter("atoll_adapter_slot_misses", "Requests that had to wait for an adapter load",
                              registry=r)
        self.load = Histogram("atoll_adapter_load_seconds", "Time to bring an adapter into a device slot",
                              buckets=_LATENCY_BUCKETS, registry=r)
        g = {name: Gauge(name, doc, registry=r) for name, doc in [
            ("atoll_running_requests", "Requests in the running batch"),
            ("atoll_waiting_requests", "Requests waiting for admission"),
            ("atoll_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use"),
            ("atoll_tokens_per_second", "Generated tokens per second over the last 10 s"),
            ("atoll_adapters_loaded", "Adapters registered with the engine")]}
        keys = {"atoll_running_requests": "running", "atoll_waiting_requests": "waiting",
                "atoll_kv_cache_usage_ratio": "kv_cache_usage", "atoll_tokens_per_second": "tokens_per_s",
                "atoll_adapters_loaded": "adapters_loaded"}
        for name, gauge in g.items():
            key = keys[name]
            gauge.set_function(lambda k=key: float(engine.stats()[k]))
        self._route = {"time_to_first_token_seconds": self.ttft.observe,
                       "time_per_output_token_seconds": self.tpot.observe,
                       "generated_tokens": self.tokens.inc, "adapter_hit": self.hits.inc,
                       "adapter_miss": self.misses.inc, "adapter_load_seconds": self.load.observe}
        engine.metrics.subscribe(self.observe)

    def observe(self, name: str, value: float) -> None:
        fn = self._route.get(name)
        if fn is not None:
            fn(value)


def sampling_from_proto(sp, default_max_tokens: int = 16):
    """``atoll.v1.SamplingParams`` → runtime SamplingParams (proto zeros mean "unset")."""
    # The runtime (torch, seconds to import) loads with the first model, so an agent joins the
    # fleet without waiting for it; a request here means a model is loaded.
    from atoll.agent.runtime import SamplingParams

    return SamplingParams(
        max_tokens=None if sp.no_max_tokens else int(sp.max_tokens) if sp.max_tokens else default_max_tokens,
        temperature=float(sp.temperature), top_k=int(sp.top_k),
        top_p=float(sp.top_p) if sp.top_p else 1.0,
        seed=int(sp.seed) if sp.has_seed else None,
        stop_token_ids=[int(t) for t in sp.stop_token_ids], stop=list(sp.stop),
        n=int(sp.n) or 1, logprobs=bool(sp.logprobs or sp.top_logprobs), top_logprobs=int(sp.top_logprobs))


def adapter_to_proto(info) -> worker_pb2.AdapterInfo:
    return worker_pb2.AdapterInfo(name=info.name, path=info.path, rank=info.rank,
                                  target_modules=list(info.target_modules), residency=info.residency,
                                  pinned=info.pinned, size_bytes=info.size_bytes, alpha=info.alpha)


class WorkerService:
    """``atoll.v1.Worker`` for one engine. Starts the engine's step loop if it is not running."""

    def __init__(self, engine, registry: CollectorRegistry | None = None, *, model_name: str | None = None,
                 caller: Callable[[], str] = lambda: ""):
        """``caller()``: who calls the request under way (the calling node's id; "" unknown)."""
        self.caller = caller
        self.engine = engine.start()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WorkerMetrics(engine, self.registry)
        self.model_names = {model_name or engine.model_dir.name, str(engine.model_dir)}

    def add_to_server(self, server) -> None:
        add_service(server, self, worker_pb2.DESCRIPTOR.services_by_name["Worker"])

    def _check_model(self, model: str) -> None:
        if model and model not in self.model_names:
            raise NotFound(f"model {model!r} is not served here",
                           hint=f"this worker serves {sorted(self.model_names)[0]!r}; leave model empty")

    @staticmethod
    def _text_or_ids(text: str, ids, names: tuple[str, str], empty: str):
        """The request's input: its text or its token ids (exactly one of the two)."""
        if text and ids:
            raise InvalidArgument(f"set either {names[0]} or {names[1]}, not both")
        out = list(ids) if ids else text
        if not out:
            raise InvalidArgument(empty, hint=f"set {names[0]} or {names[1]}")
        if len(out) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{names[1] if ids else names[0]} holds {len(out)} items; at most {MAX_PROMPT_CHARS}")
        return out

    @handle_errors
    async def Generate(self, request, context):
        self._check_model(request.model)
        messages = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
                    for m in request.messages] or None
        if messages is not None and (request.prompt or request.prompt_token_ids):
            raise InvalidArgument("set one of prompt, prompt_token_ids or messages, not several")
        prompt = None if messages is not None else self._text_or_ids(
            request.prompt, request.prompt_token_ids, ("prompt", "prompt_token_ids"), "prompt is empty")
        params = sampling_from_proto(request.sampling)
        rid = request.request_id
        if len(rid) > MAX_REQUEST_ID or not rid.isprintable():
            raise InvalidArgument(f"request_id: at most {MAX_REQUEST_ID} printable characters")
        # The engine's ids are this Worker's: a caller's own id is kept inside the caller's name,
        # so it can neither take another caller's id nor one the engine gives out itself.
        owner = "node:" + (self.caller() or "?")
        async for d in stream_choices(self.engine, prompt=prompt, messages=messages, adapter=request.adapter or None,
                                      params=params, request_id=f"{owner}/{rid or uuid.uuid4().hex}", owner=owner):
            yield delta_to_pb(d)

    @handle_errors
    async def LoadAdapter(self, request, context):
        self._check_model(request.model)
        if not request.name or not request.path:
            raise InvalidArgument("LoadAdapter needs name and path")
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, lambda: self.engine.add_adapter(request.name, request.path,
                                                                                 pin=request.pin))
        return adapter_to_proto(info)

    @handle_errors
    async def UnloadAdapter(self, request, context):
        self._check_model(request.model)
        if not request.name:
            raise InvalidArgument("UnloadAdapter needs name")
        return worker_pb2.UnloadAdapterResponse(unloaded=self.engine.remove_adapter(request.name))

    @handle_errors
    async def ListAdapters(self, request, context):
        self._check_model(request.model)
        return worker_pb2.ListAdaptersResponse(adapters=[adapter_to_proto(i) for i in self.engine.list_adapters()])

    @handle_errors
    async def Embed(self, request, context):
        self._check_model(request.model)
        prompt = self._text_or_ids(request.text, request.token_ids, ("text", "token_ids"), "nothing to embed")
        ids = await prompt_ids(self.engine, prompt=prompt)
        loop = asyncio.get_running_loop()
        vec = await loop.run_in_executor(None, lambda: self.engine.embed([ids], adapter=request.adapter or None))
        return worker_pb2.EmbedResponse(embedding=vec[0].tolist(), tokens=len(ids))
