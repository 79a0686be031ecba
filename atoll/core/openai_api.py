"""The OpenAI API's shapes, for atoll's HTTP door (:mod:`atoll.core.openai_http`). Pure.

Requests are validated by pydantic models in strict mode (``"4"`` is not a number, ``1`` is
not ``true``, NaN and infinities are refused) and turned into plain values the door's backend
serves: :class:`GenRequest` (completions and chat), :class:`EmbedRequest`. Unknown fields are
ignored, as OpenAI's clients send some (``user``, ``metadata``, ...); fields atoll does not serve
(``echo``, penalties, ``logit_bias``, tools, ``best_of`` other than ``n``, ``dimensions``) are
refused when set to anything but their neutral value, naming the field.

Answers are built here too: :func:`completion_body`, :func:`chunk_body` (server-sent events),
:func:`embeddings_body`, :func:`error_body`. A backend's answer is a :class:`Completion` (whole)
or a stream of events, each with ``index``, ``text``, ``finished``, ``finish_reason``,
``prompt_tokens``, ``completion_tokens`` (of its choice, so far) and ``logprobs`` (entries with
``token_id``, ``logprob``, ``text`` and ``top``: ``(token_id, logprob, text)`` alternatives), as
:class:`atoll.wire.worker.Delta` has them; :class:`Collector` folds such a stream into a
:class:`Completion`.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_TOKENS = 32768
MAX_CHOICES = 16             # n
MAX_PROMPTS = 64             # prompts (or embedding inputs) in one request
MAX_TIMEOUT_S = 3600.0       # an invocation's deadline (timeout_seconds) at the coordinator and at entries
MAX_GENERATIONS = 64         # prompts x n in one completions request: what one request may ask to generate
MAX_TEXT = 200_000           # characters of one prompt or message
MAX_MESSAGES = 1024
MAX_STOP = 4
MAX_STOP_CHARS = 256         # one stop string (a workflow stage's too)
MAX_TOP_LOGPROBS = 20        # chat's top_logprobs (completions' logprobs: at most 5)
# Log-probabilities one request may ask for: choices x tokens x (1 + top alternatives). Every one
# is kept until the answer is whole and then written out at once: 16 choices x 2,000 tokens x 21
# (a 41 MiB answer) held the coordinator's event loop 4-6 s and the serving agent's 1-4 s.
MAX_LOGPROB_ITEMS = 65_536
SEED_RANGE = (-2 ** 63, 2 ** 64 - 1)
FINISH_REASONS = ("stop", "length")


class RequestError(Exception):
    """A request the door refuses: HTTP ``status``, OpenAI's error ``code`` and ``param``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# --------------------------------------------------------------------------------- requests
class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=512, description="a workflow, a base model or base:adapter")
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, Any]] = None


class CompletionBody(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None


class TextPart(_Body):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: str
    text: Optional[str] = Field(default=None, max_length=MAX_TEXT)


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = Field(default=None)
    name: Optional[str] = Field(default=None, max_length=256)
    tool_calls: Optional[list[Any]] = None


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    functions: Optional[list[Any]] = None
    response_format: Optional[dict[str, Any]] = None


class EmbeddingBody(_Body):
    model: str = Field(min_length=1, max_length=512)
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None


@dataclass(frozen=True)
class GenRequest:
    """One prompt (or chat) to run, as the door's backend sees it. ``None`` settings were not
    given: the backend's default applies (a workflow's own settings, or OpenAI's defaults)."""

    model: str
    prompt: Union[str, list[int], None] = None               # completions: text or token ids
    messages: Optional[tuple[dict, ...]] = None              # chat: {"role", "content"[, "name"]}
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    include_usage: bool = False

    @property
    def chat(self) -> bool:
        return self.messages is not None

    @property
    def input_text(self) -> str:
        """The text a workflow takes as its input: the prompt, or the chat's last user message."""
        if self.messages is None:
            return self.prompt if isinstance(self.prompt, str) else ""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    inputs: tuple[Union[str, tuple[int, ...]], ...]
    encoding_format: str = "float"


# A body whose arrays and objects nest deeper than the parser or the validator can follow (about
# 1000 levels, less the stack in use) is invalid (400), never a 500 with an error log line. What
# validation lets through nests a few levels at most (every free-form field is refused).
TOO_DEEP = "the body is not JSON this door accepts: its arrays or objects nest too deeply"


def _validate(cls, body: Any):
    try:
        return cls.model_validate(body)
    except RecursionError:     # deeper than validation can follow (the door's parser stops most before)
        raise RequestError(400, TOO_DEEP) from None
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) if err["loc"] else None
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise RequestError(400, f"{loc + ': ' if loc else ''}{err['msg']}{more}", param=loc) from None


def _refuse_unserved(b) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(b, name) not in (None, 0, 0.0):
            raise RequestError(400, f"{name} is not supported (leave it out or 0)", param=name)
    if b.logit_bias:
        raise RequestError(400, "logit_bias is not supported", param="logit_bias")
    if b.stream_options is not None and not b.stream:
        raise RequestError(400, "stream_options needs stream: true", param="stream_options")


