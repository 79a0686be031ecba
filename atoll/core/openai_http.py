"""OpenAI-compatible HTTP plumbing shared by the coordinator and the agents.

    GET  /v1/models              models the caller may use
    POST /v1/completions         {"model", "prompt", "max_tokens", "temperature", "stream"}
    POST /v1/chat/completions    {"model", "messages", ...}; messages become one prompt

``stream: true`` answers with server-sent events in OpenAI's chunk format, ending with
``data: [DONE]``. ``Authorization: Bearer <api key>`` is checked when the door has an
``auth`` key ring with keys enabled. Errors use OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``. :class:`BaseDoor` runs a stdlib
``ThreadingHTTPServer`` in a thread and hands each request's work to an asyncio loop;
subclasses (the coordinator's workflow door, an agent's local-engine door) say what a model is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from atoll.core.errors import AtollError

log = logging.getLogger("atoll.coordinator")

MAX_BODY = 4 << 20
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
               "FAILED_PRECONDITION": 409, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "invalid_request_error", 409: "invalid_request_error", 429: "rate_limit_error",
              503: "server_error", 504: "server_error", 500: "server_error"}


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        self.status, self.message, self.code, self.param = status, message, code, param


def chat_prompt(messages) -> str:
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "'messages' must be a non-empty list", param="messages")
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise HttpError(400, f"messages[{i}] must be an object with a 'role'", param="messages")
        content = m.get("content")
        if isinstance(content, list):   # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise HttpError(400, f"messages[{i}].content must be a string", param="messages")
        lines.append(f"{m['role']}: {content}")
    lines.append("assistant:")
    return "\n".join(lines)


class BaseDoor:
    """An OpenAI-compatible HTTP server in a thread; subclasses say what models exist
    (``_models``), how a model resolves (``_route``) and how a request runs (``invoke``), all
    as coroutines run on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, host: str = "127.0.0.1", port: int = 0,
                 auth=None, metrics=None):
        self.loop, self.auth, self.metrics = loop, auth, metrics
        door = self

        class Handler(_Handler):
            pass
        Handler.door = door
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="openai-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def call(self, coro_fn, timeout: float = 120.0):
        fut = asyncio.run_coroutine_threadsafe(coro_fn(), self.loop)
        return fut.result(timeout)

    async def _models(self, tenant) -> list[dict]:
        raise NotImplementedError

    async def _route(self, model: str, tenant, max_tokens, temperature):
        raise NotImplementedError

    async def invoke(self, model, tenant, prompt, max_tokens, temperature, on_delta=None, timeout=60.0,
                     api_key: str = ""):
        """Run one request; ``api_key`` is the key the caller presented (a door that hands the
        request on passes it along)."""
        raise NotImplementedError


class Answer:
    """A backend's whole answer: the output and OpenAI-style usage of the last stage (any value
    with ``prompt_tokens`` and ``completion_tokens``)."""

    def __init__(self, output: dict, stages=()):
        self.output = output
        last = stages[-1] if stages else None
        pt, ct = (last.prompt_tokens, last.completion_tokens) if last is not None else (0, 0)
        self.usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


