"""Stage to stage, agent to agent, on loopback: the entry hands the request to the first stage's
agent, which runs it and calls the next stage's Worker; bytes are counted per region pair by the
agent that sends them; a later stage's failure is not retried by the entry; request id and
trace context reach every hop; with TLS the hops are mutual TLS, and a peer the fleet's CA did not
sign is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import pytest

from atoll.agent.dataplane.chain import NodeSelf
from atoll.agent.dataplane.door import entry_backend
from atoll.agent.dataplane.node import DataPlaneNode
from atoll.core.apikeys import key_set
from atoll.core.errors import InvalidArgument
from atoll.core.openai_api import Collector, EmbedRequest, GenRequest
from atoll.core.rpc import add_service
from atoll.proto.v1 import worker_pb2
from atoll.specs.routing import Stage, routing_state
from atoll.wire import dataplane as dp
from atoll.wire.worker import SERVICE as WORKER, Delta, Embedding, TokenLogprob, delta_to_pb

from .helpers import endpoint, route


class Fake:
    """A node's engine: choice i answers ``<node>[<prompt>]`` (``<node>/i[...]`` for i > 0), with one
    logprob per delta when asked; ``sampling`` records each call's settings; ``broken`` answers
    UNAVAILABLE."""

    def __init__(self, name: str):
        self.name, self.calls, self.broken, self.sampling = name, 0, False, []

    async def generate(self, prompt, *, adapter, timeout, messages=None, **sampling):
        self.calls += 1
        self.sampling.append(dict(sampling, messages=messages))
        if self.broken:
            from atoll.core.errors import Unavailable
            raise Unavailable(f"{self.name} is broken")
        said = f"chat:{messages[-1]['role']}:{messages[-1]['content']}" if messages else prompt   # a chat stage's
        for i in range(sampling.get("n", 1)):
            lp = lambda k: (TokenLogprob(k, -0.5 * k, f"t{k}", ((k, -0.5 * k, f"t{k}"),)),) if sampling.get(
                "logprobs") else ()
            who = self.name if i == 0 else f"{self.name}/{i}"
            yield Delta(f"{who}[", 1, 1, False, i, logprobs=lp(1))
            yield Delta(f"{said}]", 2, 2 + i, True, i, "length" if i else "stop", logprobs=lp(2))

    async def embed(self, text, *, adapter, timeout):
        return Embedding([0.0], 1)

    # the same engine behind a Worker service, for agents that call it over gRPC
    async def Generate(self, request, context):
        if self.broken:
            self.calls += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is broken")
        msgs = [{"role": m.role, "content": m.content} for m in request.messages] or None
        sp = request.sampling
        async for d in self.generate(request.prompt, adapter="", timeout=1, messages=msgs,
                                     max_tokens=None if sp.no_max_tokens else sp.max_tokens,
                                     temperature=round(sp.temperature, 4), stop=tuple(sp.stop),
                                     top_p=round(sp.top_p, 4), seed=sp.seed if sp.has_seed else None, n=sp.n or 1,
                                     logprobs=sp.logprobs, top_logprobs=sp.top_logprobs):
            yield delta_to_pb(d)

    async def Embed(self, request, context):
        raise NotImplementedError

    LoadAdapter = UnloadAdapter = ListAdapters = Embed


class Node:
    """``tls``: (server credentials, channel credentials) for mutual TLS between the agents."""

    def __init__(self, name: str, region: str, tls: tuple | None = None):
        self.name, self.region, self.fake, self.tls = name, region, Fake(name), tls
        self.address = ""
        self.dp = DataPlaneNode(node=lambda: NodeSelf(name, name, region, "datacenter"), local=self.fake,
                                local_address=lambda: self.address, connected=lambda: True,
                                credentials=tls[1] if tls else None)
        self.dp.plane.rng = None     # pick cycles start at their head: the tests name the replica that serves

    async def start(self):
        self.server = grpc.aio.server()
        add_service(self.server, self.fake, WORKER)
        self.dp.add_to_worker_server(self.server)
        port = (self.server.add_secure_port("127.0.0.1:0", self.tls[0]) if self.tls
                else self.server.add_insecure_port("127.0.0.1:0"))
        self.address = f"127.0.0.1:{port}"
        await self.server.start()

    async def stop(self):
        await self.dp.close()
        await self.server.stop(None)


def metric(node: Node, name: str, **labels) -> float:
    for fam in node.dp.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def fleet(break_sink: bool = False, chat: bool = False, tls=None):
    """``tls(name)``: a node's (server, channel) credentials, or None for plaintext."""
    a, b, c, d = (Node(n, r, tls(n) if tls else None) for n, r in (("a", "eu"), ("b", "us"), ("c", "ap"), ("d", "us")))
    for n in (a, b, c, d):
        await n.start()
    stages = (Stage("s1", "llm", "one({input})", ("users",), 4), Stage("s2", "llm", "two({input})", ("s1",), 4))
    if chat:                       # both stages send their prompt as one user message (a task's `chat: true`)
        stages = tuple(dataclasses.replace(st, chat=True) for st in stages)
    eps = [endpoint("r1", "s1", region="us", node="b", address=b.address, weight=10.0),
           endpoint("r1b", "s1", region="us", node="d", address=d.address, weight=1.0),
           endpoint("r2", "s2", region="ap", node="c", address=c.address)]
    flows = {("users", "s1"): [("eu/edge", "us/datacenter", 1.0)], ("s1", "s2"): [("us/datacenter", "ap/datacenter", 1.0)]}
    st = routing_state([route("wf", stages=stages, endpoints=eps, flows=flows)])
    for n in (a, b, c, d):
        n.dp.on_instruction({"routing": st})
        n.dp.on_instruction({"keys": key_set([])})
    c.fake.broken = break_sink
    entry = await a.dp.start_entry("127.0.0.1:0")
    return (a, b, c, d), entry