def _stops(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError(400, f"stop: at most {MAX_STOP} non-empty strings of up to {MAX_STOP_CHARS} characters",
                           param="stop")
    return stops


def logprob_items_refusal(choices: int, max_tokens: int, top_logprobs: int) -> str | None:
    """Why a request whose log-probabilities would pass MAX_LOGPROB_ITEMS is refused, or None
    (``max_tokens``: the most it may generate, the context's bound when it is not given). The
    OpenAI doors and the entries (over gRPC) refuse with these words."""
    items = choices * max_tokens * (1 + top_logprobs)
    if items <= MAX_LOGPROB_ITEMS:
        return None
    return (f"logprobs: {choices} choice(s) x {max_tokens} tokens x {1 + top_logprobs} log-probabilities each is "
            f"{items}; one request gets at most {MAX_LOGPROB_ITEMS} (set a smaller max_tokens, n or top_logprobs)")


def check_logprob_items(choices: int, max_tokens: int, top_logprobs: int) -> None:
    if (why := logprob_items_refusal(choices, max_tokens, top_logprobs)) is not None:
        raise RequestError(400, why, param="logprobs")


def _common(b) -> dict:
    return dict(model=b.model, temperature=b.temperature, top_p=b.top_p, seed=b.seed, stop=_stops(b.stop),
                n=b.n, stream=b.stream, include_usage=bool(b.stream_options and b.stream_options.include_usage))


def parse_completion(body: Any) -> list[GenRequest]:
    """A ``/v1/completions`` body → one GenRequest per prompt (OpenAI accepts a batch)."""
    b = _validate(CompletionBody, body)
    _refuse_unserved(b)
    if b.echo:
        raise RequestError(400, "echo is not supported", param="echo")
    if b.suffix:
        raise RequestError(400, "suffix is not supported", param="suffix")
    if b.best_of not in (None, b.n):
        raise RequestError(400, "best_of must equal n (atoll returns every choice it makes)", param="best_of")
    p = b.prompt
    prompts: list = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise RequestError(400, f"prompt: 1 to {MAX_PROMPTS} prompts", param="prompt")
    if len(prompts) * b.n > MAX_GENERATIONS:
        raise RequestError(400, f"n: {len(prompts)} prompts x n {b.n} asks for {len(prompts) * b.n} completions; "
                                f"one request makes at most {MAX_GENERATIONS}", param="n")
    for one in prompts:
        if not one or len(one) > MAX_TEXT:
            raise RequestError(400, f"prompt: each prompt must be 1 to {MAX_TEXT} characters (or token ids)",
                               param="prompt")
        if not isinstance(one, str) and any(t < 0 for t in one):
            raise RequestError(400, "prompt: token ids must be >= 0", param="prompt")
    logprobs = b.logprobs is not None
    if logprobs:
        check_logprob_items(len(prompts) * b.n, b.max_tokens or 16, b.logprobs or 0)
    return [GenRequest(prompt=one, max_tokens=b.max_tokens, logprobs=logprobs, top_logprobs=b.logprobs or 0,
                       **_common(b)) for one in prompts]


def _message(i: int, m: Message) -> dict:
    if m.tool_calls:
        raise RequestError(400, f"messages[{i}]: tool calls are not supported", param=f"messages.{i}.tool_calls")
    if isinstance(m.content, list):
        if any(p.type != "text" or p.text is None for p in m.content):
            raise RequestError(400, f"messages[{i}].content: only text parts are supported",
                               param=f"messages.{i}.content")
        content = "".join(p.text for p in m.content)
    else:
        content = m.content or ""
    if len(content) > MAX_TEXT:
        raise RequestError(400, f"messages[{i}].content: at most {MAX_TEXT} characters", param=f"messages.{i}.content")
    out = {"role": "system" if m.role == "developer" else m.role, "content": content}
    if m.name:
        out["name"] = m.name
    return out


def parse_chat(body: Any) -> GenRequest:
    """A ``/v1/chat/completions`` body → GenRequest (the chat is rendered where the model is)."""
    b = _validate(ChatBody, body)
    _refuse_unserved(b)
    for name in ("tools", "tool_choice", "functions"):
        if getattr(b, name):
            raise RequestError(400, f"{name} is not supported", param=name)
    if b.response_format and b.response_format.get("type") != "text":
        raise RequestError(400, "response_format: only {\"type\": \"text\"} is supported", param="response_format")
    if b.top_logprobs and not b.logprobs:
        raise RequestError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if b.max_tokens is not None and b.max_completion_tokens is not None and b.max_tokens != b.max_completion_tokens:
        raise RequestError(400, "max_tokens and max_completion_tokens disagree: give one", param="max_tokens")
    if b.logprobs:
        check_logprob_items(b.n, b.max_completion_tokens or b.max_tokens or MAX_TOKENS, b.top_logprobs or 0)
    messages = tuple(_message(i, m) for i, m in enumerate(b.messages))
    if not any(m["content"] for m in messages):
        raise RequestError(400, "messages: every message is empty", param="messages")
    return GenRequest(messages=messages, max_tokens=b.max_completion_tokens or b.max_tokens,
                      logprobs=b.logprobs, top_logprobs=b.top_logprobs or 0, **_common(b))


def parse_embedding(body: Any) -> EmbedRequest:
    b = _validate(EmbeddingBody, body)
    if b.dimensions is not None:
        raise RequestError(400, "dimensions is not supported: the model's own size is returned", param="dimensions")
    x = b.input
    inputs: list = [x] if isinstance(x, str) or (x and isinstance(x[0], int)) else list(x)
    if not inputs or len(inputs) > MAX_PROMPTS:
        raise RequestError(400, f"input: 1 to {MAX_PROMPTS} inputs", param="input")
    if any(not one or len(one) > MAX_TEXT for one in inputs):
        raise RequestError(400, f"input: each input must be 1 to {MAX_TEXT} characters (or token ids)", param="input")
    return EmbedRequest(b.model, tuple(one if isinstance(one, str) else tuple(one) for one in inputs),
                        b.encoding_format)


# --------------------------------------------------------------------------------- answers
@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str = "stop"
    logprobs: list = field(default_factory=list)


@dataclass
class Completion:
    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(reason: str | None) -> str:
    return reason if reason in FINISH_REASONS else "stop"


class Collector:
    """Folds a stream of events (see the module's docstring) into a :class:`Completion`."""

    def __init__(self, n: int):
        self.choices = [Choice(i, finish_reason="") for i in range(n)]
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._tokens = [0] * n
        self.prompt_tokens = 0

    def add(self, ev) -> None:
        c = self.choices[ev.index]
        if ev.text:
            self._texts[ev.index].append(ev.text)
        c.logprobs.extend(ev.logprobs)
        if ev.finished:
            c.finish_reason = finish_reason(ev.finish_reason)
        self._tokens[ev.index] = max(self._tokens[ev.index], ev.completion_tokens)
        self.prompt_tokens = max(self.prompt_tokens, ev.prompt_tokens)

    @property
    def completion_tokens(self) -> int:
        return sum(self._tokens)

    def result(self) -> Completion:
        for c, parts in zip(self.choices, self._texts):
            c.text = "".join(parts)
            c.finish_reason = c.finish_reason or "stop"
        return Completion(self.choices, self.prompt_tokens, self.completion_tokens)


def _bytes(s: str) -> list[int]:
    return list(s.encode("utf-8", "replace"))


def completion_logprobs(lps, offset: int = 0) -> dict:
    """Logprobs in the completions API's shape (``tokens``, ``token_logprobs``, ...)."""
    tokens = [lp.text for lp in lps]
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{s: v for _, v, s in lp.top} for lp in lps], "text_offset": offsets}


