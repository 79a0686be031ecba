"""ListEntries walks every node and mints a caller token per entry on the coordinator's event
loop. With 1,000 entry hosts that took about 20 ms a call (80 ms the first), and 4 threads of one
user key calling it in a loop, a new connection each time, took another tenant's ListWorkflows
from a p50 of 1.9 ms to 58 ms, 273 ms at worst (a real coordinator, audit 7). An answer is now kept
a second per API key and kind of workflow: calls within it cost a lookup, whatever region they
name, and never hand one key's tokens to another."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from atoll.core.apikeys import Identity
from atoll.proto.v1 import control_pb2
from atoll.wire.dataplane import EntryInfo
from atoll.coordinator import auth
from atoll.coordinator.client_api import ENTRY_LIST_FRESH_S, ClientApi

NODES = [EntryInfo(f"n{i:03d}", "eu-west" if i % 3 == 0 else "us-east", "datacenter", f"10.0.0.{i}:7001", f"id{i}")
         for i in range(30)]


class Fleet:
    def __init__(self):
        self.walks = 0
        self.minted = 0

    def entries(self, region: str, workflow: str = ""):
        self.walks += 1
        found = list(NODES)
        return sorted(found, key=lambda e: (bool(region) and e.region != region, e.node_name))

    def mint(self, ident: Identity, node_id: str) -> str:
        self.minted += 1
        return f"token-of-{ident.key_id}-for-{node_id}"


def listing(api: ClientApi, ident: Identity, region: str = "", workflow: str = ""):
    async def call():
        reset = auth.current.set(ident)
        try:
            return await api.ListEntries(control_pb2.ListEntriesRequest(region=region, workflow=workflow), None)
        finally:
            auth.current.reset(reset)
    return asyncio.run(call())


def api_for(fleet: Fleet, now: list[float]) -> ClientApi:
    workflows = SimpleNamespace(get=lambda name: None,
                                spec=lambda name: SimpleNamespace(placement=SimpleNamespace(trusted_only=False)))
    return ClientApi(registry=None, workflows=workflows, entries=fleet.entries, mint=fleet.mint,
                     clock=lambda: now[0])


def test_one_keys_calls_in_a_loop_walk_the_fleet_once_a_second_whatever_region_they_name():
    fleet, now = Fleet(), [100.0]
    api = api_for(fleet, now)
    a = Identity("ka", "team-a", "user")
    regions = ["", "eu-west", "us-east", "nowhere", "x" * 200] * 10
    answers = [listing(api, a, r) for r in regions]
    assert (fleet.walks, fleet.minted) == (1, len(NODES)), \
        f"{len(regions)} calls walked the fleet {fleet.walks} times and minted {fleet.minted} tokens"
    for r, ans in zip(regions, answers):         # each in the order the region asks for
        want = fleet.entries(r if r in ("eu-west", "us-east") else "")
        assert [e.node_name for e in ans.entries] == [e.node_name for e in want]
        assert all(e.token == f"token-of-ka-for-{e.node_id}" for e in ans.entries)
    now[0] += ENTRY_LIST_FRESH_S + 0.01           # stale: walked again
    listing(api, a)
    assert fleet.walks == 1 + 1 + len(regions)    # (the checks above walked too)


def test_another_key_never_gets_the_first_keys_tokens():
    fleet, now = Fleet(), [100.0]
    api = api_for(fleet, now)
    listing(api, Identity("ka", "team-a", "user"))
    ans = listing(api, Identity("kb", "team-b", "user"))
    assert all(e.token == f"token-of-kb-for-{e.node_id}" for e in ans.entries)
    ans = listing(api, Identity("ka", "team-a", "admin"))      # same id, another role: its own
    assert fleet.walks == 3 and all(e.token == f"token-of-ka-for-{e.node_id}" for e in ans.entries)