def invoke(entry: str, stream: bool, timeout: float = 10):
    async def go():
        async with grpc.aio.insecure_channel(entry) as ch:
            req = dp.invoke_request(workflow="wf", input_json='{"text": "hi"}', stream=stream, timeout_seconds=timeout,
                                    request_id="req-42")
            md = (("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"),)
            return [dp.answer_from_pb(m) async for m in dp.entry_stub(ch).Invoke(req, metadata=md)]
    return go()


def test_two_stages_hop_agent_to_agent_and_count_bytes(caplog):
    async def go():
        nodes, entry = await fleet()
        try:
            with caplog.at_level(logging.INFO, logger="atoll.agent"):
                answers = await invoke(entry, stream=True)
        finally:
            for n in nodes:
                await n.stop()
        return nodes, answers

    (a, b, c, d), answers = asyncio.run(go())
    *deltas, last = answers
    done, output, stages = last.done, last.output, last.stages
    assert done and output == {"text": "c[two(b[one(hi)])]"}
    assert "".join(d.delta.text for d in deltas) == output["text"]             # the sink's stream, relayed
    assert [(s.task, s.node_name, s.region) for s in stages] == [("s1", "b", "us"), ("s2", "c", "ap")]
    assert (b.fake.calls, c.fake.calls, d.fake.calls, a.fake.calls) == (1, 1, 0, 0)
    # bytes towards each stage, counted by the sender: the request eu -> us, s1's output us -> ap
    assert metric(a, "atoll_bytes_sent_total", from_region="eu", to_region="us") == len("hi")
    assert metric(b, "atoll_bytes_sent_total", from_region="us", to_region="ap") == len("b[one(hi)]")
    assert metric(a, "atoll_bytes_sent_total", from_region="us", to_region="ap") == 0    # never via the entry
    assert metric(a, "atoll_result_bytes_sent_total", from_region="us", to_region="eu") > 0
    # one trace: the client's trace id at the entry and the hop; the hop's parent is the entry's span
    recs = {r.getMessage(): r.fields for r in caplog.records if r.getMessage() in ("request", "hop")}
    assert recs["request"]["trace_id"] == recs["hop"]["trace_id"] == "ab" * 16
    assert recs["request"]["parent_span"] == "cd" * 8
    assert recs["hop"]["parent_span"] == recs["request"]["span_id"]
    assert recs["request"]["request_id"] == recs["hop"]["request_id"] == "req-42"


