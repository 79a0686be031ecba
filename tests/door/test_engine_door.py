"""An agent's OpenAI door over a real engine, with the official client: the door's request enters
this agent's entry and runs on the data plane, in process on the engine of the replica this host
holds (``LocalEngine``). Every answer is the one the engine gives for the same input (chat
rendered with the model's own template, n choices and their seeds, log-probabilities, stop
strings, token-id prompts, embeddings), token counts are the engine's, and a client that goes
away cancels its request. SmolLM2-135M-Instruct answers a real question."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest
import torch

from atoll.agent.dataplane.chain import NodeSelf
from atoll.agent.dataplane.door import entry_backend
from atoll.agent.dataplane.node import DataPlaneNode
from atoll.agent.runtime import Engine, SamplingParams
from atoll.agent.serving import LocalEngine, SwitchingWorker
from atoll.core.apikeys import key_set
from atoll.specs.routing import routing_state
from tests.dataplane.helpers import endpoint, route
from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama, with_chat_template
from tests.runtime.smollm2 import smollm2_gguf

from .helpers import serving


class Loaded:
    """What LocalEngine reads of a loaded Worker service: its engine."""

    def __init__(self, engine):
        self.engine = engine


def engine_node(engine, adapters=("tenant-a",)) -> DataPlaneNode:
    """An agent's data plane whose only replicas are on this host (``engine``): one workflow for the
    bare base model and one per adapter, so ``base`` and ``base:adapter`` name them."""
    worker = SwitchingWorker()
    worker.current = Loaded(engine)
    node = DataPlaneNode(node=lambda: NodeSelf("self", "self", "eu", "datacenter"), local=LocalEngine(worker),
                         local_address=lambda: "", connected=lambda: True)
    base = str(engine.model_dir)
    routes = [route(f"wf-{a or 'base'}", endpoints=(endpoint(f"r-{a or 'base'}", node="self", adapter=a, base=base),))
              for a in ("", *adapters)]
    node.on_instruction({"routing": routing_state(routes)})
    node.on_instruction({"keys": key_set([])})
    return node

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat on"}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine-door")
    base = with_chat_template(build_tiny_llama(tmp / "base"))
    eng = Engine(base, kv_cache_tokens=4096)
    eng.add_adapter("tenant-a", build_tiny_adapter(tmp / "tenant-a", base, rank=4, seed=3))
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def door(engine):
    with serving(entry_backend(engine_node(engine).entry)) as d:
        yield d


@pytest.fixture
def oa(door):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{door.port}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_are_the_base_and_its_adapters(oa):
    assert sorted(m.id for m in oa.models.list().data if not m.id.startswith("wf-")) == ["base", "base:tenant-a"]


def test_chat_is_the_engines_answer_to_the_rendered_template(engine, oa):
    ids = engine.apply_chat_template(MSGS, tokenize=True)
    want = engine.generate([ids], sampling=SamplingParams(max_tokens=8, temperature=0))[0]
    r = oa.chat.completions.create(model="base", messages=MSGS, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == want.completion_tokens
    assert r.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    streamed = list(oa.chat.completions.create(model="base", messages=MSGS, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text


def test_adapter_and_token_id_prompts(engine, oa):
    ids = engine.encode_prompt("the quick brown fox")
    want = engine.generate([ids], adapters=["tenant-a"], sampling=SamplingParams(max_tokens=6, temperature=0))[0]
    r = oa.completions.create(model="base:tenant-a", prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == want.text and r.usage.prompt_tokens == len(ids)
    assert oa.completions.create(model="tenant-a", prompt=ids, max_tokens=6, temperature=0).choices[0].text == want.text
    base = oa.completions.create(model="base", prompt=ids, max_tokens=6, temperature=0).choices[0].text
    assert base != want.text                                   # the adapter is really applied


def test_n_choices_follow_the_seed(engine, oa):
    ids = engine.encode_prompt("Hello world")
    hs = engine.submit_choices(ids, None, SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=6))
    want = [h.result(60).text for h in hs]
    r = oa.completions.create(model="base", prompt="Hello world", n=3, seed=11, temperature=1.0, max_tokens=6)
    assert [c.text for c in r.choices] == want and len(set(want)) > 1
    assert r.usage.completion_tokens == sum(len(h.token_ids) for h in hs)
    again = oa.completions.create(model="base", prompt="Hello world", n=3, seed=11, temperature=1.0, max_tokens=6)
    assert [c.text for c in again.choices] == want


def test_logprobs_are_the_engines(engine, oa):
    ids = engine.apply_chat_template(MSGS, tokenize=True)
    out = engine.generate([ids], sampling=SamplingParams(max_tokens=4, temperature=0, logprobs=True,
                                                         top_logprobs=2))[0]
    r = oa.chat.completions.create(model="base", messages=MSGS, max_tokens=4, temperature=0, logprobs=True,
                                   top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [engine.token_text(lp.token_id) for lp in out.logprobs]
    assert [c.logprob for c in content] == pytest.approx([lp.logprob for lp in out.logprobs], abs=1e-5)
    assert [[t.token for t in c.top_logprobs] for c in content] == \
        [[engine.token_text(i) for i, _ in lp.top] for lp in out.logprobs]
    r = oa.completions.create(model="base", prompt="the cat", max_tokens=3, temperature=0, logprobs=1)
    assert len(r.choices[0].logprobs.tokens) == 3 and all(v <= 0 for v in r.choices[0].logprobs.token_logprobs)


def test_stop_strings_cut_the_text(engine, oa):
    full = oa.completions.create(model="base", prompt="the cat", max_tokens=12, temperature=0).choices[0].text
    stop = full[3:6]
    assert stop and stop not in full[:3]
    r = oa.completions.create(model="base", prompt="the cat", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_embeddings_are_the_engines(engine, oa):
    texts = ["the cat sat", "a dog ran in the park"]
    want = engine.embed([engine.encode_prompt(t) for t in texts])
    r = oa.embeddings.create(model="base", input=texts)
    got = torch.tensor([d.embedding for d in r.data])
    assert torch.allclose(got, want, atol=1e-6) and got.shape == (2, 64)
    assert r.usage.prompt_tokens == sum(len(engine.encode_prompt(t)) for t in texts)


def test_bad_input_is_an_openai_error(oa):
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="base:nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        oa.completions.create(model="base", prompt=[10 ** 6], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        oa.completions.create(model="base", prompt="x", max_tokens=30000)


def test_a_client_that_leaves_cancels_its_request(engine, door):
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"model": "base", "prompt": "the cat", "stream": True,
                                                        "max_tokens": 1500, "temperature": 1.0,
                                                        "stop": ["never-appears-here"]}))
    r = conn.getresponse()
    assert r.status == 200 and r.read1(100).startswith(b"data: ")
    conn.close()                                             # gone after its first chunk
    deadline = time.monotonic() + 20
    while engine.stats()["running"] + engine.stats()["waiting"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.stats()["running"] + engine.stats()["waiting"] == 0
    assert engine.metrics.generated_tokens < 10_000


@pytest.mark.slow
def test_smollm2_answers_through_the_door():
    eng = Engine(smollm2_gguf(), kv_cache_tokens=2048)
    eng.start()
    try:
        with serving(entry_backend(engine_node(eng, adapters=()).entry)) as d:
            oa = openai.OpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="unused", max_retries=0, timeout=120)
            q = [{"role": "user", "content": "What is the capital of France?"}]
            r = oa.chat.completions.create(model=eng.model_dir.name, messages=q, temperature=0)
            assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
            assert r.usage.prompt_tokens == len(eng.apply_chat_template(q, tokenize=True))
    finally:
        eng.close()


def test_prompts_are_tokenized_off_the_event_loop(engine, oa, monkeypatch):
    """A long prompt takes seconds to encode (about 2 s for a million characters on 2 cores), and
    the agent's event loop serves every other request and stream meanwhile: text prompts, chats and
    embedding inputs are encoded on a worker thread, never on the loop's own."""
    import threading

    seen: list[str] = []
    real = engine.tokenizer.encode

    def spy(text, **kw):
        seen.append(threading.current_thread().name)
        return real(text, **kw)

    monkeypatch.setattr(engine.tokenizer, "encode", spy)
    want = oa.completions.create(model="base", prompt="the cat sat", max_tokens=3, temperature=0).choices[0].text
    oa.chat.completions.create(model="base", messages=MSGS, max_tokens=2, temperature=0)
    oa.embeddings.create(model="base", input=["the cat sat"])
    assert len(seen) >= 3 and all(name.startswith("atoll-encode") for name in seen), seen
    monkeypatch.undo()
    ids = engine.encode_prompt("the cat sat")
    assert engine.generate([ids], sampling=SamplingParams(max_tokens=3, temperature=0))[0].text == want
