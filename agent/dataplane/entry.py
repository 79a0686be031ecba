"""The ``Entry`` service: clients invoke workflows at any agent.

:meth:`EntryService.Invoke` checks the caller's credential (:class:`Keys`): an API key against
the key set the coordinator sent (:func:`atoll.core.apikeys.identify`; kept while the
coordinator is away), or a caller token the coordinator issued for this node (its forwarded
calls, and SDK clients that found this entry through ``ListEntries``, present one instead of
the key), verified with the coordinator key this agent pinned and refused once the key set says
its key was revoked. It then resolves the workflow among the routes this agent holds (another tenant's is NOT_FOUND,
exactly as at the coordinator: :func:`atoll.core.apikeys.may_see`; ``base:adapter`` names one
adapter on any ready replica holding it), wakes a workflow scaled to zero (the arrival is
reported at once, and the request waits for a replica until its deadline), counts the request
for the autoscaler (:class:`~.load.LoadBook`) and runs it (:class:`~.chain.DataPlane`).
``Describe`` says who this entry is and whether it serves from a stale routing state.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from typing import Callable

import grpc

from atoll.agent.dataplane.chain import DataPlane, Request, parse_input, takes_ids
from atoll.agent.dataplane.load import LoadBook
from atoll.agent.dataplane.table import CompiledRoute
from atoll.agent.dataplane.trace import Span, start_span
from atoll.core import access, logs
from atoll.core import credentials as cred
from atoll.core.apikeys import Identity, KeySet, bearer, identify, may_see
from atoll.core.errors import (AtollError, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound,
                               ResourceExhausted, Unauthenticated, Unavailable)
from atoll.core.openai_api import (MAX_CHOICES, MAX_MESSAGES, MAX_STOP, MAX_STOP_CHARS, MAX_TEXT, MAX_TIMEOUT_S,
                                   MAX_TOKENS, MAX_TOP_LOGPROBS, logprob_items_refusal)
from atoll.core.pools import Held
from atoll.core.rpc import handle_errors, refused, serving_as
from atoll.specs.routing import Route, Stage
from atoll.wire.dataplane import Chat, EntryInfo, Invocation, Sink, delta_message, done_message, entry_to_pb, invocation_from_pb
from atoll.wire.worker import Delta

log = logging.getLogger("atoll.agent")

DEFAULT_TIMEOUT = 60.0
MAX_TOKENS_LIMIT = MAX_TOKENS     # the OpenAI door's bound; the serving model's context decides below it
MAX_STAGE_TOKENS = 8192           # a stage's own max_tokens (the workflow spec's bound)
WAKE_POLL_S = 0.1
MAX_WAKE_WAITERS = 1024   # requests one entry holds for one workflow while it wakes from zero
SERVING = ("READY", "DEGRADED")
INVOKE = f"/{access.ENTRY}/Invoke"
CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


def check_sink(sink: Sink) -> None:
    """Refuse settings no stage can take, as the Worker would (before anything is counted)."""
    if not 0 <= sink.max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidArgument(f"max_tokens must be in 0..{MAX_TOKENS_LIMIT} (0: the spec's), got {sink.max_tokens}")
    if sink.no_max_tokens and sink.max_tokens:
        raise InvalidArgument("set max_tokens or no_max_tokens, not both")
    if sink.temperature is not None and not 0 <= sink.temperature <= 5:
        raise InvalidArgument(f"temperature must be in 0..5, got {sink.temperature}")
    if sink.top_p is not None and not 0 < sink.top_p <= 1:
        raise InvalidArgument(f"top_p must be in (0, 1], got {sink.top_p}")
    if not 1 <= sink.n <= MAX_CHOICES:
        raise InvalidArgument(f"n must be in 1..{MAX_CHOICES}, got {sink.n}")
    if not 0 <= sink.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {sink.top_logprobs}")
    if len(sink.stop) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in sink.stop):
        raise InvalidArgument(f"stop takes at most {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} characters")
    if sink.logprobs or sink.top_logprobs:
        most = sink.max_tokens or (MAX_TOKENS_LIMIT if sink.no_max_tokens else MAX_STAGE_TOKENS)
        if (why := logprob_items_refusal(sink.n, most, sink.top_logprobs)) is not None:
            raise InvalidArgument(why)


def openai_defaults(sink: Sink, *, chat: bool) -> Sink:
    """OpenAI's defaults for what a ``base:adapter`` model's request leaves unset: temperature 1,
    ``max_tokens`` 16 for a completion and up to the end of the answer for a chat."""
    return dataclasses.replace(sink, temperature=1.0 if sink.temperature is None else sink.temperature,
                               max_tokens=sink.max_tokens or (0 if chat else 16),
                               no_max_tokens=chat and not sink.max_tokens)


def check_ids(route: Route, inv: Invocation) -> None:
    """Token ids stand for the input only where every entry stage sends its input as it is."""
    if inv.messages is not None:
        raise InvalidArgument("send messages or prompt token ids, not both")
    tasks = {s.task for s in route.stages}
    for s in route.stages:
        if not any(p in tasks for p in s.parents) and not takes_ids(s):
            raise InvalidArgument(f"stage {s.task} of {route.workflow!r} fills a prompt template (or a chat): "
                                  "send its input as text, not token ids", hint="send the prompt as a string")


def check_chat(messages: Chat | None) -> Chat | None:
    """A request's chat, as the OpenAI door bounds it: at most MAX_MESSAGES messages of at most
    MAX_TEXT characters each (gRPC callers reach here without the door's validation)."""
    if messages is None:
        return None
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"{len(messages)} chat messages; at most {MAX_MESSAGES}")
    for i, m in enumerate(messages):
        if m["role"] not in CHAT_ROLES:
            raise InvalidArgument(f"a chat message's role must be one of {', '.join(CHAT_ROLES)}")
        if len(m.get("content") or "") > MAX_TEXT:
            raise InvalidArgument(f"chat message {i}: at most {MAX_TEXT} characters")
    return messages