def test_stages_hop_over_mutual_tls_and_a_peer_without_the_fleets_certificate_is_refused(tmp_path):
    """Agents whose Worker servers ask for a client certificate signed by the fleet's CA, as an
    agent with --tls-ca/--tls-cert/--tls-key serves them: the request hops entry -> b -> c over
    mutual TLS; an entry whose certificate another CA signed gets no stage served."""
    import trustme

    from atoll.core.tls import channel_credentials, mutual_server_credentials

    ca, rogue = trustme.CA(), trustme.CA()
    files = {}
    for who, issuer in (("fleet", ca), ("rogue", rogue)):
        cert = issuer.issue_cert("127.0.0.1", "localhost")
        for part, blob in (("cert", cert.cert_chain_pems[0]), ("key", cert.private_key_pem)):
            files[who, part] = str(tmp_path / f"{who}.{part}.pem")
            blob.write_to_path(files[who, part])
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    def tls(entry_signer: str):
        def creds(name: str) -> tuple:
            who = entry_signer if name == "a" else "fleet"
            return (mutual_server_credentials(files["fleet", "cert"], files["fleet", "key"], str(tmp_path / "ca.pem")),
                    channel_credentials(str(tmp_path / "ca.pem"), files[who, "cert"], files[who, "key"]))
        return creds

    async def go(entry_signer: str):
        nodes, entry = await fleet(tls=tls(entry_signer))
        try:
            return nodes, await invoke(entry, stream=False, timeout=3)
        except grpc.aio.AioRpcError as exc:
            return nodes, exc
        finally:
            for n in nodes:
                await n.stop()

    (a, b, c, d), answers = asyncio.run(go("fleet"))
    assert answers[-1].output == {"text": "c[two(b[one(hi)])]"}
    assert [(s.task, s.node_name) for s in answers[-1].stages] == [("s1", "b"), ("s2", "c")]
    (a, b, c, d), refused = asyncio.run(go("rogue"))
    assert isinstance(refused, grpc.aio.AioRpcError), refused
    assert refused.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), refused
    assert (b.fake.calls, c.fake.calls, d.fake.calls) == (0, 0, 0)
    assert "all 2 replica(s) failed" in refused.details() and "UNAVAILABLE" in refused.details(), refused.details()


def test_a_later_stages_failure_is_not_retried_upstream():
    async def go():
        nodes, entry = await fleet(break_sink=True)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await invoke(entry, stream=False, timeout=2)
        finally:
            for n in nodes:
                await n.stop()
        return nodes, ei.value

    (a, b, c, d), err = asyncio.run(go())
    # s2's only replica failed: its agent waited for another until the deadline (issue 18), then
    # said which stage had none; the entry passed that back
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "stage s2" in err.details(), err.details()
    assert (b.fake.calls, c.fake.calls, d.fake.calls) == (1, 1, 0)      # s1 ran once: not redone on d


def test_chat_stages_send_their_prompt_as_a_user_message_in_process_and_over_the_wire():
    async def go():
        nodes, entry = await fleet(chat=True)
        try:
            return await invoke(entry, stream=False)
        finally:
            for n in nodes:
                await n.stop()

    last = asyncio.run(go())[-1]
    done, output, stages = last.done, last.output, last.stages
    # s1 ran in process on b (LocalEngine's path), s2 over gRPC on c (the Worker's messages field)
    assert done and output == {"text": "c[chat:user:two(b[chat:user:one(hi)])]"}
    assert [s.node_name for s in stages] == ["b", "c"]


