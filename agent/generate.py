"""One generation on this host's engine, as the Worker service and the agent's OpenAI door
serve it: :func:`stream_choices`.

The request is a text prompt, token ids, or a chat (a list of ``{"role", "content"}``
messages, rendered with the model's own chat template: never as ``role: content`` lines). It
runs as ``n`` independent choices (``Engine.submit_choices``: choice i has seed ``seed + i``),
and comes back as one stream of :class:`~atoll.wire.worker.Delta` values, each naming its
choice, with the text of every token whose log-probability was asked for. Leaving the stream
early (the caller went away) cancels the choices still running.

Tokenizing is done off the event loop (:func:`prompt_ids`): a prompt of a million characters
takes about 2 s to encode on a 2-core host, and the loop serves every other request, heartbeat
and stream of the agent meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Mapping, Sequence

from atoll.core.errors import FailedPrecondition, InvalidArgument
from atoll.core.pools import Pool
from atoll.wire.worker import Delta, TokenLogprob


def chat_ids(engine, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The chat's prompt ids under the model's own template. A model without a template is a
    property of the request (send a prompt instead), so it is an invalid argument here."""
    try:
        return engine.apply_chat_template([dict(m) for m in messages], tokenize=True)
    except FailedPrecondition as exc:
        raise InvalidArgument(exc.message, hint=exc.hint) from None


# Encoding runs in the tokenizers library without the GIL; two threads keep a flood of long
# prompts from taking more than two cores' worth of encoding or the loop's default executor.
_ENCODE = Pool("encode", 2)


async def prompt_ids(engine, *, prompt=None, messages: Sequence[Mapping[str, str]] | None = None) -> list[int]:
    """The prompt's token ids, encoded (text) or rendered and encoded (a chat) on a worker thread,
    so that the event loop keeps serving while a long prompt is tokenized. Bad input raises here,
    as ``Engine.encode_prompt`` and :func:`chat_ids` raise it."""
    if messages is not None:
        return await _ENCODE.run(chat_ids, engine, messages)
    if isinstance(prompt, str):
        return await _ENCODE.run(engine.encode_prompt, prompt)
    return engine.encode_prompt(prompt)       # ids: checked against the vocabulary, no encoding


def _delta(engine, index: int, d) -> Delta:
    lps = ()
    if d.logprobs:
        text = engine.token_text
        lps = tuple(TokenLogprob(lp.token_id, float(lp.logprob), text(lp.token_id),
                                 tuple((t, float(v), text(t)) for t, v in lp.top)) for lp in d.logprobs)
    return Delta(d.text, d.prompt_tokens, d.completion_tokens, d.finished, index, d.finish_reason or "",
                 tuple(d.token_ids), lps)


async def stream_choices(engine, *, prompt=None, messages: Sequence[Mapping[str, str]] | None = None,
                         adapter: str | None, params, request_id: str | None = None,
                         owner: str = "") -> AsyncIterator[Delta]:
    """Run ``params.n`` choices of ``prompt`` (text or ids) or ``messages`` and yield their deltas
    as they come. Bad input raises before anything is queued (see ``Engine.submit``); ``owner``
    (who asks) takes its turn in the engine's admission."""
    source = await prompt_ids(engine, prompt=prompt, messages=messages)
    if params.n == 1:            # the common case: no merging, no extra task
        handle = engine.submit(source, adapter, params, request_id, owner=owner)
        try:
            async for d in handle:
                yield _delta(engine, 0, d)
        finally:
            if not handle.finished:
                engine.cancel(handle.request_id)
        return
    handles = engine.submit_choices(source, adapter, params, request_id, owner=owner)
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h) -> None:
        try:
            async for d in h:
                queue.put_nowait((i, d, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait((i, None, exc))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, d, exc = await queue.get()
            if exc is not None:
                raise exc
            if d.finished:
                left -= 1
            yield _delta(engine, i, d)
    finally:
        for t in tasks:
            t.cancel()
        for h in handles:
            if not h.finished:
                engine.cancel(h.request_id)
