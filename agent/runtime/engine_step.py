"""The body of one engine step and of prompt scoring (split from engine.py to keep modules small).

A step: take new requests and cancellations from the inbox, plan (scheduler), run the model on
the planned rows, sample one token for each request whose prompt is done, then stream deltas
and retire finished requests (their KV blocks and adapter references are returned at once).
"""

from __future__ import annotations

import time

import torch

from atoll.core.errors import InvalidArgument, ResourceExhausted

from .request import Delta, Request
from .sampling import sample


def _drain_inbox(engine) -> None:
    sch = engine.scheduler
    with engine._cv:
        new, engine._inbox = engine._inbox, []
        cancels, engine._cancels = engine._cancels, set()
    for r in new:
        sch.add(r)
    if cancels:
        for r in [r for r in sch.waiting if r.request_id in cancels]:
            sch.waiting.remove(r)
            engine._finish(r, "cancelled")
        for r in [r for r in sch.running if r.request_id in cancels]:
            engine._finish(r, "cancelled")


def run_step(engine) -> int:
    _drain_inbox(engine)
    sch, m = engine.scheduler, engine.metrics
    plan = sch.schedule(m)
    for r, exc in plan.failed:
        engine._finish(r, "error", error=exc)
    if plan.empty:
        return 0
    batch = sch.build(plan.work)
    with torch.inference_mode():
        logits = engine.model.forward(batch, engine.kv, engine.store.layers, engine.store.scales)
    m.steps += 1
    sampled_reqs: list[Request] = []
    for r, n in plan.work:
        r.num_computed += n
        if not r.in_prefill:
            sampled_reqs.append(r)
    if not sampled_reqs:
        return batch.input_ids.numel()
    with torch.inference_mode():
        toks = sample(logits, [r.params for r in sampled_reqs], [r.generator for r in sampled_reqs])
    now = time.perf_counter()
    eos = set(engine.cfg.eos_token_ids)
    for r, tok in zip(sampled_reqs, toks):
        if r.first_token_at is None:
            r.first_token_at = now
            r.handle.ttft = now - r.arrival
            m.observe_ttft(now - r.arrival)
        r.output_ids.append(tok)
        p = r.params
        reason = None
        if tok in p.stop_token_ids or (tok in eos and not p.ignore_eos):
            reason = "stop"
        elif len(r.output_ids) >= p.max_tokens or r.num_tokens >= engine.max_model_len:
            reason = "length"
        text, hit = r.decoder.update(r.output_ids, final=reason is not None)
        if hit:
            reason = "stop"
        if reason is None:
            r.handle._push(Delta([tok], text, prompt_tokens=len(r.prompt_ids), completion_tokens=len(r.output_ids)))
        else:
            engine._finish(r, reason, new=[tok], text=text)
    m.observe_tokens(len(toks))
    return batch.input_ids.numel()


def run_prompts(engine, prompts, adapters, *, want: str):
    """Forward whole prompts once (no sampling): per-position logits or mean-pooled hidden states."""
    prompts = [engine.encode_prompt(p) for p in prompts]
    adapters = list(adapters) if adapters is not None else [None] * len(prompts)
    if len(adapters) != len(prompts):
        raise InvalidArgument(f"{len(prompts)} prompts but {len(adapters)} adapters")
    if not prompts:
        return [] if want == "logits" else torch.zeros(0, engine.cfg.hidden_size)
    store, kv = engine.store, engine.kv
    held: list[str] = []
    reqs: list[Request] = []
    try:
        slots = []
        for a in adapters:
            if a is None:
                slots.append(-1)
                continue
            deadline = time.monotonic() + 60.0
            while (s := store.acquire(a)) is None:       # raises NotFound for unknown names
                if time.monotonic() > deadline:
                    raise ResourceExhausted(f"adapter {a!r} could not get a device slot within 60 s")
                store.wait_change(0.01)
            held.append(a)
            slots.append(s)
        with engine._step_lock:
            for ids, s in zip(prompts, slots):
                kv.check_fits_ever(len(ids))
                blocks = kv.allocate(len(ids))
                if blocks is None:
                    raise ResourceExhausted("the KV cache is full with running requests",
                                            hint="retry when they finish, or give the engine more kv_cache_tokens")
                r = Request("score", ids, None, None, None, None, blocks=blocks, slot=s,
                            table=torch.tensor(blocks, dtype=torch.long, device=engine.device))
                reqs.append(r)
            batch = engine.scheduler.build([(r, len(r.prompt_ids)) for r in reqs], all_logits=True)
            with torch.inference_mode():
                logits, hidden = engine.model.forward(batch, kv, store.layers, store.scales, return_hidden=True)
    finally:
        for r in reqs:
            kv.free(r.blocks)
        for a in held:
            store.release(a)
    if want == "logits":
        return list(torch.split(logits, [len(p) for p in prompts]))
    return torch.stack([h.float().mean(0) for h in torch.split(hidden, [len(p) for p in prompts])])
