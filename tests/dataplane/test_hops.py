"""Stage to stage, agent to agent, on loopback: the entry hands the request to the first stage's
agent, which runs it and calls the next stage's Worker; bytes are counted per region pair by the
agent that sends them; a later stage's failure is not retried by the entry; request id and
trace context reach every hop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import pytest

from atoll.agent.dataplane.chain import NodeSelf
from atoll.agent.dataplane.node import DataPlaneNode
from atoll.core.apikeys import key_set
from atoll.core.rpc import add_service
from atoll.proto.v1 import worker_pb2
from atoll.specs.routing import Stage, routing_state
from atoll.wire import dataplane as dp
from atoll.wire.worker import SERVICE as WORKER, Delta

from .helpers import endpoint, route


class Fake:
    """A node's engine: answers ``<task>@<node>[<prompt>]``; ``broken`` answers UNAVAILABLE."""

    def __init__(self, name: str):
        self.name, self.calls, self.broken = name, 0, False

    async def generate(self, prompt, *, adapter, max_tokens, temperature, stop, timeout, messages=None):
        self.calls += 1
        if self.broken:
            from atoll.core.errors import Unavailable
            raise Unavailable(f"{self.name} is broken")
        yield Delta(f"{self.name}[", 1, 1, False)
        said = f"chat:{messages[-1]['role']}:{messages[-1]['content']}" if messages else prompt   # a chat stage's
        yield Delta(f"{said}]", 2, 2, True)

    async def embed(self, text, *, adapter, timeout):
        return [0.0]

    # the same engine behind a Worker service, for agents that call it over gRPC
    async def Generate(self, request, context):
        if self.broken:
            self.calls += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is broken")
        msgs = [{"role": m.role, "content": m.content} for m in request.messages] or None
        async for d in self.generate(request.prompt, adapter="", max_tokens=0, temperature=0, stop=(), timeout=1,
                                     messages=msgs):
            yield worker_pb2.GenerateResponse(text=d.text, finished=d.finished, prompt_tokens=d.prompt_tokens,
                                              completion_tokens=d.completion_tokens)

    async def Embed(self, request, context):
        raise NotImplementedError

    LoadAdapter = UnloadAdapter = ListAdapters = Embed


class Node:
    def __init__(self, name: str, region: str):
        self.name, self.region, self.fake = name, region, Fake(name)
        self.address = ""
        self.dp = DataPlaneNode(node=lambda: NodeSelf(name, name, region, "datacenter"), local=self.fake,
                                local_address=lambda: self.address, connected=lambda: True)

    async def start(self):
        self.server = grpc.aio.server()
        add_service(self.server, self.fake, WORKER)
        self.dp.add_to_worker_server(self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
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


async def fleet(break_sink: bool = False, chat: bool = False):
    a, b, c, d = Node("a", "eu"), Node("b", "us"), Node("c", "ap"), Node("d", "us")
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
                                    request_id="req-42", max_tokens=0, temperature=None)
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
    *deltas, (_, done, output, stages) = answers
    assert done and output == {"text": "c[two(b[one(hi)])]"}
    assert "".join(t for t, *_ in deltas) == output["text"]                   # the sink's stream, relayed
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

    *_, (_, done, output, stages) = asyncio.run(go())
    # s1 ran in process on b (LocalEngine's path), s2 over gRPC on c (the Worker's messages field)
    assert done and output == {"text": "c[chat:user:two(b[chat:user:one(hi)])]"}
    assert [s.node_name for s in stages] == ["b", "c"]