def test_a_requests_settings_reach_the_last_stage_only_and_its_choices_come_back():
    """n, seed, top_p, stop, logprobs, max_tokens and temperature are the last stage's (here over the
    wire, Worker c); earlier stages keep the spec's (s1, in process on b). A chat reaches the entry
    stage, its last user message through the stage's template."""
    chat = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    sink = dp.Sink(max_tokens=9, temperature=0.7, top_p=0.5, seed=3, stop=("zz",), n=2, logprobs=True,
                   top_logprobs=1)

    async def go():
        nodes, entry = await fleet()
        try:
            async with grpc.aio.insecure_channel(entry) as ch:
                out = []
                for stream in (False, True):
                    req = dp.invoke_request(workflow="wf", input_json='{"text": "hi"}', stream=stream,
                                            timeout_seconds=10, request_id="r", sink=sink, messages=chat)
                    out.append([dp.answer_from_pb(m) async for m in dp.entry_stub(ch).Invoke(req)])
                return nodes, out
        finally:
            for n in nodes:
                await n.stop()

    (a, b, c, d), (whole, streamed) = asyncio.run(go())
    assert b.fake.sampling[0] == {"max_tokens": 4, "temperature": 0.0, "stop": (), "top_p": 1.0, "seed": None,
                                  "n": 1, "logprobs": False, "top_logprobs": 0,
                                  "messages": [chat[0], {"role": "user", "content": "one(hi)"}]}
    assert c.fake.sampling[0] == {"max_tokens": 9, "temperature": 0.7, "stop": ("zz",), "top_p": 0.5, "seed": 3,
                                  "n": 2, "logprobs": True, "top_logprobs": 1, "messages": None}
    done = whole[-1]
    assert len(whole) == 1 and done.output == {"text": "c[two(b[chat:user:one(hi)])]"}
    assert [(x.index, x.text, x.finish_reason, x.completion_tokens) for x in done.choices] == [
        (0, "c[two(b[chat:user:one(hi)])]", "stop", 2), (1, "c/1[two(b[chat:user:one(hi)])]", "length", 3)]
    assert [[lp.token_id for lp in x.logprobs] for x in done.choices] == [[1, 2], [1, 2]]
    assert done.stages[-1].completion_tokens == 5                       # every choice's tokens
    # streamed: every choice's deltas with their logprobs, then each choice's end without its text again
    *deltas, end = streamed
    texts = {i: "".join(x.delta.text for x in deltas if x.delta.index == i) for i in (0, 1)}
    assert texts == {0: done.choices[0].text, 1: done.choices[1].text}
    assert sum(len(x.delta.logprobs) for x in deltas) == 4
    assert [(x.index, x.text, x.finish_reason, x.logprobs) for x in end.choices] == [
        (0, "", "stop", ()), (1, "", "length", ())]


