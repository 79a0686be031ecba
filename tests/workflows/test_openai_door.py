"""The coordinator's OpenAI door on real processes, with the official client: chat rendered on
the agent with its model's template, n choices, seeds, logprobs, stop strings, token-id prompts,
finish reasons and real token counts, forwarded to an agent's entry and run on the data plane;
embedding workflows; ``base:adapter`` models; door requests counted and a workflow at zero
woken, as gRPC invokes are."""

from __future__ import annotations

import re
import time

import openai
import pytest

from .conftest import wait_until

pytestmark = pytest.mark.integration

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat sat on"}]


def spec(h, name: str, task: dict, autoscaling=None) -> dict:
    return {
        "name": name,
        "sources": [{"name": "users", "rate": 2, "region": "us-east", "tier": "datacenter"}],
        "tasks": [dict({"variants": [
            {"name": "tenant-a", "model": str(h.models / "base"), "adapter": "tenant-a",
             "adapter_path": str(h.models / "tenant-a"), "accuracy": 0.8, "memory_gb": 1,
             "throughput": {"a100": 10, "rtx4090": 4, "orin": 1}}]}, **task)],
        "edges": [{"from": "users", "to": task["name"], "size_kb": 0.05}],
        "autoscaling": autoscaling,
    }


def door(h) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.fleet.openai_url, api_key="unused", max_retries=0, timeout=90)


def door_requests(h, workflow: str) -> float:
    m = re.search(rf'^atoll_workflow_requests_total\{{outcome="ok",workflow="{workflow}"\}} (\S+)$', h.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def test_generation_through_the_coordinator(harness):
    from atoll.agent.runtime import Engine

    h = harness
    oa = door(h)
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-door", spec(h, "wf-door", {"name": "gen", "max_tokens": 5, "stop": ["zz"]}))))
        c.wait_ready("wf-door", 90)
        assert {"wf-door", "base:tenant-a"} <= {m.id for m in oa.models.list().data}

        # chat: the agent renders the template; the prompt's tokens are the template's
        eng = Engine(h.models / "base", kv_cache_tokens=512)
        want_prompt = len(eng.apply_chat_template(MSGS, tokenize=True))
        ids = eng.encode_prompt("the quick brown")
        eng.close()
        r = oa.chat.completions.create(model="wf-door", messages=MSGS, temperature=0)
        assert r.usage.prompt_tokens == want_prompt
        # the spec's max_tokens applies: 5 tokens and "length", or fewer and "stop"
        assert (r.usage.completion_tokens == 5) == (r.choices[0].finish_reason == "length")
        assert 1 <= r.usage.completion_tokens <= 5
        greedy = r.choices[0].message.content
        stream = list(oa.chat.completions.create(model="wf-door", messages=MSGS, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
        assert "".join(x.choices[0].delta.content or "" for x in stream[:-1]) == greedy
        assert stream[-1].usage.prompt_tokens == want_prompt

        # n choices with a seed: reproducible, and counted as the sum of the choices
        kw = dict(model="wf-door", prompt="the quick brown", n=3, seed=5, temperature=1.0, max_tokens=6)
        a, b = oa.completions.create(**kw), oa.completions.create(**kw)
        assert [x.text for x in a.choices] == [x.text for x in b.choices] and len({x.text for x in a.choices}) > 1
        assert a.usage.completion_tokens <= 18 and [x.index for x in a.choices] == [0, 1, 2]
        # logprobs from the agent's model, with the tokens' texts
        r = oa.completions.create(model="wf-door", prompt="the quick brown", max_tokens=4, temperature=0, logprobs=2)
        lp = r.choices[0].logprobs
        assert "".join(lp.tokens) == r.choices[0].text and len(lp.top_logprobs[0]) == 2
        assert all(v <= 0 for v in lp.token_logprobs)
        # finish reasons and stop strings (added to the stage's own)
        full = oa.completions.create(model="wf-door", prompt="the quick brown", max_tokens=12, temperature=0)
        assert full.choices[0].finish_reason == ("length" if full.usage.completion_tokens == 12 else "stop")
        cut = full.choices[0].text[2:5]
        r = oa.completions.create(model="wf-door", prompt="the quick brown", max_tokens=12, temperature=0, stop=cut)
        assert r.choices[0].text == full.choices[0].text[:full.choices[0].text.index(cut)]
        assert r.choices[0].finish_reason == "stop"
        # one adapter, as a model
        r = oa.chat.completions.create(model="base:tenant-a", messages=MSGS, temperature=0, max_tokens=5)
        assert r.choices[0].message.content == greedy and r.usage.prompt_tokens == want_prompt
        with pytest.raises(openai.BadRequestError, match="ends in an llm stage"):
            oa.embeddings.create(model="wf-door", input="x")
        # a prompt of token ids: the same answer as its text (the stage's template is "{input}")
        r = oa.completions.create(model="wf-door", prompt=ids, max_tokens=12, temperature=0)
        assert r.choices[0].text == full.choices[0].text and r.usage.prompt_tokens == len(ids)
        c.delete("wf-door")
        with pytest.raises(openai.NotFoundError):
            oa.completions.create(model="wf-door", prompt="gone")


def test_embedding_workflow_through_the_door(harness):
    h = harness
    oa = door(h)
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-door-emb", spec(h, "wf-door-emb", {"name": "embed", "kind": "embedding"}))))
        c.wait_ready("wf-door-emb", 90)
        r = oa.embeddings.create(model="wf-door-emb", input=["a document", "another one here"])
        sdk = c.invoke("wf-door-emb", {"text": "a document"})["output"]["embedding"]
        assert len(r.data) == 2 and r.data[0].embedding == pytest.approx(sdk, abs=1e-6)
        assert len(r.data[1].embedding) == 64 and r.usage.prompt_tokens > 2
        with pytest.raises(openai.BadRequestError, match="embedding stage"):
            oa.completions.create(model="wf-door-emb", prompt="x")
        c.delete("wf-door-emb")


def test_door_requests_count_and_wake_a_workflow_at_zero(harness):
    h = harness
    oa = door(h)
    with h.client(timeout=60) as c:
        c.submit(str(h.write("wf-door-zero", spec(h, "wf-door-zero", {"name": "gen", "max_tokens": 3}, {
            "scale_to_zero": True, "min_replicas": 0, "idle_seconds": 2, "scale_down_delay": 1}))))
        c.wait_ready("wf-door-zero", 90)
        st = wait_until(lambda: (lambda s: s if s.state == "IDLE" else None)(c.status("wf-door-zero")), 30, "IDLE")
        assert st.replicas == []
        before = door_requests(h, "wf-door-zero")
        t0 = time.monotonic()
        r = oa.completions.create(model="wf-door-zero", prompt="wake up", max_tokens=2)   # waits, never a 409
        assert r.choices[0].text is not None and time.monotonic() - t0 < 90
        st = c.status("wf-door-zero")
        assert st.state in ("READY", "DEGRADED") and st.cold_starts and st.cold_starts[-1]["seconds"] > 0
        assert door_requests(h, "wf-door-zero") == before + 1
        c.delete("wf-door-zero")
