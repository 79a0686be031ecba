"""The coordinator's OpenAI-compatible door: ``model`` names a workflow, or ``base:adapter`` (one
adapter on any ready replica that holds it). The HTTP protocol is :mod:`atoll.core.openai_http`;
this module is its backend (:class:`WorkflowBackend`) and its caller check (:func:`door_identity`).

A workflow request enters exactly as a gRPC ``Invoke`` does (:func:`atoll.coordinator.entry.entering`):
counted for the autoscaler, a workflow at zero woken. The request's settings replace those of
the workflow's last (sink) stage: ``max_tokens`` (else the spec's), ``temperature`` (else the
spec's), ``top_p``, ``seed``, ``n``, ``logprobs``; its ``stop`` strings are added to the stage's.
A chat request sends its messages to the entry stages (their prompt template filled with the
last user message), rendered by the agent with its model's own chat template. A ``base:adapter``
model follows OpenAI's defaults (temperature 1; ``max_tokens`` 16 for completions, up to the
end of the answer for chat). Tenants see only their own workflows and adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import AsyncIterator

from atoll.coordinator import auth
from atoll.coordinator.entry import entering
from atoll.core import access
from atoll.core.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from atoll.core.http_server import HttpLimits
from atoll.core.openai_api import Choice, Completion, EmbedRequest, GenRequest
from atoll.core.openai_http import OpenAIDoor
from atoll.specs.routing import Route, Stage, with_sink

OPENAI_DEFAULTS = {"temperature": 1.0, "completion_max_tokens": 16}
SEED_MOD = 2 ** 64          # the Worker's seed is a uint64; OpenAI's may be negative


def door_identity(keys: auth.KeyRing, authorization: str) -> auth.Identity | None:
    """Who calls the door: the API key of ``Authorization: Bearer <key>``, checked as gRPC calls
    are (no check while no key exists). The one place the door's caller is decided."""
    if not keys.enabled():
        return None
    if not authorization.startswith("Bearer "):
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return keys.check(authorization[7:].strip())


def door_authorize(route: str, caller: auth.Identity | None) -> None:
    """May ``caller`` (what :func:`door_identity` returned) call ``route``? The authorization
    table decides (``atoll.core.access``, surface ``http:coordinator``); None is the admin of a
    coordinator with no key yet, as under gRPC."""
    kind = access.ADMIN if caller is None or caller.is_admin else access.USER
    method, path = route.split(" ", 1)
    access.decide_http("coordinator", method, path, kind)


@contextlib.contextmanager
def _as_caller(caller):
    """Tenant rules (``auth.visible``) apply to ``caller`` inside the block, as under gRPC."""
    token = auth.current.set(caller)
    try:
        yield
    finally:
        auth.current.reset(token)


