"""Any READY host may report an entry address, a renter's included, so the list of entries a
client ranks can hold many that never answer. The SDK probes them all at once within one budget
(``atoll.client.RANK_BUDGET_S``), and at most ``MAX_RANKED`` of them: 30 entries that accept a
connection and then say nothing used to hold a client's first call 2 s each, one after another."""

from __future__ import annotations

import socket
import time
from concurrent import futures

import grpc
import pytest

from atoll import client as sdk
from atoll.proto.v1 import dataplane_pb2_grpc, routing_pb2


class _Describes(dataplane_pb2_grpc.EntryServicer):
    def __init__(self, region: str):
        self.region = region

    def Describe(self, request, context):
        return routing_pb2.EntryInfo(node_name="real", region=self.region, tier="datacenter")


def test_silent_entries_do_not_hold_the_first_call(monkeypatch):
    tarpits = []
    for _ in range(30):                     # TCP accepts (the kernel's backlog), nothing ever answers
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        tarpits.append(s)
    servers, real = [], []
    for region in ("us", "eu"):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        dataplane_pb2_grpc.add_EntryServicer_to_server(_Describes(region), server)
        real.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
    silent = [f"127.0.0.1:{s.getsockname()[1]}" for s in tarpits]
    c = sdk.Client("127.0.0.1:1", entries=silent + real, region="eu")
    try:
        t0 = time.monotonic()
        ranked = c._entry_targets("wf")
        took = time.monotonic() - t0
        assert ranked[:2] == [real[1], real[0]]            # this region's first, then the other answering one
        assert sorted(ranked[2:]) == sorted(silent)
        assert took < sdk.RANK_BUDGET_S + 2.0, took         # one budget for all (one by one: 30 x 2 s)
        monkeypatch.setattr(sdk, "MAX_RANKED", 3)
        c2 = sdk.Client("127.0.0.1:1", entries=real + silent, region="us")
        t0 = time.monotonic()
        ranked = c2._entry_targets("wf")
        assert time.monotonic() - t0 < sdk.RANK_BUDGET_S + 2.0
        assert ranked[:2] == real and ranked[2] == silent[0]   # probed, then unprobed in the given order
        assert ranked[3:] == silent[1:]
        c2.close()
    finally:
        c.close()
        for server in servers:
            server.stop(0)
        for s in tarpits:
            s.close()


def test_the_coordinator_passes_over_an_entry_that_accepts_and_never_answers():
    """The coordinator's forwarder tries the source region's entries in turn: an entry address
    that accepts connections and then says nothing held a forwarded request 20 s (gRPC's connect
    timeout) before it went on to the next; peer channels give a connection 5 s."""
    import asyncio

    from atoll.coordinator.forward import EntryForwarder
    from atoll.core.rpc import add_service
    from atoll.wire.dataplane import ENTRY, EntryInfo, Invocation, done_message

    class Steady:
        async def Invoke(self, request, context):
            yield done_message({"text": "answered"}, [], request.request_id, False)

        async def Describe(self, request, context):
            raise NotImplementedError

    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(16)

    async def go():
        server = grpc.aio.server()
        add_service(server, Steady(), ENTRY)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        infos = [EntryInfo("silent", "eu", "renter", f"127.0.0.1:{tarpit.getsockname()[1]}", "n1"),
                 EntryInfo("real", "eu", "datacenter", f"127.0.0.1:{port}", "n2")]
        fw = EntryForwarder(lambda region, workflow: infos)
        fw.order = lambda region, workflow: infos            # the silent one first, as its turn comes
        t0 = time.monotonic()
        try:
            inv = Invocation(workflow="wf", input_json='{"text": "q"}', stream=False, timeout_seconds=30,
                             request_id="r1")
            got = [m async for m in fw.invoke(inv, region="eu", timeout=30, metadata=())]
        finally:
            await fw.close()
            await server.stop(None)
        return got, time.monotonic() - t0

    try:
        got, took = asyncio.run(go())
    finally:
        tarpit.close()
    assert got and got[-1].done and "answered" in got[-1].output_json
    assert 4.0 < took < 9.0, took


def test_the_sdk_ranks_by_the_region_the_coordinator_lists_not_the_one_an_entry_claims():
    """A renter the coordinator knows in ap-south answered Describe with the client's region and
    ranked with the real datacenter entry there."""
    servers, addrs = [], []
    for region in ("us-east", "us-east"):               # the second one lies: it is in ap-south
        server = grpc.server(futures.ThreadPoolExecutor(2))
        dataplane_pb2_grpc.add_EntryServicer_to_server(_Describes(region), server)
        addrs.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
    c = sdk.Client("127.0.0.1:1", region="us-east")
    try:
        c._listed_regions.update({addrs[0]: "us-east", addrs[1]: "ap-south"})
        c._rank(addrs[::-1])
        assert c._ranks[addrs[0]][0] == 0 and c._ranks[addrs[1]][0] == 1
    finally:
        c.close()
        for server in servers:
            server.stop(0)


def test_an_entrys_answer_is_decoded_only_when_it_is_a_bounded_json_object():
    """A 14 MiB answer of empty objects took a client from 53 to 447 MiB when decoded whole, and
    a list where callers expect an object passed through; a streamed call read on past the
    final message."""
    from atoll.core.errors import AtollError
    from atoll.wire.dataplane import MAX_OUTPUT_CONTAINERS, output_from_json

    assert output_from_json('{"text": "hi"}') == {"text": "hi"} and output_from_json("") == {}
    for bad, why in (("[" + "{}," * MAX_OUTPUT_CONTAINERS + "{}]", "arrays and objects"),
                     ('["a"]', "not an object"), ("{nope", "not JSON")):
        with pytest.raises(AtollError, match=why):
            output_from_json(bad)


def test_a_streamed_call_reads_nothing_after_its_final_message():
    from atoll.proto.v1 import control_pb2

    class Chatty(_Describes):
        sent = 0

        def Invoke(self, request, context):
            yield control_pb2.InvokeResponse(text="hel")
            for i in range(3):                              # a final answer, then more of them
                Chatty.sent += 1
                yield control_pb2.InvokeResponse(done=True, output_json=f'{{"text": "answer {i}"}}')

    server = grpc.server(futures.ThreadPoolExecutor(2))
    dataplane_pb2_grpc.add_EntryServicer_to_server(Chatty("eu"), server)
    addr = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    c = sdk.Client("127.0.0.1:1", entries=[addr], region="eu")
    try:
        items = list(c.invoke("wf", "hi", stream=True, timeout=10))
        assert items[0] == "hel" and len(items) == 2 and items[1]["output"] == {"text": "answer 0"}
    finally:
        c.close()
        server.stop(0)
