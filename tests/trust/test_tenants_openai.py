"""Tenants and API keys, trusted tiers, and the OpenAI-compatible door, on real processes."""

from __future__ import annotations

import sqlite3

import openai
import pytest
import yaml

from atoll.client import Client
from atoll.core.errors import NotFound, PermissionDenied, Unauthenticated
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration
TOKEN = "tenant-test-token"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama, with_chat_template

    tmp = tmp_path_factory.mktemp("tenants")
    with_chat_template(build_tiny_llama(tmp / "base"))
    build_tiny_adapter(tmp / "tenant-a", tmp / "base", rank=4, seed=5)
    port, oport = free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    procs = [Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}",
                   "--state-dir", str(tmp / "state"), "--heartbeat-interval", "1", "--join-token", TOKEN,
                   "--openai-listen", f"127.0.0.1:{oport}"], tmp / "coord.log")]
    with Client(addr) as c:       # the operator trusts its datacenter hosts: they join with a trusted token
        trusted = wait_for(lambda: c.create_join_token(["datacenter"], trusted=True)["token"], 20)
    for spec, token in [(dict(name="dc-1", tier="datacenter", region="us-east", price_per_hour=3.0,
                              labels={"hardware": "a100"}), trusted),
                        (dict(name="rent-1", tier="renter", region="us-east", price_per_hour=0.3,
                              labels={"hardware": "a100"}), TOKEN)]:
        procs.append(Proc(["agent", "--coordinator", addr, "--config", str(node_yaml(tmp / f"{spec['name']}.yaml", **spec)),
                           "--state-dir", str(tmp / f"a-{spec['name']}"), "--join-token", token], tmp / f"{spec['name']}.log"))
    with Client(addr) as c:
        wait_for(lambda: sum(n.state == "READY" for n in c.nodes()) == 2, 40, what="two READY nodes")
    yield {"addr": addr, "openai": f"http://127.0.0.1:{oport}/v1", "tmp": tmp, "coord": procs[0]}
    for p in procs:
        p.stop()


def wf(tmp, name, trusted=False, adapter_path=None):
    v = {"name": "tenant-a", "model": str(tmp / "base"), "adapter": "tenant-a",
         "adapter_path": adapter_path or str(tmp / "tenant-a"), "accuracy": 0.9, "memory_gb": 1,
         "throughput": {"a100": 20}}
    spec = {"name": name, "sources": [{"name": "u", "rate": 2, "region": "us-east", "tier": "datacenter"}],
            "tasks": [{"name": "chat", "max_tokens": 6, "variants": [v]}],
            "edges": [{"from": "u", "to": "chat"}], "placement": {"trusted_only": trusted}}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_keys_tenants_trusted_tiers_and_openai(fleet):
    addr, tmp = fleet["addr"], fleet["tmp"]
    with Client(addr) as anon:
        admin = anon.create_key("ops", "admin")           # bootstrap: the first key, without a key
        assert admin["key"].startswith("atoll_")
        with pytest.raises(Unauthenticated):
            anon.nodes()                                   # keys are enforced from now on
    with Client(addr, api_key=admin["key"]) as adm:
        ka, kb = adm.create_key("team-a")["key"], adm.create_key("team-b")["key"]
        assert {k["tenant"] for k in adm.list_keys()} == {"ops", "team-a", "team-b"}
    db = sqlite3.connect(str(tmp / "state" / "atoll.db")).execute("SELECT value FROM meta").fetchall()
    assert not any(ka.split("_", 2)[2] in row[0] for row in db)          # stored hashed

    a, b = Client(addr, api_key=ka), Client(addr, api_key=kb)
    with a, b:
        # trusted tiers: the renter is cheaper, but a trusted-only workflow never lands there
        st = a.submit(str(wf(tmp, "wf-a", trusted=True)))
        assert st.plan["constraints"]["trusted_only"] is True
        st = a.wait_ready("wf-a", 60)
        assert {r["node"] for r in st.replicas} == {"dc-1"} and all(r["tier"] != "renter" for r in st.replicas)
        assert a.invoke("wf-a", {"text": "hi"})["output"]["text"] is not None
        # another tenant sees nothing of it
        assert [w["name"] for w in b.workflows()] == []
        for call in (lambda: b.status("wf-a"), lambda: b.invoke("wf-a", {"text": "x"}), lambda: b.delete("wf-a")):
            with pytest.raises(NotFound):
                call()
        # roles
        with pytest.raises(PermissionDenied):
            a.drain("dc-1")
        with pytest.raises(PermissionDenied):
            a.create_key("team-a")
        # another tenant's pushed adapter is invisible
        sha = a.push(tmp / "tenant-a", "adapter")
        with pytest.raises(NotFound):
            b.submit(str(wf(tmp, "wf-b", adapter_path=sha)))

        # the OpenAI-compatible door, with the official client
        oa = openai.OpenAI(base_url=fleet["openai"], api_key=ka, max_retries=0)
        ids = {m.id for m in oa.models.list().data}
        assert "wf-a" in ids and "base:tenant-a" in ids
        r = oa.completions.create(model="wf-a", prompt="Hello", max_tokens=4)
        assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
        assert 1 <= r.usage.completion_tokens <= 4 and r.usage.prompt_tokens >= 1
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        r = oa.chat.completions.create(model="wf-a", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.role == "assistant"
        chunks = list(oa.chat.completions.create(model="base:tenant-a", stream=True, max_tokens=5, temperature=0,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "stream"}]))
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
        finish = chunks[-2].choices[0].finish_reason
        assert finish == ("length" if chunks[-1].usage.completion_tokens == 5 else "stop")
        text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
        whole = oa.chat.completions.create(model="base:tenant-a", max_tokens=5, temperature=0,
                                           messages=[{"role": "user", "content": "stream"}])
        assert whole.choices[0].message.content == text          # greedy: the same answer both ways
        ob = openai.OpenAI(base_url=fleet["openai"], api_key=kb, max_retries=0)
        assert "wf-a" not in {m.id for m in ob.models.list().data}
        with pytest.raises(openai.NotFoundError):           # another tenant's adapter, as a model
            ob.chat.completions.create(model="base:tenant-a", messages=[{"role": "user", "content": "x"}])
        assert "base:tenant-a" not in {m.id for m in ob.models.list().data}
        with pytest.raises(openai.NotFoundError) as ei:
            ob.completions.create(model="wf-a", prompt="x")
        assert ei.value.body["type"] == "invalid_request_error" or "message" in str(ei.value)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=fleet["openai"], api_key="atoll_nope_nope", max_retries=0).models.list()
        with pytest.raises(openai.BadRequestError):
            oa.completions.create(model="wf-a", prompt="", max_tokens=4)

        # revoking a key locks it out
        with Client(addr, api_key=admin["key"]) as adm:
            kid = next(k["id"] for k in adm.list_keys() if k["tenant"] == "team-b")
            adm.revoke_key(kid)
        with pytest.raises(Unauthenticated):
            b.workflows()
        a.delete("wf-a")
    assert "Traceback" not in fleet["coord"].log()