def _sink_changes(req: GenRequest, sink: Stage) -> dict:
    changes = {"n": req.n, "logprobs": req.logprobs, "top_logprobs": req.top_logprobs}
    if req.max_tokens is not None:
        changes["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        changes["temperature"] = req.temperature
    if req.top_p is not None:
        changes["top_p"] = req.top_p
    if req.seed is not None:
        changes["seed"] = req.seed % SEED_MOD
    if req.stop:
        changes["stop"] = tuple(dict.fromkeys(sink.stop + req.stop))
    return changes


class WorkflowBackend:
    """The door's backend on the coordinator: requests run through ``router``.
    ``workflows_fn()`` returns the leader's WorkflowManager (None on a standby: 503)."""

    def __init__(self, workflows_fn, router, metrics=None, timeout: float = 300.0):
        self._workflows_fn, self.router, self.metrics, self.timeout = workflows_fn, router, metrics, timeout

    @property
    def workflows(self):
        wm = self._workflows_fn()
        if wm is None:
            raise Unavailable("this coordinator is a standby; use the leader")
        return wm

    # ------------------------------------------------------------------ models
    async def models(self, caller) -> list[dict]:
        out: dict[str, dict] = {}
        with _as_caller(caller):
            for rec in sorted(self.workflows.records.values(), key=lambda r: r.name):
                if not auth.visible(rec.tenant):
                    continue
                card = {"created": int(rec.created), "owned_by": rec.tenant or "atoll"}
                out[rec.name] = dict(card, id=rec.name)
                for a in rec.assignments:
                    if a.adapter:
                        mid = f"{Path(a.base_model).name}:{a.adapter}"
                        out.setdefault(mid, dict(card, id=mid))
        return list(out.values())

    def _adapter_route(self, model: str, req: GenRequest | None, kind: str) -> tuple[str, Route]:
        """(workflow whose replica serves it, a one-stage route to the ready replicas holding
        the adapter) for ``base:adapter``."""
        base, adapter = model.split(":", 1)
        wm = self.workflows
        for rec in wm.records.values():
            if not auth.visible(rec.tenant) or rec.state not in ("READY", "DEGRADED"):
                continue
            route = wm.route(rec.name)
            for task, eps in route.endpoints.items():
                hits = tuple(e for e in eps if e.adapter == adapter
                             and (Path(e.base_model).name == base or e.base_model == base))
                if hits:
                    chat = req is not None and req.chat
                    stage = Stage(task=task, kind=kind, prompt="{input}", parents=(),
                                  max_tokens=None if chat else OPENAI_DEFAULTS["completion_max_tokens"],
                                  temperature=OPENAI_DEFAULTS["temperature"])
                    return rec.name, Route(model, (stage,), {task: hits}, hits[0].region, task, hits[0].location, {})
        raise NotFound(f"no ready replica serves adapter {adapter!r} on base {base!r}",
                       hint="GET /v1/models lists what you can call")

    @contextlib.asynccontextmanager
    async def _entered(self, model: str, req: GenRequest | None, kind: str, deadline: float,
                       tokens: dict[str, int]) -> AsyncIterator[Route]:
        """The route of ``model`` for one request, counted for the autoscaler while it runs
        (``tokens``: filled with each task's generated tokens when it succeeds)."""
        wm = self.workflows
        if ":" in model and not model.startswith("sha256:"):
            name, route = self._adapter_route(model, req, kind)
            wm.request_started(name)
            try:
                yield route
            finally:
                wm.request_finished(name, tokens or None)
            return
        if model not in wm.records:
            raise NotFound(f"the model {model[:200]!r} does not exist", hint="GET /v1/models lists what you can call")
        async with entering(wm, model, deadline, tokens) as route:
            sink = next(s for s in route.stages if s.task == route.sink)
            if sink.kind != kind:
                use = "/v1/embeddings" if sink.kind == "embedding" else "/v1/completions or /v1/chat/completions"
                raise InvalidArgument(f"workflow {model!r} ends in an {sink.kind} stage: call {use}")
            yield route

    @staticmethod
    def _prepare(route: Route, req: GenRequest) -> Route:
        sink = next(s for s in route.stages if s.task == route.sink)
        return with_sink(route, **_sink_changes(req, sink))

    @contextlib.asynccontextmanager
    async def _serving(self, model: str, req: GenRequest | None, kind: str, caller,
                       first: list[float] | None = None,
                       tokens: dict[str, int] | None = None) -> AsyncIterator[tuple[Route, float]]:
        """(route, deadline) of one request, run as ``caller``; counted for the autoscaler (with
        the tokens each task generated, when the caller fills ``tokens``) and in the request
        metrics (with the time to its first token when ``first`` gets one)."""
        if req is not None and req.prompt is not None and not isinstance(req.prompt, str):
            raise InvalidArgument("the coordinator's door takes text prompts, not token ids",
                                  hint="send the prompt as a string")
        t0 = time.monotonic()
        outcome = "error"
        try:
            with _as_caller(caller):
                async with self._entered(model, req, kind, t0 + self.timeout,
                                         tokens if tokens is not None else {}) as route:
                    yield route, t0 + self.timeout
            outcome = "ok"
        finally:
            if self.metrics is not None:
                self.metrics.requests.labels(model[:64], outcome).inc()
                self.metrics.request_seconds.labels(model[:64]).observe(time.monotonic() - t0)
                if first:
                    self.metrics.ttft.labels(model[:64]).observe(first[0] - t0)

    # ------------------------------------------------------------------ generation
    async def complete(self, req: GenRequest, caller) -> Completion:
        tokens: dict[str, int] = {}
        async with self._serving(req.model, req, "llm", caller, tokens=tokens) as (route, deadline):
            res = await self.router.invoke(self._prepare(route, req), req.input_text, deadline=deadline,
                                           messages=req.messages)
            tokens.update({s.task: s.completion_tokens for s in res.stages})
        choices = [Choice(c.index, c.text, c.finish_reason or "stop", c.logprobs) for c in res.choices]
        return Completion(choices, res.usage["prompt_tokens"], res.usage["completion_tokens"])

    async def stream(self, req: GenRequest, caller) -> AsyncIterator:
        """Deltas of the sink stage as the router receives them. The request runs in a task of its
        own, so closing this iterator cancels it wherever it is."""
        queue: asyncio.Queue = asyncio.Queue()
        end = object()
        first: list[float] = []

        async def on_delta(d) -> None:
            if not first:
                first.append(time.monotonic())
            queue.put_nowait(d)

        async def run() -> None:
            try:
                tokens: dict[str, int] = {}
                async with self._serving(req.model, req, "llm", caller, first, tokens) as (route, deadline):
                    res = await self.router.invoke(self._prepare(route, req), req.input_text, deadline=deadline,
                                                   on_delta=on_delta, messages=req.messages)
                    tokens.update({s.task: s.completion_tokens for s in res.stages})
                queue.put_nowait(end)
            except Exception as exc:  # noqa: BLE001 - raised where the stream is read
                queue.put_nowait(exc)

        task = asyncio.ensure_future(run())
        try:
            while True:
                item = await queue.get()
                if item is end:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            task.cancel()

    # ------------------------------------------------------------------ embeddings
    async def embed(self, req: EmbedRequest, caller) -> tuple[list[list[float]], int]:
        if any(not isinstance(x, str) for x in req.inputs):
            raise InvalidArgument("the coordinator's door embeds text, not token ids", hint="send strings")
        async with self._serving(req.model, None, "embedding", caller) as (route, deadline):
            results = await asyncio.gather(*(self.router.invoke(route, x, deadline=deadline) for x in req.inputs))
        return [r.output["embedding"] for r in results], sum(r.usage["prompt_tokens"] for r in results)


def make_door(keys: auth.KeyRing, workflows_fn, router, *, host: str, port: int, metrics=None,
              limits: HttpLimits = HttpLimits()) -> OpenAIDoor:
    """The coordinator's door on ``host:port`` (not started)."""
    backend = WorkflowBackend(workflows_fn, router, metrics)
    return OpenAIDoor(backend, lambda authorization: door_identity(keys, authorization), authorize=door_authorize,
                      host=host, port=port, limits=limits, request_timeout=backend.timeout)
