"""Engine behaviour: batch invariance, paged-KV admission, chunked prefill, sampling, stop
conditions, streaming (threads and asyncio), cancellation, embeddings, input checks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from atoll.agent.runtime import Engine, SamplingParams
from atoll.core.errors import InvalidArgument, NotFound, ResourceExhausted

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def _prompts(n, lo=3, hi=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(3, 256, (ln,), generator=g).tolist() for ln in lens]


def test_batch_invariance(engine):
    """A request's tokens do not depend on its batch-mates, their adapters, or its arrival time."""
    prompts = _prompts(7, seed=1)
    adapters = ["a1", None, "a2", "a3", "a1", None, "a4"]
    alone = [engine.generate([p], adapters=[a], sampling=GREEDY)[0].token_ids for p, a in zip(prompts, adapters)]
    together = [o.token_ids for o in engine.generate(prompts, adapters=adapters, sampling=GREEDY)]
    assert together == alone
    rev = [o.token_ids for o in engine.generate(prompts[::-1], adapters=adapters[::-1], sampling=GREEDY)]
    assert rev[::-1] == alone
    # staggered arrival: requests join a running batch between steps
    handles = []
    for p, a in zip(prompts, adapters):
        handles.append(engine.submit(p, a, GREEDY, stream_text=False))
        engine.step()
    while not all(h.finished for h in handles):
        if not engine.step():
            engine.store.wait_change(0.005)
    assert [h.result().token_ids for h in handles] == alone


def test_chunked_prefill_and_small_token_budget_match(hf_model_dir, peft_adapters, engine):
    """A token budget smaller than the prompts splits prefills across steps mixed with decodes;
    the tokens are the same."""
    prompts = _prompts(5, lo=20, hi=40, seed=2)
    adapters = ["a1", None, "a3", "a2", None]
    want = [o.token_ids for o in engine.generate(prompts, adapters=adapters, sampling=GREEDY)]
    eng = Engine(hf_model_dir, lora_backend="torch", max_lora_rank=16, max_num_batched_tokens=7,
                 kv_cache_tokens=1024)
    try:
        for n in ("a1", "a2", "a3"):
            eng.add_adapter(n, peft_adapters[n])
        outs = eng.generate(prompts, adapters=adapters, sampling=GREEDY)
        assert [o.token_ids for o in outs] == want
        assert eng.stats()["steps"] > 5 * 12 // 2
    finally:
        eng.close()


def test_kv_admission_waits_or_refuses(hf_model_dir):
    """A tiny paged cache: requests that cannot fit now wait; one that can never fit is refused."""
    eng = Engine(hf_model_dir, lora_backend="torch", kv_cache_tokens=64, block_size=8)
    try:
        assert eng.kv.num_blocks == 8
        with pytest.raises(ResourceExhausted, match="cache holds only 64 tokens"):
            eng.submit(list(range(3, 63)), sampling=SamplingParams(max_tokens=8))
        prompts = _prompts(6, lo=10, hi=14, seed=3)          # each reserves 3 blocks: 2 fit at a time
        sp = SamplingParams(max_tokens=10, ignore_eos=True)
        handles = [eng.submit(p, None, sp) for p in prompts]
        peak = 0
        while not all(h.finished for h in handles):
            eng.step()
            peak = max(peak, len(eng.scheduler.running))
            assert eng.kv.num_free >= 0
        assert peak == 2
        assert all(len(h.result().token_ids) == 10 for h in handles)
        assert eng.kv.num_free == eng.kv.num_blocks       # every block returned
        alone = [eng.generate([p], sampling=sp)[0].token_ids for p in prompts]
        assert [h.result().token_ids for h in handles] == alone
    finally:
        eng.close()


def test_sampling_seed_topk_topp(engine):
    p = _prompts(1, seed=4)[0]
    sp = SamplingParams(max_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=42, ignore_eos=True)
    a = engine.generate([p], sampling=sp)[0].token_ids
    b = engine.generate([p, p[:5], p[:3]], adapters=[None, "a1", None], sampling=sp)[0].token_ids
    assert a == b                                         # seeded: independent of batch-mates
    c = engine.generate([p], sampling=SamplingParams(max_tokens=10, temperature=1.0, seed=43, ignore_eos=True))
    assert c[0].token_ids != a
    greedy = engine.generate([p], sampling=SamplingParams(max_tokens=10, ignore_eos=True))[0].token_ids
    top1 = engine.generate([p], sampling=SamplingParams(max_tokens=10, temperature=0.7, top_k=1, seed=1,
                                                        ignore_eos=True))[0].token_ids
    assert top1 == greedy
    tiny_p = engine.generate([p], sampling=SamplingParams(max_tokens=10, temperature=0.9, top_p=1e-6, seed=5,
                                                          ignore_eos=True))[0].token_ids
    assert tiny_p == greedy


