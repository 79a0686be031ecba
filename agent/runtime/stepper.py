"""Model steps: the step thread's side of the engine.

A step takes new requests and cancellations from the :class:`~.inbox.Inbox`, plans (the
:class:`~.scheduler.Scheduler`), runs the model on the planned rows, samples one token for each
request whose prompt is done, then streams deltas and retires finished requests (their KV blocks
and adapter references are returned at once). Steps run on one thread at a time (``lock``):
the engine's background loop, or the caller of ``Engine.generate()`` when no loop runs.

Prompt scoring (:meth:`StepRunner.score`) forwards whole prompts once, without sampling, under
the same lock.
"""

from __future__ import annotations

import threading
import time

import torch

from atoll.core.errors import ResourceExhausted

from .adapters import AdapterStore
from .config import ModelConfig
from .inbox import Inbox
from .kv_cache import PagedKVCache
from .metrics import EngineMetrics
from .request import Delta, Request
from .sampling import sample, token_logprobs
from .scheduler import Scheduler


class StepRunner:
    def __init__(self, *, model, kv: PagedKVCache, store: AdapterStore, scheduler: Scheduler,
                 metrics: EngineMetrics, inbox: Inbox, cfg: ModelConfig, max_model_len: int):
        self.model, self.kv, self.store, self.scheduler = model, kv, store, scheduler
        self.metrics, self.inbox, self.cfg = metrics, inbox, cfg
        self.max_model_len = max_model_len
        self.lock = threading.RLock()

    def has_work(self) -> bool:
        return self.inbox.has_pending() or bool(self.scheduler.running or self.scheduler.waiting)

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> int:
        """One scheduling + model step. Returns the number of tokens computed (0: nothing ran)."""
        with self.lock:
            self._admit()
            sch, m = self.scheduler, self.metrics
            plan = sch.schedule(m)
            for r, exc in plan.failed:
                self.finish(r, "error", error=exc)
            if plan.empty:
                return 0
            batch = sch.build(plan.work)
            with torch.inference_mode():
                logits = self.model.forward(batch, self.kv, self.store.layers, self.store.scales)
            m.steps += 1
            sampled = self._advance(plan.work)
            if sampled:
                with torch.inference_mode():
                    toks = sample(logits, [r.params for r in sampled], [r.generator for r in sampled])
                    lps = self._logprobs(logits, sampled, toks)
                self._emit(sampled, toks, lps)
            return batch.input_ids.numel()

    def _admit(self) -> None:
        """New requests to the scheduler; cancelled ones (queued or running) finished."""
        new, cancels = self.inbox.take()
        sch = self.scheduler
        for r in new:
            sch.add(r)
        if cancels:
            for r in [r for r in sch.waiting if r.request_id in cancels]:
                sch.waiting.remove(r)
                self.finish(r, "cancelled")
            for r in [r for r in sch.running if r.request_id in cancels]:
                self.finish(r, "cancelled")

    @staticmethod
    def _advance(work: list[tuple[Request, int]]) -> list[Request]:
        """Count the computed tokens; the requests whose prompt is done sample a token."""
        sampled = []
        for r, n in work:
            r.num_computed += n
            if not r.in_prefill:
                sampled.append(r)
        return sampled

    @staticmethod
    def _logprobs(logits: torch.Tensor, reqs: list[Request], toks: list[int]) -> list:
        """Per sampled request: [TokenLogprob] when it asked for log-probabilities, else None."""
        rows = [i for i, r in enumerate(reqs) if r.params.wants_logprobs]
        out: list = [None] * len(reqs)
        if rows:
            got = token_logprobs(logits[rows], [toks[i] for i in rows], [reqs[i].params.top_logprobs for i in rows])
            for i, lp in zip(rows, got):
                out[i] = [lp]
        return out

    def _emit(self, reqs: list[Request], toks: list[int], lps: list) -> None:
        """Append each sampled token, stream it, finish requests that hit a stop or a length."""
        now = time.perf_counter()
        m = self.metrics
        eos = set(self.cfg.eos_token_ids)
        for r, tok, lp in zip(reqs, toks, lps):
            if r.first_token_at is None:
                r.first_token_at = now
                r.handle.ttft = now - r.arrival
                m.observe_ttft(now - r.arrival)
            r.output_ids.append(tok)
            p = r.params
            reason = None
            if tok in p.stop_token_ids or (tok in eos and not p.ignore_eos):
                reason = "stop"
            elif len(r.output_ids) >= p.max_tokens or r.num_tokens >= self.max_model_len:
                reason = "length"
            text, hit = r.decoder.update(r.output_ids, final=reason is not None)
            if hit:
                reason = "stop"
            if reason is None:
                r.handle._push(Delta([tok], text, prompt_tokens=len(r.prompt_ids),
                                     completion_tokens=len(r.output_ids), logprobs=lp))
            else:
                self.finish(r, reason, new=[tok], text=text, logprobs=lp)
        m.observe_tokens(len(toks))

    # ---- retiring requests -------------------------------------------------------------------
    def finish(self, r: Request, reason: str, *, error: BaseException | None = None, new: list[int] = (),
               text: str = "", logprobs: list | None = None) -> None:
        """Return the request's KV blocks and adapter, forget its id, push its last delta."""
        self.scheduler.release(r)
        self.inbox.forget(r.request_id)
        now = time.perf_counter()
        if r.first_token_at is not None and len(r.output_ids) > 1:
            self.metrics.observe_tpot((now - r.first_token_at) / (len(r.output_ids) - 1))
        self.metrics.requests_finished += 1
        r.handle._push(Delta(list(new), text, True, reason, len(r.prompt_ids), len(r.output_ids), error, logprobs))

    def fail_scheduled(self, exc: Exception) -> int:
        """Finish every running and waiting request with ``exc``; returns how many."""
        with self.lock:
            reqs = list(self.scheduler.running) + list(self.scheduler.waiting)
            for r in reqs:
                self.finish(r, "error", error=exc)
            self.scheduler.waiting.clear()
            return len(reqs)

    def fail_outstanding(self, exc: Exception) -> int:
        """Finish everything: queued in the inbox, waiting and running. Returns how many."""
        with self.lock:
            new, _ = self.inbox.take()
            for r in new:
                self.finish(r, "error", error=exc)
            return len(new) + self.fail_scheduled(exc)

    # ---- prompt scoring ----------------------------------------------------------------------
    def score(self, prompts: list[list[int]], adapters: list[str | None]):
        """Forward whole prompts once (no sampling). Returns (logits [sum len, vocab] fp32 for
        every position, final hidden states [sum len, hidden])."""
        store, kv = self.store, self.kv
        held: list[str] = []
        reqs: list[Request] = []
        try:
            slots = []
            for a in adapters:
                if a is None:
                    slots.append(-1)
                    continue
                slots.append(self._acquire_waiting(a))
                held.append(a)
            with self.lock:
                for ids, s in zip(prompts, slots):
                    reqs.append(self._score_request(ids, s))
                batch = self.scheduler.build([(r, len(r.prompt_ids)) for r in reqs], all_logits=True)
                with torch.inference_mode():
                    return self.model.forward(batch, kv, store.layers, store.scales, return_hidden=True)
        finally:
            for r in reqs:
                kv.free(r.blocks)
            for a in held:
                store.release(a)

    def _acquire_waiting(self, adapter: str, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (s := self.store.acquire(adapter)) is None:       # raises NotFound for unknown names
            if time.monotonic() > deadline:
                raise ResourceExhausted(f"adapter {adapter!r} could not get a device slot within {timeout:.0f} s")
            self.store.wait_change(0.01)
        return s

    def _score_request(self, ids: list[int], slot: int) -> Request:
        kv = self.kv
        kv.check_fits_ever(len(ids))
        blocks = kv.allocate(len(ids))
        if blocks is None:
            raise ResourceExhausted("the KV cache is full with running requests",
                                    hint="retry when they finish, or give the engine more kv_cache_tokens")
        return Request("score", ids, None, None, None, None, blocks=blocks, slot=slot,
                       table=torch.tensor(blocks, dtype=torch.long, device=self.scheduler.device))
