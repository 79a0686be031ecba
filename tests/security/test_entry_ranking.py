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
