"""The OpenAI-compatible HTTP door on an agent: the same data plane as ``Entry.Invoke``.

The HTTP protocol is :mod:`atoll.core.openai_http` (the door the coordinator mounts too); this
module is its backend on an agent (:class:`EntryBackend`) and its caller check. ``model`` names
a workflow the caller may see, ``base:adapter`` (one adapter on any ready replica holding it) or
``base`` (the bare base model). ``Authorization: Bearer <api key>`` is checked against the key
set the coordinator distributes (:class:`~.entry.Keys`), the route against the authorization
table (surface ``http:agent``), and tenants are kept apart exactly as at the coordinator's door:
a missing or bad key is 401 (``invalid_api_key``), another tenant's workflow or adapter 404.

What ``Entry.Invoke`` carries is what this door serves: a text prompt (a chat's last user
message fills the entry stages' templates), ``max_tokens`` and ``temperature`` for the last
stage, streaming, and embeddings of text. ``n`` > 1, ``logprobs``, ``top_p``, ``seed``,
``stop`` and token-id prompts are refused with a clear 400 (the coordinator's door runs them).
"""

from __future__ import annotations

import time
from typing import AsyncIterator

from atoll.agent.dataplane.chain import Request
from atoll.agent.dataplane.entry import EntryService, Keys
from atoll.agent.dataplane.trace import start_span
from atoll.core import access
from atoll.core.apikeys import Identity
from atoll.core.errors import InvalidArgument, Unauthenticated
from atoll.core.http_server import HttpLimits
from atoll.core.openai_api import Collector, Completion, EmbedRequest, GenRequest
from atoll.core.openai_http import OpenAIDoor
from atoll.wire.dataplane import answer_from_pb
from atoll.wire.worker import Delta

TIMEOUT = 300.0
_HINT = "leave it out here, or call the coordinator's OpenAI door"


def door_identity(keys: Keys, authorization: str) -> Identity | None:
    """Who calls the agent's door: None while the fleet enforces no key (or for an admin key, which
    sees every tenant), else the key's identity; Unauthenticated for a missing or bad key."""
    if not keys.enabled():
        return None
    if not authorization.startswith("Bearer "):
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    ident = keys.check(authorization[7:].strip())
    return None if ident.is_admin else ident


def door_authorize(route: str, caller: Identity | None) -> None:
    """The authorization table decides (``atoll.core.access``, surface ``http:agent``)."""
    method, path = route.split(" ", 1)
    access.decide_http("agent", method, path, access.ADMIN if caller is None else access.USER)


def _refuse_unserved(req: GenRequest) -> None:
    for name, given in (("n", req.n != 1), ("logprobs", req.logprobs or req.top_logprobs > 0),
                        ("top_p", req.top_p is not None and req.top_p != 1.0), ("seed", req.seed is not None),
                        ("stop", bool(req.stop))):
        if given:
            raise InvalidArgument(f"{name} is not carried by an agent's entry yet", hint=_HINT)
    if req.prompt is not None and not isinstance(req.prompt, str):
        raise InvalidArgument("an agent's entry takes text prompts, not token ids", hint="send the prompt as a string")
    if not req.input_text.strip():
        raise InvalidArgument("the prompt is empty")


class EntryBackend:
    """The door's backend on an agent: every request runs through this agent's entry."""

    def __init__(self, entry: EntryService, timeout: float = TIMEOUT):
        self.entry, self.timeout = entry, timeout

    async def models(self, caller: Identity | None) -> list[dict]:
        return [{"id": m, "created": 0, "owned_by": "atoll"} for m in self.entry.resolver.models(caller)]

    def _answers(self, model: str, text: str, caller: Identity | None, *, stream: bool, kind: str,
                 max_tokens: int | None = None, temperature: float | None = None):
        cr = self.entry.resolver.resolve(model, caller)
        sink = cr.route.stages[-1]
        if sink.kind != kind:
            use = "/v1/embeddings" if sink.kind == "embedding" else "/v1/completions or /v1/chat/completions"
            raise InvalidArgument(f"workflow {model!r} ends in an {sink.kind} stage: call {use}")
        req = Request(cr.route.workflow, text, time.monotonic() + self.timeout, start_span((), "entry-http"),
                      stream, max_tokens or 0, temperature, caller.tenant if caller is not None else "")
        return self.entry.serve(cr, req, caller)

    async def _deltas(self, req: GenRequest, caller: Identity | None, stream: bool) -> AsyncIterator[Delta]:
        """The answer as Worker-style deltas: streamed text, then the end with the last stage's
        token counts (and, when not streamed, the whole text)."""
        _refuse_unserved(req)
        async for msg in self._answers(req.model, req.input_text, caller, stream=stream, kind="llm",
                                       max_tokens=req.max_tokens, temperature=req.temperature):
            text, done, output, stages = answer_from_pb(msg)
            if done:
                last = stages[-1] if stages else None
                yield Delta("" if stream else (output or {}).get("text", ""), last.prompt_tokens if last else 0,
                            last.completion_tokens if last else 0, True, finish_reason="stop")
            elif text:
                yield Delta(text, 0, 0, False)

    def stream(self, req: GenRequest, caller: Identity | None) -> AsyncIterator[Delta]:
        return self._deltas(req, caller, True)

    async def complete(self, req: GenRequest, caller: Identity | None) -> Completion:
        out = Collector(1)
        async for ev in self._deltas(req, caller, False):
            out.add(ev)
        return out.result()

    async def embed(self, req: EmbedRequest, caller: Identity | None) -> tuple[list[list[float]], int]:
        vectors, tokens = [], 0
        for x in req.inputs:
            if not isinstance(x, str):
                raise InvalidArgument("an agent's entry embeds text, not token ids", hint="send strings")
            async for msg in self._answers(req.model, x, caller, stream=False, kind="embedding"):
                _, done, output, stages = answer_from_pb(msg)
                if done:
                    vectors.append((output or {}).get("embedding", []))
                    tokens += stages[-1].prompt_tokens if stages else 0
        return vectors, tokens


def make_entry_door(entry: EntryService, *, host: str, port: int, limits: HttpLimits = HttpLimits()) -> OpenAIDoor:
    """The agent's door on ``host:port`` (not started)."""
    backend = EntryBackend(entry)
    return OpenAIDoor(backend, lambda authorization: door_identity(entry.keys, authorization),
                      authorize=door_authorize, host=host, port=port, limits=limits,
                      request_timeout=backend.timeout)
