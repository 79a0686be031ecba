"""A request's state inside the engine, and the handle its caller streams from.

The engine's step thread pushes :class:`Delta` events into a :class:`RequestHandle`; callers
consume them from any thread (``for d in handle``), from asyncio (``async for d in handle``,
bridged with ``loop.call_soon_threadsafe`` so the event loop never blocks), or wait for the
whole :class:`GenerationOutput` (``handle.result()``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import torch

from atoll.core.errors import DeadlineExceeded

from .sampling import SamplingParams, TokenLogprob
from .tokenizer import IncrementalDecoder


@dataclass
class Delta:
    token_ids: list[int]
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None      # length | stop | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    logprobs: list[TokenLogprob] | None = None   # one per token in token_ids, when asked


@dataclass
class GenerationOutput:
    request_id: str
    token_ids: list[int]                  # the generated ids only
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    adapter: str | None = None
    time_to_first_token_s: float | None = None
    logprobs: list[TokenLogprob] | None = None   # one per generated token, when asked


class RequestHandle:
    def __init__(self, request_id: str, prompt_tokens: int, adapter: str | None, cancel_fn):
        self.request_id, self.adapter = request_id, adapter
        self.prompt_tokens = prompt_tokens
        self._cancel_fn = cancel_fn
        self._events: list[Delta] = []
        self._cv = threading.Condition()
        self._async: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = []
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.ttft: float | None = None
        self.logprobs: list[TokenLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _push(self, d: Delta) -> None:
        with self._cv:
            self.token_ids.extend(d.token_ids)
            self.text += d.text
            if d.logprobs is not None:
                self.logprobs = (self.logprobs or []) + d.logprobs
            if d.finished:
                self.finish_reason, self.error = d.finish_reason, d.error
            self._events.append(d)
            self._cv.notify_all()
            subs = list(self._async)
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(q.put_nowait, d)
            except RuntimeError:   # the caller's loop is closed: it no longer listens
                pass

    def cancel(self) -> bool:
        return self._cancel_fn(self.request_id)

    def __iter__(self):
        i = 0
        while True:
            with self._cv:
                while i >= len(self._events):
                    self._cv.wait()
                d = self._events[i]
            i += 1
            if d.error is not None:
                raise d.error
            yield d
            if d.finished:
                return

    async def __aiter__(self):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self._cv:
            for d in self._events:
                q.put_nowait(d)
            self._async.append((loop, q))
        try:
            while True:
                d = await q.get()
                if d.error is not None:
                    raise d.error
                yield d
                if d.finished:
                    return
        finally:
            with self._cv:
                self._async = [s for s in self._async if s[1] is not q]

    def result(self, timeout: float | None = None) -> GenerationOutput:
        with self._cv:
            if not self._cv.wait_for(lambda: self.finish_reason is not None, timeout):
                raise DeadlineExceeded(f"request {self.request_id} not finished after {timeout} s")
        if self.error is not None:
            raise self.error
        return GenerationOutput(self.request_id, list(self.token_ids), self.text, self.finish_reason,
                                self.prompt_tokens, len(self.token_ids), self.adapter, self.ttft,
                                list(self.logprobs) if self.logprobs is not None else None)


@dataclass(eq=False)          # identity semantics: requests live in lists and are removed by identity
class Request:
    request_id: str
    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    handle: RequestHandle
    decoder: IncrementalDecoder
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0                 # tokens whose K/V are in the cache
    blocks: list[int] = field(default_factory=list)
    table: torch.Tensor | None = None     # [num_blocks] long on the device
    slot: int = -1                        # adapter slot, -1: base model
    holds_adapter: bool = False
    lookup_counted: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    owner: str = ""                       # who asked (a calling node; "" this host): admission takes turns

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def reserve_tokens(self) -> int:
        return len(self.prompt_ids) + self.params.max_tokens