class _Handler(BaseHTTPRequestHandler):
    door: BaseDoor = None  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    server_version = "atoll"

    def log_message(self, fmt, *args):  # quiet; the coordinator logs what matters
        log.debug("http " + fmt, *args)

    # ---------------------------------------------------------------- plumbing
    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": ERROR_TYPE.get(status, "server_error"),
                                      "param": param, "code": code}})

    def _tenant(self):
        auth = self.door.auth
        header = self.headers.get("Authorization", "")
        self.api_key = header[7:].strip() if header.startswith("Bearer ") else ""
        if auth is None or not auth.enabled():
            return None
        if not header.startswith("Bearer "):
            raise HttpError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        try:
            ident = auth.check(header[7:].strip())
        except AtollError as exc:
            raise HttpError(401, str(exc), code="invalid_api_key") from None
        return None if ident.role == "admin" else ident.tenant

    def _body(self) -> dict:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if n <= 0 or n > MAX_BODY:
            raise HttpError(400 if n <= 0 else 413, f"request body must be 1..{MAX_BODY} bytes of JSON")
        try:
            body = json.loads(self.rfile.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def _guard(self, fn) -> None:
        try:
            fn()
        except HttpError as e:
            self._error(e.status, e.message, e.code, e.param)
        except AtollError as e:
            status = HTTP_STATUS.get(e.code, 500)
            self._error(status, str(e), "model_not_found" if status == 404 else None)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the caller
            log.exception("openai http handler failed")
            self._error(500, f"internal error: {type(exc).__name__}")

    # ---------------------------------------------------------------- routes
    def do_GET(self):  # noqa: N802
        def run():
            tenant = self._tenant()
            if self.path.rstrip("/") != "/v1/models":
                raise HttpError(404, f"no route {self.path}", code="not_found")
            data = self.door.call(lambda: self.door._models(tenant))
            self._send(200, {"object": "list", "data": data})
        self._guard(run)

    def do_POST(self):  # noqa: N802
        def run():
            tenant = self._tenant()
            path = self.path.rstrip("/")
            if path not in ("/v1/completions", "/v1/chat/completions"):
                raise HttpError(404, f"no route {self.path}", code="not_found")
            body = self._body()
            chat = path.endswith("chat/completions")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise HttpError(400, "'model' is required: a workflow name or base:adapter", param="model")
            if chat:
                prompt = chat_prompt(body.get("messages"))
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                    prompt = prompt[0]
                if not isinstance(prompt, str) or not prompt:
                    raise HttpError(400, "'prompt' must be a non-empty string", param="prompt")
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
            if max_tokens is not None and (not isinstance(max_tokens, int) or not 1 <= max_tokens <= 8192):
                raise HttpError(400, "'max_tokens' must be an integer in 1..8192", param="max_tokens")
            temperature = body.get("temperature")
            if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5):
                raise HttpError(400, "'temperature' must be a number in 0..5", param="temperature")
            if body.get("n", 1) != 1:
                raise HttpError(400, "only n = 1 is supported", param="n")
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            if body.get("stream"):
                self._stream(rid, chat, model, tenant, prompt, max_tokens, temperature)
            else:
                res = self.door.call(lambda: self.door.invoke(model, tenant, prompt, max_tokens, temperature,
                                                              api_key=self.api_key))
                text = res.output.get("text", "")
                usage = getattr(res, "usage", None) or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text},
                              "finish_reason": "stop"}
                else:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
                self._send(200, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                 "created": int(time.time()), "model": model, "choices": [choice], "usage": usage})
        self._guard(run)

    def _stream(self, rid, chat, model, tenant, prompt, max_tokens, temperature) -> None:
        q: queue.Queue = queue.Queue()

        async def on_delta(d: str) -> None:
            q.put(("delta", d))

        async def go():
            try:
                await self.door.invoke(model, tenant, prompt, max_tokens, temperature, on_delta=on_delta,
                                       api_key=self.api_key)
                q.put(("done", None))
            except Exception as exc:  # noqa: BLE001 - reported in the stream
                q.put(("error", exc))

        # Resolve the route first so that "no such model" is a plain HTTP error, not a stream.
        self.door.call(lambda: self.door._route(model, tenant, max_tokens, temperature))
        asyncio.run_coroutine_threadsafe(go(), self.door.loop)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> dict:
            if chat:
                d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
                return {"id": rid, "object": obj, "created": created, "model": model,
                        "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}
            return {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}]}

        def send(obj_: dict) -> None:
            self.wfile.write(b"data: " + json.dumps(obj_).encode() + b"\n\n")
            self.wfile.flush()

        if chat:
            send(chunk(None, None, first=True))
        while True:
            kind, val = q.get(timeout=180)
            if kind == "delta":
                send(chunk(val, None))
            elif kind == "done":
                send(chunk(None, "stop"))
                break
            else:
                status = HTTP_STATUS.get(getattr(val, "code", ""), 500)
                send({"error": {"message": f"stream cut off: {val}", "type": ERROR_TYPE.get(status, "server_error"),
                                "param": None, "code": None}})
                break
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True