def test_the_agents_openai_door_serves_every_setting_through_its_entry():
    """The door's backend (the coordinator's too) on this agent's entry: choices, finish reasons,
    logprobs and usage of a completion and of a stream; OpenAI's defaults for a base:adapter model."""
    async def go():
        nodes, entry = await fleet()
        backend = entry_backend(nodes[0].dp.entry)
        try:
            req = GenRequest(model="wf", prompt="hi", n=2, seed=-1, logprobs=True, top_logprobs=1, stop=("zz",))
            whole = await backend.complete(req, None)
            events = [ev async for ev in backend.stream(dataclasses.replace(req, stream=True), None)]
            adapter = await backend.complete(GenRequest(model="base", prompt="hi"), None)
            chat = await backend.complete(GenRequest(model="base", messages=({"role": "user", "content": "hi"},)),
                                          None)
            with pytest.raises(InvalidArgument, match="ends in an llm stage: call /v1/completions"):
                await backend.embed(EmbedRequest("wf", ("x",)), None)
            with pytest.raises(InvalidArgument, match="token ids"):
                await backend.complete(GenRequest(model="wf", prompt=[1, 2]), None)
            return nodes, whole, events, adapter, chat
        finally:
            for n in nodes:
                await n.stop()

    (a, b, c, d), whole, events, adapter, chat = asyncio.run(go())
    assert [(x.index, x.text, x.finish_reason) for x in whole.choices] == [
        (0, "c[two(b[one(hi)])]", "stop"), (1, "c/1[two(b[one(hi)])]", "length")]
    assert (whole.prompt_tokens, whole.completion_tokens) == (2, 5) and len(whole.choices[1].logprobs) == 2
    assert c.fake.sampling[0]["seed"] == 2 ** 64 - 1 and c.fake.sampling[0]["stop"] == ("zz",)
    out = Collector(2)
    for ev in events:
        out.add(ev)
    assert [(x.text, x.finish_reason, len(x.logprobs)) for x in out.result().choices] == [
        (x.text, x.finish_reason, 2) for x in whole.choices]
    assert out.completion_tokens == 5
    # "base" names the bare base model on one stage: OpenAI's defaults, 16 tokens for a completion,
    # up to the end for a chat, temperature 1
    assert adapter.choices[0].text.endswith("[hi]")
    defaults = [s for n in (a, b, c, d) for s in n.fake.sampling if s["messages"] is None and s["n"] == 1]
    assert {(s["max_tokens"], s["temperature"]) for s in defaults[-1:]} == {(16, 1.0)}
    chats = [s for n in (a, b, c, d) for s in n.fake.sampling if s["messages"] == [{"role": "user", "content": "hi"}]]
    assert len(chats) == 1 and (chats[0]["max_tokens"], chats[0]["temperature"]) == (None, 1.0)
    assert chat.choices[0].text.endswith("[chat:user:hi]")


def test_an_entry_refuses_a_deadline_past_its_bound():
    """An invocation waits for a replica (a workflow at zero) until its deadline: a deadline of
    days would hold the request, and its polling, that long. The entry takes at most an hour."""
    async def go():
        nodes, entry = await fleet()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await invoke(entry, stream=False, timeout=1e9)
            ok = await invoke(entry, stream=False, timeout=3600)
        finally:
            for n in nodes:
                await n.stop()
        return ei.value, ok

    err, ok = asyncio.run(go())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 3600" in err.details(), err.details()
    assert ok and ok[-1].done


def test_a_template_that_repeats_its_input_is_refused_before_the_prompt_is_built():
    """A stage template may name {input} several times; one that names it thousands of times
    turned one request into hundreds of millions of characters on the serving host."""
    from atoll.agent.dataplane.chain import MAX_PROMPT_CHARS, fill
    from atoll.core.errors import InvalidArgument
    from atoll.specs.routing import Stage

    text = "x" * 200_000
    bomb = Stage(task="s1", kind="llm", prompt="{input}" * 2857, parents=("u",))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_PROMPT_CHARS}"):
        fill(bomb, text)
    ok = Stage(task="s1", kind="llm", prompt="Q: {input}\nA: {input}", parents=("u",))
    assert fill(ok, text) == f"Q: {text}\nA: {text}"
    assert fill(bomb, (1, 2, 3)) == (1, 2, 3)        # token ids go as they are


def test_a_grpc_chat_is_bounded_as_the_openai_door_bounds_it():
    """Entry.Invoke over gRPC skips the door's validation: its chat is bounded by the entry."""
    from atoll.agent.dataplane.entry import check_chat
    from atoll.core.errors import InvalidArgument
    from atoll.core.openai_api import MAX_MESSAGES, MAX_TEXT

    ok = [{"role": "user", "content": "x" * MAX_TEXT}] * 3
    assert check_chat(ok) is ok and check_chat(None) is None
    with pytest.raises(InvalidArgument, match=f"at most {MAX_MESSAGES}"):
        check_chat([{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1))
    with pytest.raises(InvalidArgument, match=f"chat message 1: at most {MAX_TEXT}"):
        check_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y" * (MAX_TEXT + 1)}])
    with pytest.raises(InvalidArgument, match="role"):
        check_chat([{"role": "wizard", "content": "x"}])
