"""The SDK invokes at entries: its own region first, then the lowest round trip; an entry that
cannot be reached gives way to the next; with a region and no list, the coordinator is asked once."""

from __future__ import annotations

import concurrent.futures as cf

import grpc
import pytest

from atoll.client import Client
from atoll.core.rpc import add_service
from atoll.wire import dataplane as dp


class FakeEntry:
    def __init__(self, name: str, region: str):
        self.name, self.region, self.calls = name, region, 0

    def Describe(self, request, context):
        return dp.entry_to_pb(dp.EntryInfo(self.name, self.region, "datacenter", ""))

    def Invoke(self, request, context):
        self.calls += 1
        yield dp.done_message({"text": f"from {self.name}"}, [dp.StageDone("gen", node_name=self.name)], "r", False)


def serve(entry: FakeEntry):
    server = grpc.server(cf.ThreadPoolExecutor(4))
    add_service(server, entry, dp.ENTRY)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def entries():
    made = [FakeEntry("far", "us-west"), FakeEntry("near", "eu-west")]
    servers = [serve(e) for e in made]
    yield made, [addr for _, addr in servers]
    for s, _ in servers:
        s.stop(None)


def test_prefers_its_region_then_fails_over(entries):
    (far, near), (far_addr, near_addr) = entries
    with Client("127.0.0.1:1", entries=f"{far_addr},{near_addr}", region="eu-west", api_key="") as c:
        assert c.invoke("wf", {"text": "x"})["output"]["text"] == "from near"
        assert (near.calls, far.calls) == (1, 0)
    dead = "127.0.0.1:9"                          # nothing listens there
    with Client("127.0.0.1:1", entries=f"{dead},{far_addr}", region="eu-west", api_key="", timeout=5) as c:
        assert c.invoke("wf", {"text": "x"}, timeout=5)["output"]["text"] == "from far"
        assert c._entry_list[-1] == dead         # ranked last: it did not answer Describe


def test_streams_from_an_entry(entries):
    (_, near), (_, near_addr) = entries
    with Client("127.0.0.1:1", entries=near_addr, api_key="") as c:
        items = list(c.invoke("wf", {"text": "x"}, stream=True))
    assert items[-1]["output"] == {"text": "from near"}
