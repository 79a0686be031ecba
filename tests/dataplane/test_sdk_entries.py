"""The SDK invokes at entries: its own region first, then the lowest round trip; an entry that
cannot be reached gives way to the next; with a region and no list, the coordinator is asked once per workflow."""

from __future__ import annotations

import concurrent.futures as cf

import grpc
import pytest

from atoll.client import Client
from atoll.core.rpc import add_service
from atoll.proto.v1 import control_pb2
from atoll.wire import dataplane as dp


class FakeEntry:
    def __init__(self, name: str, region: str):
        self.name, self.region, self.calls = name, region, 0

    def Describe(self, request, context):
        return dp.entry_to_pb(dp.EntryInfo(self.name, self.region, "datacenter", ""))

    def Invoke(self, request, context):
        self.calls += 1
        self.presented = dict(context.invocation_metadata()).get("authorization", "")
        yield dp.done_message({"text": f"from {self.name}"}, [dp.StageDone("gen", node_name=self.name)], "r", False)


class FakeCoordinator:
    """ListEntries as the coordinator answers it: each workflow's entries, in the region the
    coordinator knows each by, with a caller token for each."""

    def __init__(self, lists: dict[str, list[str]], regions: dict[str, str] | None = None):
        self.lists, self.asked, self.regions = lists, [], regions or {}

    def __getattr__(self, name):          # every other ClientService method: not here
        def unimplemented(request, context):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, name)
        return unimplemented

    def ListEntries(self, request, context):
        self.asked.append(request.workflow)
        return dp.entries_response([dp.EntryInfo(f"n{i}", self.regions.get(a, "eu-west"), "datacenter", a,
                                                 node_id=f"id{i}",
                                                 token=f"atc1.token-for-{request.workflow}-at-{a}")
                                    for i, a in enumerate(self.lists[request.workflow])])


def serve(entry, service=dp.ENTRY):
    server = grpc.server(cf.ThreadPoolExecutor(4))
    add_service(server, entry, service)
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


def test_entries_from_the_coordinator_are_asked_per_workflow_and_get_their_tokens(entries):
    """A trusted_only workflow's entries are not another workflow's: the client asks for each
    workflow's list and never sends one workflow's requests to another's entries; at each entry
    it presents the caller token the coordinator issued for it, never the API key."""
    (far, near), (far_addr, near_addr) = entries
    coord = FakeCoordinator({"open": [far_addr, near_addr], "secret": [far_addr]},
                            {far_addr: far.region, near_addr: near.region})
    server, addr = serve(coord, control_pb2.DESCRIPTOR.services_by_name["ClientService"])
    try:
        with Client(addr, region="eu-west", api_key="atoll_k_secret") as c:
            assert c.invoke("open", {"text": "x"})["output"]["text"] == "from near"
            assert near.presented == f"Bearer atc1.token-for-open-at-{near_addr}"
            assert c.invoke("secret", {"text": "x"})["output"]["text"] == "from far"
            assert far.presented == f"Bearer atc1.token-for-secret-at-{far_addr}"
            assert c.invoke("open", {"text": "x"})["output"]["text"] == "from near"
        assert coord.asked == ["open", "secret"] and (near.calls, far.calls) == (2, 1)
    finally:
        server.stop(None)
