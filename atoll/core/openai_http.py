"""The OpenAI-compatible HTTP door, one module for the coordinator and the agents alike.

    GET  /v1/models                 models the caller may use
    GET  /v1/models/{id}            one of them
    POST /v1/completions            prompt (text, token ids, or a batch of either)
    POST /v1/chat/completions       messages, rendered with the serving model's own chat template
    POST /v1/embeddings             input (text or token ids, or a batch)

:class:`OpenAIDoor` is a Starlette application served by :class:`~atoll.core.http_server.HttpServer`
(uvicorn in the caller's event loop). What a request means is the **backend's** business,
passed in (:class:`Backend`): the coordinator and the agents pass the same one
(:class:`atoll.wire.openai_entry.EntryDoorBackend`), which runs every request through an agent's
entry (``Entry.Invoke``) on the data plane. ``authenticate`` turns the ``Authorization`` header
into the caller the backend is given (raising ``Unauthenticated`` or ``PermissionDenied``).

Requests are validated by the pydantic models of :mod:`atoll.core.openai_api` (400 naming the
field otherwise). Bodies are bounded (``max_body`` bytes, 413; read within ``body_timeout``
seconds, 408); a request runs for at most ``request_timeout`` seconds (504). ``stream: true``
answers with server-sent events in OpenAI's chunk format (``stream_options.include_usage`` adds
the usage chunk), ending with ``data: [DONE]``; the answer's head is sent once the first token
is there, so a request that fails before it (unknown model, bad input, no replica) gets a plain
HTTP error, and one that fails later ends its stream with an error event. Errors have OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``, with the status of their cause:
400 invalid, 401 no or bad key, 403 not allowed, 404 unknown model or route, 409 not ready,
429 full, 503 unavailable, 504 deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from atoll.core.errors import AtollError
from atoll.core.http_server import HttpLimits, HttpServer
from atoll.core.openai_api import (TOO_DEEP, Collector, Completion, EmbedRequest, GenRequest, RequestError,
                                   chunk_body, completion_body, embeddings_body, error_body, parse_chat, parse_completion,
                                   parse_embedding, usage)

log = logging.getLogger("atoll.http")
# Arrays and objects one body may hold (counted as '[' and '{' bytes, strings included, before it
# is parsed). Parsing and validating run on the event loop and hold the GIL, at about 1.5 µs per
# small container: a 4 MiB body of a million one-element lists cost 1.5 s of loop time before
# its refusal. Every request a client can send fits: chat has at most 1,024 messages, a
# completions batch at most 64 prompts.
MAX_CONTAINERS = 16_384

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
               "FAILED_PRECONDITION": 409, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found"}


# Every route of the door, as the authorization table (``atoll.core.access``) names them.
ROUTES = ("GET /v1/models", "GET /v1/models/{model}", "POST /v1/completions", "POST /v1/chat/completions",
          "POST /v1/embeddings")


class Backend(Protocol):
    """What the door needs of whoever serves the requests. ``caller`` is what ``authenticate``
    returned. Errors are ``AtollError`` subclasses (their gRPC code picks the HTTP status)."""

    async def models(self, caller) -> list[dict]:
        """``[{"id", "created", "owned_by"}]``: the models this caller may use."""

    async def complete(self, req: GenRequest, caller) -> Completion:
        """Run one prompt (or chat) to the end: ``req.n`` choices and the token counts."""

    def stream(self, req: GenRequest, caller) -> AsyncIterator:
        """Run one prompt (or chat), yielding events as they come (see :mod:`atoll.core.openai_api`).
        Closing the iterator early cancels the work."""

    async def embed(self, req: EmbedRequest, caller) -> tuple[list[list[float]], int]:
        """One vector per input, and the prompt tokens they took."""


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, media_type="application/json")


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return _json(status, error_body(status, message, param=param, code=code or ERROR_CODES.get(status)))


def _from_exception(exc: BaseException) -> tuple[int, str, str | None, str | None]:
    """(status, message, param, code) for any failure; unexpected ones are logged, never shown."""
    if isinstance(exc, RequestError):
        return exc.status, exc.message, exc.param, exc.code
    if isinstance(exc, AtollError):
        status = HTTP_STATUS.get(exc.code, 500)
        return status, str(exc) if status != 500 else "internal error", None, None
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return 504, "the request did not finish in time", None, None
    log.error("openai door: unexpected %s", type(exc).__name__, exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}", None, None


def _sse(body: dict | str) -> bytes:
    return b"data: " + (body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))).encode() + b"\n\n"


async def _merged(streams: list[AsyncIterator]) -> AsyncIterator[tuple[int, Any]]:
    """Events of several streams as they come, each with the number of its stream."""
    if len(streams) == 1:
        async for ev in streams[0]:
            yield 0, ev
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(k: int, s: AsyncIterator) -> None:
        try:
            async for ev in s:
                await queue.put((k, ev))
            await queue.put((k, done))
        except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
            await queue.put((k, exc))

    tasks = [asyncio.ensure_future(pump(k, s)) for k, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            k, ev = await queue.get()
            if ev is done:
                left -= 1
            elif isinstance(ev, Exception):
                raise ev
            else:
                yield k, ev
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            await s.aclose()


class OpenAIDoor:
    """The door: ``backend`` serves, ``authenticate(authorization_header) -> caller`` identifies,
    ``authorize(route, caller)`` (``route`` one of :data:`ROUTES`) raises when that caller may not
    call that route (the coordinator asks the authorization table, ``atoll.core.access``).
    :meth:`start` serves on ``host:port`` (``port`` 0: any free port, then in ``self.port``)."""

    def __init__(self, backend: Backend, authenticate: Callable[[str], Any], *,
                 authorize: Callable[[str, Any], None] | None = None, host: str = "127.0.0.1",
                 port: int = 0, limits: HttpLimits = HttpLimits(), max_body: int = 4 << 20,
                 body_timeout: float = 30.0, request_timeout: float = 300.0):
        self.backend, self.authenticate = backend, authenticate
        self.max_body, self.body_timeout, self.request_timeout = max_body, body_timeout, request_timeout
        self.authorize = authorize
        handlers = {"GET /v1/models": self._models, "GET /v1/models/{model}": self._model,
                    "POST /v1/completions": self._completions, "POST /v1/chat/completions": self._chat,
                    "POST /v1/embeddings": self._embeddings}
        self.app = Starlette(routes=[
            Route(key.split(" ", 1)[1].replace("{model}", "{model:path}"), handler, methods=[key.split(" ", 1)[0]])
            for key, handler in handlers.items()
        ], exception_handlers={HTTPException: self._http_exception, Exception: self._unexpected})
        self.server = HttpServer(self.app, host, port, limits)
        self.port = self.server.port

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    # ------------------------------------------------------------------ plumbing
    async def _http_exception(self, request: Request, exc: HTTPException) -> Response:
        what = "no route" if exc.status_code == 404 else exc.detail
        return _error(exc.status_code, f"{what}: {request.method} {request.url.path}"[:300],
                      code="not_found" if exc.status_code == 404 else None)

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        return _error(*_from_exception(exc)[:2])

    async def _body(self, request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > self.max_body):
            raise RequestError(413 if size.isdigit() else 400, f"the body must be at most {self.max_body} bytes of JSON")
        chunks, n = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                async for chunk in request.stream():
                    n += len(chunk)
                    if n > self.max_body:
                        raise RequestError(413, f"the body must be at most {self.max_body} bytes of JSON")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {self.body_timeout:g} s") from None
        if not n:
            raise RequestError(400, "the body is empty: send a JSON object")
        raw = b"".join(chunks)
        containers = raw.count(b"[") + raw.count(b"{")          # an upper bound, counted at C speed
        if containers > MAX_CONTAINERS:
            raise RequestError(400, f"the body holds up to {containers} JSON arrays and objects; at most "
                                    f"{MAX_CONTAINERS} are read (split the batch)")
        try:
            body = json.loads(raw)
        except RecursionError:         # nested deeper than the parser's stack allows: the client's fault
            raise RequestError(400, TOO_DEEP) from None
        except ValueError as exc:      # JSONDecodeError, UnicodeDecodeError, and any other refusal
            raise RequestError(400, f"the body is not JSON: {exc}"[:300]) from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def _caller(self, request: Request):
        return self.authenticate(request.headers.get("authorization", ""))

    async def _guard(self, request: Request, route: str, handle) -> Response:
        try:
            caller = self._caller(request)
            if self.authorize is not None:
                self.authorize(route, caller)
            return await handle(caller)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error answer
            status, message, param, code = _from_exception(exc)
            return _error(status, message, param=param, code=code)

    # ------------------------------------------------------------------ routes
    async def _models(self, request: Request) -> Response:
        async def go(caller):
            data = await self.backend.models(caller)
            return _json(200, {"object": "list", "data": [dict(m, object="model") for m in data]})
        return await self._guard(request, "GET /v1/models", go)

    async def _model(self, request: Request) -> Response:
        async def go(caller):
            want = request.path_params["model"]
            for m in await self.backend.models(caller):
                if m["id"] == want:
                    return _json(200, dict(m, object="model"))
            raise RequestError(404, f"the model {want[:200]!r} does not exist", param="model", code="model_not_found")
        return await self._guard(request, "GET /v1/models/{model}", go)

    async def _completions(self, request: Request) -> Response:
        async def go(caller):
            return await self._generate(parse_completion(await self._body(request)), caller)
        return await self._guard(request, "POST /v1/completions", go)

    async def _chat(self, request: Request) -> Response:
        async def go(caller):
            return await self._generate([parse_chat(await self._body(request))], caller)
        return await self._guard(request, "POST /v1/chat/completions", go)

    async def _embeddings(self, request: Request) -> Response:
        async def go(caller):
            req = parse_embedding(await self._body(request))
            async with asyncio.timeout(self.request_timeout):
                vectors, tokens = await self.backend.embed(req, caller)
            return _json(200, embeddings_body(req, vectors, tokens))
        return await self._guard(request, "POST /v1/embeddings", go)

    # ------------------------------------------------------------------ generation
    async def _generate(self, reqs: list[GenRequest], caller) -> Response:
        rid = ("chatcmpl-" if reqs[0].chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if reqs[0].stream:
            return await self._stream(rid, created, reqs, caller)
        async with asyncio.timeout(self.request_timeout):
            if len(reqs) == 1:
                return _json(200, completion_body(rid, created, reqs[0], await self.backend.complete(reqs[0], caller)))
            dones = await asyncio.gather(*(self.backend.complete(r, caller) for r in reqs))
        n = reqs[0].n
        for k, d in enumerate(dones):
            for c in d.choices:
                c.index += k * n
        whole = Completion([c for d in dones for c in d.choices], sum(d.prompt_tokens for d in dones),
                           sum(d.completion_tokens for d in dones))
        return _json(200, completion_body(rid, created, reqs[0], whole))

    async def _stream(self, rid: str, created: int, reqs: list[GenRequest], caller) -> Response:
        req, n = reqs[0], reqs[0].n
        events = _merged([self.backend.stream(r, caller) for r in reqs])
        collectors = [Collector(n) for _ in reqs]
        deadline = time.monotonic() + self.request_timeout
        try:       # the head waits for the first event: a failure before it is a plain HTTP error
            async with asyncio.timeout(self.request_timeout):
                first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise

        def chunk(k: int, ev) -> bytes:
            collectors[k].add(ev)
            body = chunk_body(rid, created, req, ev)
            body["choices"][0]["index"] = k * n + ev.index
            return _sse(body)

        async def body() -> AsyncIterator[bytes]:
            try:
                if req.chat:
                    for i in range(n * len(reqs)):
                        yield _sse(chunk_body(rid, created, req, index=i, first=True))
                yield chunk(*first)
                while True:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            k, ev = await events.__anext__()
                    except StopAsyncIteration:
                        break
                    yield chunk(k, ev)
                if req.include_usage:
                    yield _sse(chunk_body(rid, created, req, usage_=usage(
                        sum(c.prompt_tokens for c in collectors), sum(c.completion_tokens for c in collectors))))
            except Exception as exc:  # noqa: BLE001 - the head is sent: the stream ends with the error
                status, message, param, code = _from_exception(exc)
                yield _sse(error_body(status, f"the stream was cut off: {message}", param=param, code=code))
            finally:
                await events.aclose()
            yield _sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
