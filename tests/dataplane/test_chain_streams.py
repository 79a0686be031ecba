"""The data plane against real Worker gRPC servers on loopback: a replica that fails before its
first token is retried on another (and excluded for a while); a stream cut off after its first
tokens is reported as cut off (its partial output is never silently replayed or completed
elsewhere)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from atoll.agent.dataplane.chain import DataPlane, NodeSelf, Request
from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.table import CompiledRoute
from atoll.agent.dataplane.trace import start_span
from atoll.core.errors import ResourceExhausted, Unavailable, request_fault
from atoll.core.rpc import add_service, handle_errors
from atoll.proto.v1 import worker_pb2
from atoll.specs.routing import Endpoint, Route, Stage
from atoll.wire.worker import WorkerClient

WORKER = worker_pb2.DESCRIPTOR.services_by_name["Worker"]


class Worker:
    """``mode``: ok | dies_before (UNAVAILABLE before any token) | dies_after (one token, then
    UNAVAILABLE, as when the host vanishes mid-stream)."""

    def __init__(self, mode: str):
        self.mode, self.calls = mode, 0

    @handle_errors
    async def Generate(self, request, context):
        self.calls += 1
        if self.mode == "too_long_here":            # as an engine whose KV cache cannot ever hold it
            raise request_fault(ResourceExhausted("request needs 9000 KV-cache tokens but the cache holds only 512"))
        if self.mode == "dies_before":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "host is going away")
        yield worker_pb2.GenerateResponse(text="partial ", prompt_tokens=3, completion_tokens=1)
        if self.mode == "dies_after":
            await asyncio.sleep(0.05)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "host vanished")
        yield worker_pb2.GenerateResponse(text="answer", finished=True, finish_reason="length",
                                          prompt_tokens=3, completion_tokens=2)

    async def LoadAdapter(self, request, context):
        raise NotImplementedError

    UnloadAdapter = ListAdapters = Embed = LoadAdapter


async def serve(modes: list[str]):
    servers, workers, eps = [], [], []
    for i, mode in enumerate(modes):
        server = grpc.aio.server()
        w = Worker(mode)
        add_service(server, w, WORKER)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        workers.append(w)
        # the first endpoint weighs most, so the router tries it first
        eps.append(Endpoint(replica_id=f"r{i}", task="chat", variant="v", node_id=f"n{i}", node_name=f"node-{i}",
                            region="eu", address=f"127.0.0.1:{port}", weight=10.0 if i == 0 else 1.0, adapter=""))
    route = Route("wf", [Stage("chat", "llm", "{input}", ("users",), max_tokens=4)], {"chat": eps}, "eu", "chat")
    return servers, workers, route


def run(coro):
    return asyncio.run(coro)


class Router:
    """The data plane of an agent that holds no replica (every stage runs elsewhere)."""

    def __init__(self):
        self.plane = DataPlane(lambda: NodeSelf("entry-node", "entry", "eu", "datacenter"), None, WorkerClient(),
                               DataPlaneMetrics())

    async def invoke(self, route, text, *, deadline, on_delta=None):
        req = Request(route.workflow, text, deadline, start_span((), "test"), stream=on_delta is not None)
        return await self.plane.run(CompiledRoute(route), 0, req, {}, "", on_delta)

    async def close(self):
        await self.plane.workers.close()


def test_failure_before_the_first_token_is_retried_on_another_replica():
    async def go():
        servers, workers, route = await serve(["dies_before", "ok"])
        router = Router()
        try:
            deltas = []

            async def on_delta(d):
                deltas.append(d.text)

            res = await router.invoke(route, "hi", deadline=time.monotonic() + 10, on_delta=on_delta)
        finally:
            await router.close()
            for s in servers:
                await s.stop(None)
        return res, workers, deltas

    res, workers, deltas = run(go())
    assert res.output == "partial answer" and deltas == ["partial ", "answer"]
    assert res.stages[0].attempts == 2 and res.stages[0].node_name == "node-1"
    assert [w.calls for w in workers] == [1, 1]
    assert (res.stages[0].prompt_tokens, res.stages[0].completion_tokens) == (3, 2)


def test_stream_cut_off_after_its_first_tokens_says_so():
    async def go():
        servers, workers, route = await serve(["dies_after", "ok"])
        router = Router()
        deltas = []

        async def on_delta(d):
            deltas.append(d.text)

        try:
            with pytest.raises(Unavailable) as ei:
                await router.invoke(route, "hi", deadline=time.monotonic() + 10, on_delta=on_delta)
        finally:
            await router.close()
            for s in servers:
                await s.stop(None)
        return ei.value, workers, deltas

    err, workers, deltas = run(go())
    assert "cut off" in str(err) and "node-0" in str(err)
    assert deltas == ["partial "]                  # what the caller already has, nothing more
    assert [w.calls for w in workers] == [1, 0]    # not replayed on the other replica


def test_unstreamed_request_cut_off_mid_answer_is_retried():
    """Without streaming nothing reached the caller yet, so the whole request is retried."""
    async def go():
        servers, workers, route = await serve(["dies_after", "ok"])
        router = Router()
        try:
            res = await router.invoke(route, "hi", deadline=time.monotonic() + 10)
        finally:
            await router.close()
            for s in servers:
                await s.stop(None)
        return res, workers

    res, workers = run(go())
    assert res.output == "partial answer" and res.stages[0].attempts == 2
    assert [w.calls for w in workers] == [1, 1]


def test_a_request_that_fails_by_its_own_fault_moves_on_without_taking_the_replica_out():
    """A request too long for a replica's KV cache (``request_fault``) is tried on the next
    replica, but the replica stays in rotation: before, it was excluded for 10 s, so one caller's
    oversized request made every other request through that entry wait for a replica. When every
    replica fails it so, the caller hears why at once, not at its deadline."""
    async def go():
        servers, workers, route = await serve(["too_long_here", "ok"])
        router = Router()
        try:
            res = await router.invoke(route, "hi", deadline=time.monotonic() + 10)
            excluded = list(router.plane.excluded.active())
            again = await router.invoke(route, "hi", deadline=time.monotonic() + 10)
        finally:
            await router.close()
            for s in servers:
                await s.stop(None)
        servers, _, route = await serve(["too_long_here", "too_long_here"])
        router = Router()
        t0 = time.monotonic()
        try:
            with pytest.raises(ResourceExhausted, match="KV-cache tokens") as ei:
                await router.invoke(route, "hi", deadline=time.monotonic() + 30)
        finally:
            await router.close()
            for s in servers:
                await s.stop(None)
        return res, excluded, again, workers, time.monotonic() - t0, list(router.plane.excluded.active())

    res, excluded, again, workers, took, excluded_after = run(go())
    assert res.output == "partial answer" and res.stages[0].node_name == "node-1" and res.stages[0].attempts == 2
    assert excluded == [] and excluded_after == []
    assert again.stages[0].attempts == 2 and workers[0].calls == 2   # node-0 still tried first: still in rotation
    assert took < 5, took                                            # at once, not at the 30 s deadline
