"""Keys and tenants at every door of the data plane, on real processes: an agent's entry (gRPC)
and its OpenAI door (HTTP) refuse cross-tenant, revoked, missing and malformed keys exactly as
the coordinator does (same status, same words); a revoked key stops working at the agent within
5 s; a trusted_only workflow's data never reaches a renter, not even as an entry."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest
import yaml

from atoll.client import Client
from atoll.core.errors import AtollError, NotFound, Unauthenticated
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration
TOKEN = "entry-doors-token"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama

    tmp = tmp_path_factory.mktemp("doors")
    build_tiny_llama(tmp / "base")
    addr = f"127.0.0.1:{free_port()}"
    procs = [Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}",
                   "--state-dir", str(tmp / "state"), "--heartbeat-interval", "1", "--join-token", TOKEN],
                  tmp / "coord.log")]
    http, metrics = {}, {}
    for spec in [dict(name="dc-1", tier="datacenter", region="us-east", price_per_hour=3.0, labels={"hardware": "a100"}),
                 dict(name="rent-1", tier="renter", region="us-east", price_per_hour=0.3, labels={"hardware": "a100"})]:
        http[spec["name"]], metrics[spec["name"]] = free_port(), free_port()
        procs.append(Proc(["agent", "--coordinator", addr, "--config", str(node_yaml(tmp / f"{spec['name']}.yaml", **spec)),
                           "--state-dir", str(tmp / f"a-{spec['name']}"), "--join-token", TOKEN,
                           "--openai-listen", f"127.0.0.1:{http[spec['name']]}",
                           "--metrics-listen", f"127.0.0.1:{metrics[spec['name']]}"], tmp / f"{spec['name']}.log"))
    with Client(addr, api_key="") as c:
        wait_for(lambda: sum(n.state == "READY" and bool(n.status.get("entry_address")) for n in c.nodes()) == 2,
                 40, what="two READY nodes with entries")
    yield {"addr": addr, "tmp": tmp, "http": http, "metrics": metrics, "procs": procs}
    for p in procs:
        p.stop()


def http_call(port: int, key: str | None, model: str, **extra) -> tuple[int, dict]:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 2, **extra}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key is not None else {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def refusal(call) -> tuple[type, str]:
    with pytest.raises(AtollError) as ei:
        call()
    return type(ei.value), str(ei.value)


def test_agent_doors_refuse_like_the_coordinator_and_trusted_data_stays_off_renters(fleet):
    addr, tmp = fleet["addr"], fleet["tmp"]
    with Client(addr, api_key="") as anon:
        admin = anon.create_key("ops", "admin")["key"]
    with Client(addr, api_key=admin) as adm:
        ka, kb = adm.create_key("team-a")["key"], adm.create_key("team-b")["key"]
        assert adm.set_trust("dc-1", True).trusted        # trusted_only needs a node the operator trusts
        spec = {"name": "wf-a", "sources": [{"name": "u", "rate": 2, "region": "us-east", "tier": "datacenter"}],
                "tasks": [{"name": "chat", "max_tokens": 2, "variants": [
                    {"name": "v", "model": str(tmp / "base"), "accuracy": 0.9, "memory_gb": 1,
                     "throughput": {"a100": 20}}]}],
                "edges": [{"from": "u", "to": "chat"}], "placement": {"trusted_only": True}}
        (tmp / "wf-a.yaml").write_text(yaml.safe_dump(spec))
        with Client(addr, api_key=ka) as a:
            a.submit(str(tmp / "wf-a.yaml"))
            st = a.wait_ready("wf-a", 90)
        assert {r["node"] for r in st.replicas} == {"dc-1"}
        every = {e["node_name"]: e for e in adm.entries("us-east")}
        assert set(every) == {"dc-1", "rent-1"}
        assert [e["node_name"] for e in adm.entries("us-east", workflow="wf-a")] == ["dc-1"]   # never the renter
    dc, rent = every["dc-1"]["address"], every["rent-1"]["address"]

    def via(key, entry=None):
        return Client(addr, api_key=key, entries=entry)

    with via(ka, dc) as a:
        for i in range(10):
            assert a.invoke("wf-a", {"text": f"hi {i}"})["stages"][0]["node"] == "dc-1"

    # the same refusal at the coordinator and at the agent's entry: status and words
    cases = {"missing": "", "malformed": "not-a-key", "unknown": "atoll_0123456789ab_nope", "cross-tenant": kb}
    for name, key in cases.items():
        with via(key) as at_coord, via(key, dc) as at_entry:
            want = refusal(lambda: at_coord.invoke("wf-a", {"text": "x"}, timeout=10))
            got = refusal(lambda: at_entry.invoke("wf-a", {"text": "x"}, timeout=10))
        assert got == want, name
        assert want[0] is (NotFound if name == "cross-tenant" else Unauthenticated), (name, want)
    # ... and at the agent's OpenAI door, with the coordinator's door's statuses
    port = fleet["http"]["dc-1"]
    code, body = http_call(port, ka, "wf-a")
    assert code == 200 and isinstance(body["choices"][0]["text"], str), body
    assert body["usage"]["completion_tokens"] >= 1, body              # the last stage's counts
    for extra in ({"n": 2}, {"logprobs": 1}, {"seed": 7}, {"stop": ["x"]}):    # carried by the entry
        code, body = http_call(port, ka, "wf-a", **extra)
        assert code == 200 and len(body["choices"]) == extra.get("n", 1), (extra, code, body)
        assert (body["choices"][0]["logprobs"] is not None) == ("logprobs" in extra), (extra, body)
    for key, status in ((None, 401), ("not-a-key", 401), ("atoll_0123456789ab_nope", 401), (kb, 404)):
        code, body = http_call(port, key, "wf-a")
        assert code == status and body["error"]["message"], (key, code, body)
    assert "wf-a" not in json.dumps(http_call(port, kb, "base")[1])

    # a revoked key stops working at the agent within 5 s (the coordinator is reachable)
    with Client(addr, api_key=admin) as adm:
        kid = next(k["id"] for k in adm.list_keys() if k["tenant"] == "team-a")
        adm.revoke_key(kid)
    t0 = time.monotonic()
    with via(ka, dc) as a:
        def refused():
            try:
                a.invoke("wf-a", {"text": "x"}, timeout=5)
                return False
            except Unauthenticated as exc:
                return "revoked" in str(exc)
        wait_for(refused, 5.0, interval=0.1, what="the revoked key refused at the agent")
    assert time.monotonic() - t0 < 5.0
    assert http_call(port, ka, "wf-a")[0] == 401

    # trusted_only: the renter holds no route of wf-a, so none of its data reaches it
    with via(admin, rent) as r:
        with pytest.raises(NotFound):
            r.invoke("wf-a", {"text": "secret"}, timeout=5)
    text = urllib.request.urlopen(f"http://127.0.0.1:{fleet['metrics']['rent-1']}/metrics", timeout=5).read().decode()
    assert re.search(r"^atoll_dataplane_workflows 0\.0$", text, re.M), text[:300]
    assert 'workflow="wf-a"' not in text                       # no request, stage or byte of wf-a
    for p in fleet["procs"]:
        assert "Traceback" not in p.log()