class Keys:
    """The key set this agent's doors check; ``identify`` remembers keys it verified until the
    set changes. ``identity()``: (the coordinator key this agent pinned or None, its node id),
    against which caller tokens are verified (as the Worker's guard verifies node tokens)."""

    def __init__(self, identity: Callable[[], tuple[cred.PublicKey | None, str]] = lambda: (None, ""),
                 clock: Callable[[], float] = time.time):
        self.keyset = KeySet()
        self._seen: dict[str, Identity] = {}
        self.identity, self.clock = identity, clock

    def set(self, ks: KeySet) -> None:
        self.keyset, self._seen = ks, {}

    def identify(self, key: str) -> Identity | None:
        """The caller (None: keys are not enforced in this fleet yet), or Unauthenticated."""
        ks = self.keyset
        if not ks.digest:
            raise Unavailable("this entry has not received the fleet's API keys from the coordinator yet",
                              hint="retry in a moment, or use another entry")
        if not ks.enforced:
            return None
        if cred.is_token(key):
            return self._caller(key)
        ident = self._seen.get(key)
        if ident is None:
            ident = identify(ks.keys, key)
            if len(self._seen) < 10_000:
                self._seen[key] = ident
        return ident

    def _caller(self, token: str) -> Identity:
        """The API key holder a caller token stands for: issued by the pinned coordinator for
        this node, granting ``entry.invoke``, for a key the key set holds and has not revoked."""
        pinned, node_id = self.identity()
        if pinned is None or not node_id:
            raise Unavailable("this entry has not registered with the coordinator yet", hint="retry shortly")
        claims = cred.verify_token(pinned, token, now=self.clock(), audience=node_id, scope=cred.SCOPE_ENTRY)
        if not claims.is_caller:
            raise Unauthenticated("this token is not a caller token; present an API key or a caller token")
        entry = self.keyset.keys.get(claims.key_id)
        if entry is None or entry.revoked:
            raise Unauthenticated("the API key this caller token stands for is unknown or revoked")
        if (entry.tenant, entry.role) != (claims.tenant, claims.role):
            raise Unauthenticated("this caller token's tenant or role no longer matches its API key")
        return Identity(claims.key_id, claims.tenant, claims.role)

    def caller(self, key: str) -> tuple[str, Identity | None]:
        """(kind of caller for the authorization table, identity), decided as the coordinator's
        interceptor decides (``coordinator/auth.py: AuthInterceptor.identify``): no key presented
        while keys are enforced is an anonymous caller, which the table refuses in its own words."""
        if not key and self.keyset.digest and self.keyset.enforced:
            return access.ANONYMOUS, None
        ident = self.identify(key)
        return (access.ADMIN if ident is None or ident.is_admin else access.USER), ident

    # the HTTP door's interface (atoll.core.openai_http.BaseDoor: auth.enabled(), auth.check(key))
    def enabled(self) -> bool:
        return not self.keyset.digest or self.keyset.enforced

    def check(self, key: str) -> Identity:
        ident = self.identify(key)
        return ident if ident is not None else Identity("", "", "admin")


