"""Any READY host may report an entry address, a renter's included, so the list of entries a
client ranks can hold many that never answer. The SDK probes them all at once within one budget
(``atoll.client.RANK_BUDGET_S``), and at most ``MAX_RANKED`` of them: 30 entries that accept a
connection and then say nothing used to hold a client's first call 2 s each, one after another."""

from __future__ import annotations

import socket
import time
from concurrent import futures

import grpc

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
