"""The OpenAI-compatible doors on ``Entry.Invoke``: one backend for the coordinator's door and
the agents' (:class:`EntryDoorBackend`, a :class:`~atoll.core.openai_http.Backend`).

Each OpenAI request becomes one ``Entry.Invoke`` (:func:`invocation`): the input's text (the
prompt, or the chat's last user message), the chat itself (the entry stages send it, rendered
with the serving model's own chat template), and the request's settings for the last stage
(:class:`~atoll.wire.dataplane.Sink`: ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n``,
``logprobs``/``top_logprobs``; its ``stop`` strings are added to the stage's). ``kind`` names the
endpoint (``llm`` or ``embedding``), so the entry refuses a workflow that ends in the other kind
of stage, and applies OpenAI's defaults to a ``base:adapter`` model (temperature 1;
``max_tokens`` 16 for completions, up to the end of the answer for chat).

The entry's answer messages come back as the door's events: streamed deltas of every choice,
then each choice's end with its finish reason and token counts; a whole answer as a
:class:`~atoll.core.openai_api.Completion`. How the invocation reaches an entry is the caller's
``invoke``: in process on an agent, forwarded to an agent's entry by the coordinator.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from atoll.core.errors import InvalidArgument, Unavailable
from atoll.core.openai_api import Choice, Completion, EmbedRequest, GenRequest
from atoll.wire.dataplane import Answer, Invocation, Sink, answer_from_pb
from atoll.wire.worker import Delta

SEED_MOD = 2 ** 64          # the Worker's seed is a uint64; OpenAI's may be negative
TIMEOUT = 300.0

# invoke(invocation, caller) -> the entry's answer messages (InvokeResponse)
Invoke = Callable[[Invocation, Any], AsyncIterator]


def invocation(model: str, text: str, *, kind: str, stream: bool, timeout: float, req: GenRequest | None = None
               ) -> Invocation:
    """The ``Entry.Invoke`` of one OpenAI request (``req`` None: an embedding of ``text``). A
    prompt of token ids travels as such (the entry stages must take their input unchanged)."""
    if req is None:
        return Invocation(model, json.dumps({"text": text}), False, timeout, uuid.uuid4().hex, kind=kind)
    sink = Sink(req.max_tokens or 0, req.temperature, req.top_p, None if req.seed is None else req.seed % SEED_MOD,
                tuple(req.stop), req.n, req.logprobs or req.top_logprobs > 0, req.top_logprobs)
    ids = () if req.prompt is None or isinstance(req.prompt, str) else tuple(req.prompt)
    return Invocation(model, "" if ids else json.dumps({"text": text}), stream, timeout, uuid.uuid4().hex, kind,
                      sink=sink, messages=tuple(dict(m) for m in req.messages) if req.messages else None,
                      prompt_ids=ids)


def text_of(req: GenRequest) -> str:
    """The request's input text ("" for token ids)."""
    if req.prompt is not None and not isinstance(req.prompt, str):
        if not req.prompt:
            raise InvalidArgument("the prompt is empty")
        return ""
    if not req.input_text.strip():
        raise InvalidArgument("the prompt is empty")
    return req.input_text


def choice_ends(ans: Answer) -> list[Delta]:
    """The end of every choice of a final answer, as events: finish reason and token counts."""
    pt = ans.stages[-1].prompt_tokens if ans.stages else 0
    return [Delta("", pt, c.completion_tokens, True, c.index, c.finish_reason) for c in ans.choices]


class EntryDoorBackend:
    """The door's backend: every request is an ``Entry.Invoke`` sent by ``invoke``; ``models(caller)``
    lists what the caller may name."""

    def __init__(self, invoke: Invoke, models: Callable[[Any], Awaitable[list[dict]]], *, timeout: float = TIMEOUT):
        self._invoke, self._models, self.timeout = invoke, models, timeout

    async def models(self, caller) -> list[dict]:
        return await self._models(caller)

    async def _answers(self, inv: Invocation, caller) -> AsyncIterator[Answer]:
        async for msg in self._invoke(inv, caller):
            yield answer_from_pb(msg)

    async def _done(self, inv: Invocation, caller) -> Answer:
        """The final answer of an unstreamed invocation."""
        done = None
        async for ans in self._answers(inv, caller):
            done = ans if ans.done else done
        if done is None:
            raise Unavailable("the entry closed the call without an answer")
        return done

    async def complete(self, req: GenRequest, caller) -> Completion:
        ans = await self._done(invocation(req.model, text_of(req), kind="llm", stream=False, timeout=self.timeout,
                                          req=req), caller)
        pt = ans.stages[-1].prompt_tokens if ans.stages else 0
        return Completion([Choice(c.index, c.text, c.finish_reason or "stop", list(c.logprobs)) for c in ans.choices],
                          pt, sum(c.completion_tokens for c in ans.choices))

    async def stream(self, req: GenRequest, caller) -> AsyncIterator[Delta]:
        """The sink's deltas as the entry sends them, then every choice's end."""
        inv = invocation(req.model, text_of(req), kind="llm", stream=True, timeout=self.timeout, req=req)
        async for ans in self._answers(inv, caller):
            if not ans.done:
                yield ans.delta
            else:
                for d in choice_ends(ans):
                    yield d

    async def _embed_one(self, model: str, text: str, caller) -> tuple[list[float], int]:
        ans = await self._done(invocation(model, text, kind="embedding", stream=False, timeout=self.timeout), caller)
        return ans.output.get("embedding", []), ans.stages[-1].prompt_tokens if ans.stages else 0

    async def embed(self, req: EmbedRequest, caller) -> tuple[list[list[float]], int]:
        if any(not isinstance(x, str) for x in req.inputs):
            raise InvalidArgument("an entry embeds text, not token ids", hint="send strings")
        done = await asyncio.gather(*(self._embed_one(req.model, x, caller) for x in req.inputs))
        return [v for v, _ in done], sum(t for _, t in done)