# The caller the entry server's guard identified, for the call it admitted (kind, identity).
_CALLER: contextvars.ContextVar[tuple[str, Identity | None] | None] = contextvars.ContextVar("entry_caller",
                                                                                               default=None)


class EntryGuard(grpc.aio.ServerInterceptor):
    """The entry server's interceptor: an ``Invoke`` whose caller ``keys`` refuse (no key while keys
    are enforced, an unknown or revoked key, a caller token not for this node) is refused from its
    headers, before gRPC reads its request (``rpc.refused``: a stranger's 16 MiB requests are never
    decoded). An admitted call's handler takes the caller it identified (a caller token's
    signature is checked once per call)."""

    def __init__(self, keys: Keys):
        self.keys = keys

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method != INVOKE:
            return handler
        try:
            caller = self.keys.caller(bearer(details.invocation_metadata))
            access.decide(INVOKE, caller[0])
        except AtollError as exc:
            return refused(handler, exc)

        return serving_as(handler, _CALLER, caller)


class Resolver:
    """Workflow names (and ``base:adapter``) to compiled routes, as the caller may see them."""

    def __init__(self, plane: DataPlane):
        self.plane = plane
        self._adapters: dict[tuple, CompiledRoute] = {}
        self._for_state = 0

    def resolve(self, name: str, ident: Identity | None, kind: str = "llm") -> CompiledRoute:
        """``name``'s route as ``ident`` sees it; a model (``base:adapter``, ``base`` or an
        adapter's name alone) is one stage of ``kind`` (llm | embedding)."""
        if not name:
            raise InvalidArgument("workflow name is required")
        cr = self.plane.compiled.get(name)
        if cr is not None and may_see(ident, cr.route.tenant):
            return cr
        if not name.startswith("sha256:"):
            cr = self._adapter_route(name, ident, kind)
            if cr is not None:
                return cr
        if ":" in name and not name.startswith("sha256:"):
            base, adapter = name.split(":", 1)
            raise NotFound(f"no ready replica serves adapter {adapter!r} on base {base!r}",
                           hint="GET /v1/models lists what you can call")
        raise NotFound(f"no workflow named {name[:80]!r}", hint="see `atoll workflows`")

    def models(self, ident: Identity | None) -> list[str]:
        """What the caller may name: its workflows, then ``base`` and ``base:adapter`` names."""
        routes = [r for r in self.plane.state.routes.values() if may_see(ident, r.tenant)]
        names = [r.workflow for r in sorted(routes, key=lambda r: r.workflow)]
        for r in routes:
            for eps in r.endpoints.values():
                for e in eps:
                    base = e.base_model.rstrip("/").rsplit("/", 1)[-1]
                    n = f"{base}:{e.adapter}" if e.adapter else base
                    if n not in names:
                        names.append(n)
        return names

    def _adapter_route(self, model: str, ident: Identity | None, kind: str) -> CompiledRoute | None:
        """One stage of ``kind`` on every ready replica (of the caller's workflows) holding
        ``base:adapter`` (``base`` alone: the bare base model; else an adapter of that name on any
        base); None when none does."""
        if self._for_state != self.plane.state.digest:
            self._adapters, self._for_state = {}, self.plane.state.digest
        key = (model, None if ident is None or ident.is_admin else ident.tenant, kind)
        cr = self._adapters.get(key)
        if cr is None:
            base, adapter = model.split(":", 1) if ":" in model else (model, "")
            routes = [r for r in self.plane.state.routes.values() if may_see(ident, r.tenant)]
            eps = [e for r in routes for es in r.endpoints.values() for e in es]
            hits = tuple(e for e in eps if e.adapter == adapter and (
                e.base_model.rstrip("/").rsplit("/", 1)[-1] == base or e.base_model == base))
            if not hits and ":" not in model:
                adapter = model
                hits = tuple(e for e in eps if e.adapter == adapter)
            if not hits:
                return None
            hits = tuple({e.replica_id: e for e in hits}.values())
            task = hits[0].task
            hits = tuple(e for e in hits if e.task == task) + tuple(
                type(e)(**{**e.__dict__, "task": task}) for e in hits if e.task != task)
            trusted = any(r.trusted_only for r in routes if any(e.adapter == adapter for es in r.endpoints.values()
                                                                for e in es))
            route = Route(model, (Stage(task=task, kind=kind, prompt="{input}", parents=()),), {task: hits},
                          hits[0].region, task, hits[0].location, {}, "", "READY", trusted)
            cr = self._adapters[key] = CompiledRoute(route, self.plane.rng)
        return cr


