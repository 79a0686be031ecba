"""A preemption storm seen from an entry: every replica of a stage is lost at once and the
replacements are still starting. A request that finds no replica left to try waits for the
routing state to bring one, up to its deadline, instead of failing (the storm of issue 18 lost
requests that way); with none by the deadline it says so. Real agents' data planes and Worker
servers on loopback."""

from __future__ import annotations

import asyncio
import time

import grpc

from atoll.core.apikeys import key_set
from atoll.specs.routing import routing_state
from atoll.wire import dataplane as dp

from .helpers import endpoint, route
from .test_hops import Node


def invoke(entry: str, timeout: float):
    async def go():
        async with grpc.aio.insecure_channel(entry) as ch:
            req = dp.invoke_request(workflow="wf", input_json='{"text": "hi"}', stream=False,
                                    timeout_seconds=timeout, request_id="req-storm")
            return [dp.answer_from_pb(m) async for m in dp.entry_stub(ch).Invoke(req)]
    return go()


def publish(nodes, eps) -> None:
    st = routing_state([route("wf", endpoints=eps)])
    for n in nodes:
        n.dp.on_instruction({"routing": st})
        n.dp.on_instruction({"keys": key_set([])})


def test_a_request_with_every_replica_lost_waits_for_a_replacement():
    async def go():
        a, b, c = Node("a", "eu"), Node("b", "eu"), Node("c", "eu")
        for n in (a, b, c):
            await n.start()
        try:
            b.fake.broken = True                      # the only replica: lost (UNAVAILABLE)
            publish((a, b, c), [endpoint("r-b", "gen", node="b", address=b.address)])
            entry = await a.dp.start_entry("127.0.0.1:0")
            t0 = time.monotonic()
            call = asyncio.ensure_future(invoke(entry, timeout=10))
            await asyncio.sleep(0.6)                   # the replacement starts serving a moment later
            assert not call.done()                     # waiting, not failed
            publish((a, b, c), [endpoint("r-c", "gen", node="c", address=c.address)])
            answer = await call
            return answer, time.monotonic() - t0, b.fake.calls, c.fake.calls
        finally:
            for n in (a, b, c):
                await n.stop()

    answer, seconds, b_calls, c_calls = asyncio.run(go())
    last = answer[-1]
    assert last.done and last.output["text"] == "c[hi]"
    assert b_calls == 1 and c_calls == 1 and 0.6 <= seconds < 3.0


def test_with_no_replica_by_the_deadline_the_request_says_so():
    async def go():
        a = Node("a", "eu")
        await a.start()
        try:
            publish((a,), [])                          # every replica gone, none coming
            entry = await a.dp.start_entry("127.0.0.1:0")
            t0 = time.monotonic()
            try:
                await invoke(entry, timeout=1.5)
            except grpc.aio.AioRpcError as exc:
                return exc, time.monotonic() - t0
            raise AssertionError("answered without a replica")
        finally:
            await a.stop()

    err, seconds = asyncio.run(go())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert "stage gen: no ready replica" in err.details() and "before the deadline" in err.details()
    assert 0.9 <= seconds < 3.0                   # it waited, and answered just before the deadline