def chat_logprobs(lps) -> dict:
    """Logprobs in the chat API's shape (``content``: token, logprob, bytes, top_logprobs)."""
    return {"content": [{"token": lp.text, "logprob": lp.logprob, "bytes": _bytes(lp.text),
                         "top_logprobs": [{"token": s, "logprob": v, "bytes": _bytes(s)} for _, v, s in lp.top]}
                        for lp in lps], "refusal": None}


def completion_body(rid: str, created: int, req: GenRequest, done: Completion) -> dict:
    if req.chat:
        choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c.logprobs) if req.logprobs else None,
                    "finish_reason": c.finish_reason} for c in done.choices]
    else:
        choices = [{"index": c.index, "text": c.text,
                    "logprobs": completion_logprobs(c.logprobs) if req.logprobs else None,
                    "finish_reason": c.finish_reason} for c in done.choices]
    return {"id": rid, "object": "chat.completion" if req.chat else "text_completion", "created": created,
            "model": req.model, "choices": choices, "usage": done.usage}


def chunk_body(rid: str, created: int, req: GenRequest, ev=None, *, index: int = 0, first: bool = False,
               usage_: dict | None = None) -> dict:
    """One server-sent event's JSON: a choice's ``first`` (chat: the role), an event's text
    (and its end), or, with ``usage_``, the closing usage chunk (no choices)."""
    body: dict = {"id": rid, "object": "chat.completion.chunk" if req.chat else "text_completion",
                  "created": created, "model": req.model}
    if usage_ is not None:
        body["choices"] = []
        body["usage"] = usage_
        return body
    finish = finish_reason(ev.finish_reason) if ev is not None and ev.finished else None
    lps = list(ev.logprobs) if ev is not None else []
    if req.chat:
        delta = {"role": "assistant", "content": ""} if first else ({"content": ev.text} if ev.text else {})
        choice = {"index": index if first else ev.index, "delta": delta,
                  "logprobs": chat_logprobs(lps) if req.logprobs and lps else None, "finish_reason": finish}
    else:
        choice = {"index": ev.index, "text": ev.text,
                  "logprobs": completion_logprobs(lps) if req.logprobs and lps else None, "finish_reason": finish}
    body["choices"] = [choice]
    if req.include_usage:
        body["usage"] = None
    return body


def embeddings_body(req: EmbedRequest, vectors: list[list[float]], prompt_tokens: int) -> dict:
    def enc(v: list[float]):
        if req.encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v
    return {"object": "list", "model": req.model,
            "data": [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 408: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code}}
