"""An OpenAI door served in-process on loopback, in an event loop of its own thread, so tests
call it with the official (blocking) client; and a scripted backend that records what it got."""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from atoll.core.http_server import HttpLimits
from atoll.core.openai_api import Collector
from atoll.core.openai_http import OpenAIDoor
from atoll.wire.worker import Delta, TokenLogprob


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run(coro)`` runs a coroutine there."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def serving(backend, authenticate=lambda authorization: None, **door_kw):
    """Yield a started door (its ``port``) for ``backend``; stop it afterwards."""
    lt = LoopThread()

    async def make():
        door = OpenAIDoor(backend, authenticate, **door_kw)
        await door.start()
        return door

    door = lt.run(make())
    door.loop_thread = lt
    try:
        yield door
    finally:
        lt.run(door.stop())
        lt.close()


WORDS = ["Hello", " from", " the", " scripted", " model", "."]


class Scripted:
    """A backend whose "model" answers with WORDS (choice i prefixes each word with i), one
    event per word; stops early at a stop string, reports logprobs when asked. ``requests``
    records every GenRequest; ``gate`` (an asyncio.Event set from the loop) holds answers back."""

    def __init__(self):
        self.requests, self.cancelled, self.gate = [], 0, None

    async def models(self, caller):
        return [{"id": "scripted", "created": 1, "owned_by": "tests"}]

    async def stream(self, req, caller):
        self.requests.append(req)
        if req.model != "scripted":
            from atoll.core.errors import NotFound
            raise NotFound(f"no model {req.model}")
        limit = req.max_tokens or len(WORDS)
        try:
            for i in range(req.n):
                for k, w in enumerate(WORDS[:limit]):
                    if self.gate is not None:
                        await self.gate.wait()
                    text = (f"{i}:" if req.n > 1 else "") + w
                    stop = any(s in text for s in req.stop)
                    done = stop or k == min(limit, len(WORDS)) - 1
                    reason = "stop" if stop or limit >= len(WORDS) else "length"
                    lps = ((TokenLogprob(k, -0.25 * (k + 1), text,
                                         tuple((k + j, -0.25 * (k + 1) - j, f"t{j}") for j in range(req.top_logprobs))),)
                           if req.logprobs else ())
                    yield Delta("" if stop else text, 5, k + 1, done, i, reason if done else "", (k,), lps)
                    if done:
                        break
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def complete(self, req, caller):
        out = Collector(req.n)
        async for ev in self.stream(req, caller):
            out.add(ev)
        return out.result()

    async def embed(self, req, caller):
        return [[float(len(x)), 0.5, -1.0] for x in req.inputs], sum(len(x) for x in req.inputs)


def tight_limits(**kw) -> HttpLimits:
    return HttpLimits(**{"header_timeout": 1.0, "keep_alive": 1.0, "shutdown_grace": 1.0, **kw})