class EntryService:
    def __init__(self, plane: DataPlane, keys: Keys, book: LoadBook, *, describe: Callable[[], EntryInfo],
                 wake: Callable[[], None] = lambda: None):
        self.plane, self.keys, self.book = plane, keys, book
        self.resolver = Resolver(plane)
        self.describe, self.wake = describe, wake
        self._waking = Held()                  # workflow -> requests here waiting for it to wake

    @handle_errors
    async def Describe(self, request, context):
        return entry_to_pb(self.describe())

    @handle_errors
    async def Invoke(self, request, context):
        md = context.invocation_metadata()
        span = start_span(md, "entry", request.request_id)
        inv = invocation_from_pb(request)
        kind, ident = _CALLER.get() or self.keys.caller(bearer(md))      # the guard's, when it ran
        access.decide(INVOKE, kind)
        cr, req = self.request(inv, ident, span, context.time_remaining())
        async for msg in self.serve(cr, req, ident, inv.kind):
            await context.write(msg)

    async def invoke(self, inv: Invocation, ident: Identity | None, span: Span, remaining: float | None = None):
        """Check, resolve and serve one invocation from ``ident`` (a caller the door identified);
        ``remaining``: the caller's own deadline, when it has one."""
        cr, req = self.request(inv, ident, span, remaining)
        async for msg in self.serve(cr, req, ident, inv.kind):
            yield msg

    def request(self, inv: Invocation, ident: Identity | None, span: Span,
                remaining: float | None = None) -> tuple[CompiledRoute, Request]:
        """Check and resolve one invocation: its route and the request to run on it."""
        text = "" if inv.prompt_ids else parse_input(inv.input_json)
        if inv.timeout_seconds > MAX_TIMEOUT_S:
            raise InvalidArgument(f"timeout_seconds must be at most {MAX_TIMEOUT_S:g}, got {inv.timeout_seconds:g}")
        timeout = inv.timeout_seconds if inv.timeout_seconds > 0 else DEFAULT_TIMEOUT
        if remaining is not None:
            timeout = min(timeout, remaining)
        if timeout <= 0 or timeout != timeout:
            raise InvalidArgument("timeout_seconds must be > 0")
        check_sink(inv.sink)
        cr = self.resolver.resolve(inv.workflow, ident, inv.kind or "llm")
        if inv.prompt_ids:
            check_ids(cr.route, inv)
        return cr, Request(cr.route.workflow, text, time.monotonic() + timeout, span, inv.stream, inv.sink,
                           ident.tenant if ident is not None else "", check_chat(inv.messages), inv.prompt_ids)

    async def serve(self, cr: CompiledRoute, req: Request, ident: Identity | None, kind: str = ""):
        """Count, wake, run and answer one request (InvokeResponse messages). ``kind``: the
        OpenAI door's endpoint (llm | embedding) that the workflow must end in; a
        ``base:adapter`` model then takes OpenAI's defaults (:func:`openai_defaults`)."""
        name = cr.route.workflow
        sink = cr.route.stages[-1] if cr.route.stages else None
        if kind and sink is not None:
            if sink.kind != kind:
                use = "/v1/embeddings" if sink.kind == "embedding" else "/v1/completions or /v1/chat/completions"
                raise InvalidArgument(f"workflow {name!r} ends in an {sink.kind} stage: call {use}")
            if self.plane.compiled.get(name) is not cr and kind == "llm":
                req.sink = openai_defaults(req.sink, chat=req.messages is not None)
        if sink is not None and sink.kind != "llm" and req.sink.given():
            raise InvalidArgument(f"{' or '.join(req.sink.given())} given, but workflow {name!r} ends in an "
                                  f"{sink.kind} stage, which generates no tokens")
        self.book.started(name)
        ok, tokens, t0 = False, None, time.monotonic()
        first = [None]
        metrics = self.plane.metrics
        try:
            cr = await self._ready(cr, req, ident)
            if req.stream:
                async for item in self._streamed(cr, req, first, t0):
                    if isinstance(item, Delta):
                        yield delta_message(item, req.span.request_id)
                    else:
                        outcome = item
            else:
                outcome = await self.plane.run(cr, 0, req, {}, cr.route.source_location, None)
            ok = True
            tokens = {s.task: s.completion_tokens for s in outcome.stages}
            out = {"text": outcome.output} if isinstance(outcome.output, str) else {"embedding": outcome.output}
            yield done_message(out, outcome.stages, req.span.request_id, req.stream, outcome.choices)
        except AtollError as exc:
            self._log(req.span, name, t0, False, exc)
            raise
        finally:
            self.book.finished(name, ok, tokens)
            label = name[:64]
            metrics.series(metrics.requests, label, "ok" if ok else "error").inc()
            metrics.series(metrics.request_seconds, label).observe(time.monotonic() - t0)
            if first[0] is not None:
                metrics.series(metrics.ttft, label).observe(first[0])
        self._log(req.span, name, t0, True)

    async def _streamed(self, cr: CompiledRoute, req: Request, first: list, t0: float):
        """The sink's deltas as they come, then the outcome."""
        queue: asyncio.Queue = asyncio.Queue()

        async def on_delta(delta: Delta) -> None:
            if first[0] is None:
                first[0] = time.monotonic() - t0
            await queue.put(delta)

        task = asyncio.ensure_future(self.plane.run(cr, 0, req, {}, cr.route.source_location, on_delta))
        try:
            while not (task.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
            yield await task
        finally:
            if not task.done():
                task.cancel()

    def _log(self, span: Span, workflow: str, t0: float, ok: bool, exc: AtollError | None = None) -> None:
        ms = round((time.monotonic() - t0) * 1000, 2)
        if ok:
            logs.event(log, logging.INFO, "request", **span.fields(), workflow=workflow, outcome="ok", ms=ms)
        else:
            logs.event(log, logging.WARNING, "request failed", **span.fields(), workflow=workflow, outcome=exc.code,
                       ms=ms, error=exc.message[:300])
        if self.plane.exporter is not None:
            span.attrs.update({"atoll.workflow": workflow})
            self.plane.exporter.export(span, time.time(), ok, "" if ok else exc.message)

    async def _ready(self, cr: CompiledRoute, req: Request, ident: Identity | None) -> CompiledRoute:
        """The route to run: at once when the workflow serves; a workflow at zero is woken (the
        arrival is reported now) and the request waits for its replicas until its deadline."""
        name = cr.route.workflow
        if cr.route.state in SERVING:
            return cr
        if not cr.route.wakeable:
            raise FailedPrecondition(f"workflow {name!r} is {cr.route.state}",
                                     hint="wait until `atoll status` says READY")
        if self._waking.of(name) >= MAX_WAKE_WAITERS:
            raise ResourceExhausted(f"{MAX_WAKE_WAITERS} requests already wait for workflow {name!r} to wake",
                                    hint="retry when it serves; `atoll status` shows it")
        self.wake()
        with self._waking.holding(name):
            while True:
                if time.monotonic() >= req.deadline:
                    raise DeadlineExceeded(f"workflow {name} was scaled to zero and no replica was ready before "
                                           "the deadline")
                await asyncio.sleep(WAKE_POLL_S)
                cr = self.resolver.resolve(name, ident)
                if cr.route.state in SERVING and all(cr.route.endpoints.get(s.task) for s in cr.route.stages):
                    return cr