def test_sampler_top_p_keeps_smallest_nucleus():
    from atoll.agent.runtime.sampling import make_generator, sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sp = SamplingParams(temperature=1.0, top_p=0.7)
    seen = {sample(logits, [sp], [make_generator(s, torch.device("cpu"))])[0] for s in range(200)}
    assert seen == {0, 1}
    sp = SamplingParams(temperature=1.0, top_k=3)
    seen = {sample(logits, [sp], [make_generator(s, torch.device("cpu"))])[0] for s in range(300)}
    assert seen == {0, 1, 2}


def test_stop_tokens_strings_and_lengths(tiny_dir):
    eng = Engine(tiny_dir, lora_backend="torch", kv_cache_tokens=1024)
    try:
        p = eng.tokenizer.encode("the quick brown fox")
        free = eng.generate([p], sampling=SamplingParams(max_tokens=12, ignore_eos=True))[0]
        assert free.finish_reason == "length" and len(free.token_ids) == 12
        assert free.completion_tokens == 12 and free.prompt_tokens == len(p)
        stop_at = free.token_ids[4]
        first = free.token_ids.index(stop_at)
        o = eng.generate([p], sampling=SamplingParams(max_tokens=12, stop_token_ids=[stop_at], ignore_eos=True))[0]
        assert o.finish_reason == "stop" and o.token_ids == free.token_ids[:first + 1]
        text = free.text
        needle = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].strip())
        o = eng.generate([p], sampling=SamplingParams(max_tokens=12, stop=[needle], ignore_eos=True))[0]
        assert o.finish_reason == "stop" and o.text == text[:text.index(needle)] and needle not in o.text
        # streamed text with a stop string never shows the stop string, and adds up to the final text
        h = eng.submit(p, None, SamplingParams(max_tokens=12, stop=[needle], ignore_eos=True))
        while not h.finished:
            eng.step()
        assert "".join(d.text for d in h) == o.text
    finally:
        eng.close()


def test_eos_stops_unless_ignored(tiny_dir):
    eng = Engine(tiny_dir, lora_backend="torch", kv_cache_tokens=512)
    try:
        p = [1, 40, 41]
        free = eng.generate([p], sampling=SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
        object.__setattr__(eng.cfg, "eos_token_ids", (free[2],))
        o = eng.generate([p], sampling=SamplingParams(max_tokens=8))[0]
        assert o.finish_reason == "stop" and o.token_ids == free[:free.index(free[2]) + 1]
    finally:
        eng.close()


def test_streaming_threads_asyncio_and_cancel(engine):
    engine.start()
    try:
        sp = SamplingParams(max_tokens=8, ignore_eos=True)
        h = engine.submit([1, 9, 10, 11], "a2", sp)
        deltas = list(h)
        assert deltas[-1].finished and deltas[-1].finish_reason == "length"
        assert sum(len(d.token_ids) for d in deltas) == 8
        assert [t for d in deltas for t in d.token_ids] == h.result().token_ids

        async def consume():
            hh = engine.submit([1, 9, 10, 11], "a2", sp)
            ticks = 0
            got = []

            async def ticker():                       # the loop stays responsive while tokens come
                nonlocal ticks
                while not hh.finished:
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())
            async for d in hh:
                got.extend(d.token_ids)
            await t
            return got, ticks

        got, ticks = asyncio.run(consume())
        assert got == h.result().token_ids and ticks > 0

        long = engine.submit([1, 9, 10, 11], None, SamplingParams(max_tokens=200, ignore_eos=True),
                             request_id="to-cancel")
        it = iter(long)
        next(it)
        assert engine.cancel("to-cancel")
        rest = list(it)
        assert rest[-1].finish_reason == "cancelled"
        assert len(long.token_ids) < 200
        assert not engine.cancel("to-cancel")
        deadline = time.monotonic() + 5
        while engine.stats()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0
        # many threads submitting at once
        outs = {}

        def worker(i):
            outs[i] = engine.submit([1, 20 + i, 30], ["a1", None, "a3"][i % 3], sp).result(30).token_ids

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(len(v) == 8 for v in outs.values())
    finally:
        engine.stop()


def test_invalid_inputs(engine):
    with pytest.raises(InvalidArgument, match="temperature"):
        engine.submit([1, 2], sampling=SamplingParams(temperature=-1))
    with pytest.raises(InvalidArgument, match="top_p"):
        engine.submit([1, 2], sampling=SamplingParams(top_p=1.5))
    with pytest.raises(InvalidArgument, match="max_tokens"):
        engine.submit([1, 2], sampling=SamplingParams(max_tokens=0))
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        engine.submit([1, 9999])
    with pytest.raises(InvalidArgument, match="empty"):
        engine.submit([])
    with pytest.raises(InvalidArgument, match="context"):
        engine.submit([1, 2], sampling=SamplingParams(max_tokens=10_000))
    with pytest.raises(NotFound):
        engine.generate([[1, 2]], adapters=["zzz"])
    assert engine.stats()["waiting"] == 0


