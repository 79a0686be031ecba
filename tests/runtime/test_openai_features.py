"""What the OpenAI-compatible door needs from the engine, checked at the engine: n choices, stop
strings, top_p, per-request seeds, max_tokens (and None), logprobs / top_logprobs per token,
finish_reason and token counts; chat templates from a Hugging Face directory rendered as
transformers renders them, end-of-turn stops, a clear error without a template, and a sandbox."""

from __future__ import annotations

import json
import pytest
import torch

from atoll.agent.runtime import SamplingParams, TokenLogprob
from atoll.core.errors import FailedPrecondition, InvalidArgument

PROMPT = [1, 40, 41, 42, 43]


def test_n_choices_seeds_and_counts(engine):
    sp = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7, n=3, ignore_eos=True)
    handles = engine.submit_choices(PROMPT, "a1", sp, request_id="multi")
    while not all(h.finished for h in handles):
        engine.step()
    outs = [h.result() for h in handles]
    assert [h.request_id for h in handles] == ["multi.0", "multi.1", "multi.2"]
    assert all(o.finish_reason == "length" and o.completion_tokens == 8 and o.prompt_tokens == 5 for o in outs)
    assert len({tuple(o.token_ids) for o in outs}) > 1                  # the choices differ
    one = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=8, ignore_eos=True)
    alone = engine.generate([PROMPT], adapters=["a1"], sampling=one)[0]
    assert alone.token_ids == outs[1].token_ids                          # choice i: seed + i
    with pytest.raises(InvalidArgument, match="submit_choices"):
        engine.submit(PROMPT, sampling=SamplingParams(n=2))
    with pytest.raises(InvalidArgument, match="n must be"):
        engine.submit_choices(PROMPT, sampling=SamplingParams(n=0))


def test_logprobs_and_top_logprobs(engine):
    sp = SamplingParams(max_tokens=6, logprobs=True, top_logprobs=3, ignore_eos=True)
    out = engine.generate([PROMPT], adapters=["a2"], sampling=sp)[0]
    assert len(out.logprobs) == len(out.token_ids) == 6
    # the reference: log_softmax of the prompt-scoring logits at each position
    seq = PROMPT + out.token_ids
    logits = engine.prompt_logits([seq], ["a2"])[0]
    lp = torch.log_softmax(logits, -1)
    for i, (tok, got) in enumerate(zip(out.token_ids, out.logprobs)):
        row = lp[len(PROMPT) - 1 + i]
        assert isinstance(got, TokenLogprob) and got.token_id == tok
        assert abs(got.logprob - row[tok].item()) < 1e-4
        assert [t for t, _ in got.top] == torch.topk(row, 3).indices.tolist()
        assert got.top[0][0] == tok                                        # greedy: the top token
        assert all(a >= b for (_, a), (_, b) in zip(got.top, got.top[1:]))
    plain = engine.generate([PROMPT], sampling=SamplingParams(max_tokens=3, ignore_eos=True))[0]
    assert plain.logprobs is None
    only = engine.generate([PROMPT], sampling=SamplingParams(max_tokens=3, logprobs=True, ignore_eos=True))[0]
    assert all(lp.top == [] for lp in only.logprobs)
    with pytest.raises(InvalidArgument, match="top_logprobs"):
        engine.submit(PROMPT, sampling=SamplingParams(top_logprobs=21))
    # streamed deltas carry them too
    h = engine.submit(PROMPT, None, SamplingParams(max_tokens=4, logprobs=True, ignore_eos=True))
    while not h.finished:
        engine.step()
    assert [d.logprobs[0].token_id for d in h] == h.result().token_ids


def test_max_tokens_none_runs_to_the_context(tiny_dir):
    from atoll.agent.runtime import Engine

    eng = Engine(tiny_dir, kv_cache_tokens=256, block_size=16)
    try:
        out = eng.generate([PROMPT], sampling=SamplingParams(max_tokens=None, ignore_eos=True))[0]
        assert out.finish_reason == "length"
        assert out.prompt_tokens + out.completion_tokens == min(eng.max_model_len, eng.kv.capacity_tokens)
    finally:
        eng.close()


TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\\n' }}"
            "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def chat_dir(tmp_path):
    from tests.fixtures.tiny_models import build_tiny_llama

    d = build_tiny_llama(tmp_path / "chat", vocab_size=512)
    tj = json.loads((d / "tokenizer.json").read_text())
    end_id = max(max(tj["model"]["vocab"].values()), max(t["id"] for t in tj["added_tokens"])) + 1
    assert end_id < 512
    # <|end|> as an added special token, inside the model's vocabulary
    tj["added_tokens"].append({"id": end_id, "content": "<|end|>", "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "bos_token": "<s>",
                                                         "eos_token": "</s>"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    return d


def test_chat_template_matches_transformers_and_stops(chat_dir):
    from transformers import AutoTokenizer

    from atoll.agent.runtime import Engine

    tok = AutoTokenizer.from_pretrained(chat_dir)
    eng = Engine(chat_dir, kv_cache_tokens=512)
    try:
        msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat"},
                {"role": "assistant", "content": "on the mat"}, {"role": "user", "content": "the dog?"}]
        want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert eng.apply_chat_template(msgs, tokenize=True) == list(want)
        assert eng.apply_chat_template(msgs) == tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                                       tokenize=False)
        end = eng.tokenizer.token_to_id("<|end|>")
        assert set(eng.stop_token_ids) >= {2, 7, end}                  # generation_config + end of turn
        with pytest.raises(InvalidArgument, match="messages"):
            eng.apply_chat_template([{"content": "no role"}])
    finally:
        eng.close()
    (chat_dir / "tokenizer_config.json").write_text(json.dumps({}))
    eng = Engine(chat_dir, kv_cache_tokens=256)
    try:
        with pytest.raises(FailedPrecondition, match="no chat template"):
            eng.apply_chat_template([{"role": "user", "content": "hi"}])
        (chat_dir / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    finally:
        eng.close()
    eng = Engine(chat_dir, kv_cache_tokens=256)              # chat_template.jinja is read too
    try:
        assert eng.apply_chat_template([{"role": "user", "content": "x y"}]) == "x y"
    finally:
        eng.close()


def test_chat_template_runs_in_a_sandbox():
    from atoll.agent.runtime.chat import ChatTemplate

    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidArgument, match="unsafe"):
        evil.render([{"role": "user", "content": "x"}])
    mutate = ChatTemplate("{% set _ = messages.append(1) %}ok")
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(InvalidArgument):
        mutate.render(msgs)
    assert len(msgs) == 1
    raising = ChatTemplate("{{ raise_exception('only user and assistant roles') }}")
    with pytest.raises(InvalidArgument, match="only user and assistant roles"):
        raising.render(msgs)


@pytest.mark.parametrize("source, why", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took more than"),
    ("{{ 'x' * 1000000000 }}", "repetition"),
    ("{{ 10 ** 100000 }}", "exponent"),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "grew past"),
])
def test_a_chat_template_cannot_hold_the_host(source, why):
    """A template comes with a model a tenant pushed and renders on a shared host: one that loops
    for minutes or writes gigabytes is refused within the render's bounds (before: one chat
    request froze an agent 21 s, and its coordinator marked it LOST)."""
    import time

    from atoll.agent.runtime.chat import MAX_RENDER_S, ChatTemplate

    t0 = time.monotonic()
    with pytest.raises(InvalidArgument, match=why):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 < MAX_RENDER_S + 2.0


def test_a_tokenizer_that_panics_is_a_clear_error_not_a_hung_request():
    """The tokenizers package reports a panic (here: a backtracking pattern in the model's own
    tokenizer.json that Oniguruma gives up on) as a BaseException, which ``except Exception``
    missed: the request hung until its deadline. It is now FAILED_PRECONDITION at once."""
    from tokenizers import Regex, Tokenizer as RawTokenizer, models, pre_tokenizers

    from atoll.agent.runtime.tokenizer import Tokenizer
    from atoll.core.errors import FailedPrecondition

    raw = RawTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"(a|aa)+$"), behavior="isolated")
    tok = Tokenizer.wrap(raw)
    assert tok.encode("a") == [0]                                   # ordinary text still encodes
    with pytest.raises(FailedPrecondition, match="tokenizer failed to encode"):
        tok.encode("a" * 100_000 + "b")
