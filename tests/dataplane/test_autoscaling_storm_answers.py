"""A preempted entry can vanish after sending a request's whole answer and before the call's
status: the coordinator's forwarder and the SDK's entry client keep that answer (it was lost as UNAVAILABLE "Cancelling
all calls" in issue 18's storm); an entry that vanishes before the answer is complete still
gives way to the next entry. Real gRPC entries on loopback."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from atoll.client import Client
from atoll.coordinator.forward import EntryForwarder
from atoll.core.errors import Unavailable
from atoll.core.rpc import add_service
from atoll.proto.v1 import control_pb2
from atoll.wire.dataplane import ENTRY, EntryInfo, Invocation, done_message


class Vanishing:
    """An entry that answers (whole, or only a first delta) and then goes away."""

    def __init__(self, whole: bool):
        self.whole, self.calls = whole, 0

    async def Invoke(self, request, context):
        self.calls += 1
        if self.whole:
            yield done_message({"text": "the answer"}, [], request.request_id, False)
        else:
            yield control_pb2.InvokeResponse(text="the ans", request_id=request.request_id)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")

    async def Describe(self, request, context):
        raise NotImplementedError


class Steady(Vanishing):
    async def Invoke(self, request, context):
        self.calls += 1
        yield done_message({"text": "from the next entry"}, [], request.request_id, False)


async def serve(entry) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add_service(server, entry, ENTRY)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("whole", [True, False])
def test_an_answer_that_came_whole_stands_when_its_entry_vanishes(whole):
    async def go():
        first, second = Vanishing(whole), Steady(True)
        (s1, a1), (s2, a2) = await serve(first), await serve(second)
        infos = [EntryInfo("e1", "eu", "renter", a1), EntryInfo("e2", "eu", "renter", a2)]
        fw = EntryForwarder(lambda region, workflow: infos)
        got, err = [], None
        try:
            inv = Invocation(workflow="wf", input_json='{"text": "q"}', stream=False, timeout_seconds=5,
                             request_id="r1")
            async for m in fw.invoke(inv, region="eu", timeout=5, metadata=()):
                got.append(m)
        except Unavailable as exc:
            err = exc
        finally:
            await fw.close()
            await s1.stop(None)
            await s2.stop(None)
        return got, err, first.calls, second.calls

    got, err, first_calls, second_calls = asyncio.run(go())
    if whole:                                        # the caller keeps its answer; nothing is redone
        assert err is None and [m.done for m in got] == [True] and "the answer" in got[0].output_json
        assert (first_calls, second_calls) == (1, 0)
    else:                                            # a partial answer is not replayed elsewhere
        assert isinstance(err, Unavailable) and "Cancelling all calls" in str(err)
        assert [m.text for m in got] == ["the ans"] and (first_calls, second_calls) == (1, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_the_sdk_keeps_an_answer_that_came_whole_when_its_entry_vanishes(stream):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    entry = Vanishing(True)
    server, address = asyncio.run_coroutine_threadsafe(serve(entry), loop).result(10)
    try:
        with Client("127.0.0.1:1", entries=address, timeout=5) as c:
            if stream:
                parts = list(c.invoke("wf", {"text": "q"}, stream=True))
                assert parts and "the answer" in str(parts[-1]), parts
            else:
                assert c.invoke("wf", {"text": "q"})["output"] == {"text": "the answer"}
        assert entry.calls == 1                      # answered once, not asked again
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