def test_embed_and_stats(engine):
    e = engine.embed([[1, 5, 9, 20], [1, 7]])
    assert e.shape == (2, engine.cfg.hidden_size) and e.dtype == torch.float32
    e1 = engine.embed([[1, 5, 9, 20]])
    assert torch.allclose(e1[0], e[0], atol=1e-5)
    ea = engine.embed([[1, 5, 9, 20]], adapter="a1")
    assert not torch.allclose(ea[0], e[0], atol=1e-3)
    s = engine.stats()
    for k in ("tokens_per_s", "running", "waiting", "kv_cache_usage", "adapter_hits", "adapter_misses"):
        assert k in s
    assert s["kv_cache_usage"] == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_close_to_fp32(hf_model_dir, peft_adapters, engine, dtype):
    eng = Engine(hf_model_dir, dtype=dtype, lora_backend="torch", max_lora_rank=16, kv_cache_tokens=512)
    try:
        eng.add_adapter("a1", peft_adapters["a1"])
        ids = _prompts(2, lo=8, hi=9, seed=6)
        got = torch.stack(eng.prompt_logits(ids, ["a1", None]))
        want = torch.stack(engine.prompt_logits(ids, ["a1", None]))
        tol = 0.05 if dtype == "float16" else 0.25
        assert (got - want).abs().max().item() < tol
        assert eng.generate(ids, adapters=["a1", None], sampling=GREEDY)[0].completion_tokens == 12
    finally:
        eng.close()


def test_incremental_decoder_deltas_add_up(tiny_dir):
    import random

    from atoll.agent.runtime.tokenizer import IncrementalDecoder, Tokenizer

    tok = Tokenizer(tiny_dir)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(0, 256) for _ in range(rng.randrange(1, 30))]
        dec, out = IncrementalDecoder(tok, []), ""
        for i in range(1, len(ids) + 1):
            out += dec.update(ids[:i], final=i == len(ids))[0]
        assert out == tok.decode(ids)


def test_model_and_engine_refusals(tiny_dir, tmp_path):
    import json
    import shutil

    from atoll.core.errors import FailedPrecondition, SpecError

    with pytest.raises(SpecError, match="config.json not found"):
        Engine(tmp_path / "nothing")
    with pytest.raises(InvalidArgument, match="max_num_seqs"):
        Engine(tiny_dir, max_num_seqs=0)
    with pytest.raises(InvalidArgument, match="dtype"):
        Engine(tiny_dir, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(FailedPrecondition, match="CUDA"):
            Engine(tiny_dir, device="cuda")
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="RoPE type 'yarn' is not supported"):
        Engine(d)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    cfg["hidden_size"] = 32
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="config.json implies"):
        Engine(d)


def test_waiting_requests_take_turns_by_owner():
    """Admission takes the owners in turn (first in, first out within one): with one line, a
    renter node's 1,024 queued requests made a tenant's own requests on that host miss their
    deadlines."""
    from atoll.agent.runtime.scheduler import Waiting

    class R:
        def __init__(self, owner, n):
            self.owner, self.n = owner, n

    w = Waiting()
    flood = [R("node:evil", i) for i in range(5)]
    for r in flood:
        w.append(r)
    mine = [R("", 0), R("", 1)]
    for r in mine:
        w.append(r)
    assert len(w) == 7 and list(w) == flood + mine
    got = [w.popleft() for _ in range(4)]
    assert [(r.owner, r.n) for r in got] == [("node:evil", 0), ("", 0), ("node:evil", 1), ("", 1)]
    w.appendleft(got[-1])                               # waits for KV room: first again, its owner's turn
    assert w.popleft() is got[-1]
    skipped = [w.popleft() for _ in range(2)]
    assert skipped == [flood[2], flood[3]]
    w.extendleft(reversed(skipped))                     # skipped ones go back in order, in front
    assert [w.popleft() for _ in range(2)] == skipped
    w.remove(flood[4])
    assert not w and len(w) == 0
    single = Waiting()                                  # one owner: a plain FIFO
    for r in flood:
        single.append(r)
    assert [single.popleft() for _ in range(5)] == flood


def test_a_flood_from_one_owner_does_not_hold_back_anothers_request(tiny_dir):
    eng = Engine(tiny_dir, kv_cache_tokens=4096, max_num_seqs=2)
    eng.start()
    try:
        ids = eng.encode_prompt("the cat")
        flood = [eng.submit(ids, None, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
                            owner="node:evil") for _ in range(24)]
        mine = eng.submit(ids, None, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        mine.result(120)
        done_before = sum(h.finished for h in flood)
        assert done_before <= 4, done_before         # admitted after at most a turn or two, not after all 24
        assert [len(h.result(300).token_ids) for h in flood] == [40] * 24     # and the flood is served too
    finally:
        eng.close()
