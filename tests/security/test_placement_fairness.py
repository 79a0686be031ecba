"""Placements that commit go one at a time (the placement lock), and the turns go round the
tenants: tenant A's many deploying submits delay tenant B's one by at most the placement under way.

Before this the lock was an ``asyncio.Lock`` (first come, first served): B's submit waited for
every one of A's placements queued before it (the test below fails there: B came after all 5)."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from atoll.coordinator.fairness import SYSTEM, FairLock, FairQueue
from atoll.coordinator.join_tokens import hash_token
from atoll.coordinator.placement import place
from atoll.coordinator.registry import Registry
from atoll.coordinator.store import SqliteStore
from atoll.coordinator.workflows import WorkflowManager
from atoll.core import credentials as cred
from atoll.core.errors import ResourceExhausted

TOKEN = "join-token-fair-placement"
PLACE_S = 0.3          # how long each placement holds the lock here (a real one: up to 120 s)


class SlowPlacements:
    """A planner that runs every call here, each placement after ``PLACE_S``: what it records is
    the order the placements held the lock in."""

    def __init__(self):
        self.order: list[str] = []

    async def run(self, fn, *args, on_behalf_of: str = SYSTEM, first: bool = False, **kw):
        if fn is place:
            self.order.append(args[0])
            await asyncio.sleep(PLACE_S)
        return fn(*args, **kw)


def spec(tmp_path, name: str) -> str:
    return yaml.safe_dump({"name": name, "sources": [{"name": "u", "rate": 2, "region": "us-east", "tier": "datacenter"}],
                           "tasks": [{"name": "chat", "variants": [{"name": "v", "model": str(tmp_path / "model"),
                                                                    "accuracy": 0.9, "throughput": {"a100": 20}}]}],
                           "edges": [{"from": "u", "to": "chat"}]})


def manager(tmp_path, nodes: int, planner) -> WorkflowManager:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    store = SqliteStore(tmp_path / "s.db")
    reg = Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0)
    for i in range(nodes):
        reg.register(TOKEN, "", {"name": f"gpu-{i}", "tier": "datacenter", "region": "us-east",
                                 "price_per_hour": 2.0 + 0.1 * i, "labels": {"hardware": "a100"}},
                     {"gpus": [{"name": "a100", "memory_total_bytes": 80 << 30, "memory_free_bytes": 80 << 30}]},
                     {"worker_address": f"10.0.0.{i}:7000", "queue_depth": 0},
                     cred.make_proof(cred.new_private_key(), "", time.time()))
    return WorkflowManager(store, reg, planner=planner)


def test_one_tenants_deploying_submits_delay_anothers_by_at_most_the_placement_under_way(tmp_path):
    n = 5
    planner = SlowPlacements()
    wm = manager(tmp_path, n + 2, planner)

    async def main():
        flood = [asyncio.ensure_future(wm.submit(spec(tmp_path, f"a-{i}"), f"a-{i}.yaml", tenant="team-a"))
                 for i in range(n)]
        while not planner.order:                 # A's first placement holds the lock
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        rec = await wm.submit(spec(tmp_path, "b-0"), "b-0.yaml", tenant="team-b")
        waited = time.monotonic() - t0
        await asyncio.gather(*flood)
        return rec, waited

    rec, waited = asyncio.run(main())
    assert rec.state == "DEPLOYING" and rec.assignments
    before_b = planner.order[:planner.order.index("b-0")]
    msg = (f"tenant B's submit waited {waited:.2f} s (one placement takes {PLACE_S} s) behind {len(before_b)} of "
           f"tenant A's {n} placements; order {planner.order}")
    print("\n" + msg)
    assert len(before_b) <= 1 and waited < 2.5 * PLACE_S, msg
    assert sorted(planner.order) == sorted([f"a-{i}" for i in range(n)] + ["b-0"])   # one each, all placed


# ---------------------------------------------------------------------- the turns, pure and asyncio
def test_a_newcomer_goes_before_a_caller_that_already_had_its_turn():
    q: FairQueue[str] = FairQueue(max_running_each=1, max_waiting_each=8)
    for i in range(3):
        q.add("a", f"a{i}")
    assert q.next() == ("a", "a0")
    q.add("b", "b0")                          # b arrives while a's first runs, a has 2 more waiting
    q.done("a")
    assert q.next() == ("b", "b0")
    q.done("b")
    q.add("a", "a-urgent", first=True)        # ahead of a's own, never of another tenant's turn
    assert [q.next(), q.done("a"), q.next()] == [("a", "a-urgent"), None, ("a", "a1")]


def test_the_lock_takes_turns_by_tenant_and_a_waiter_that_leaves_gives_its_turn_back():
    async def main():
        lock = FairLock(max_waiting_each=2)
        order: list[str] = []
        release = asyncio.Event()

        async def hold(who: str, tag: str):
            async with lock.hold(who):
                order.append(tag)
                await release.wait()

        first = asyncio.ensure_future(hold("a", "a0"))
        await asyncio.sleep(0)
        assert lock.locked()
        waiters = [asyncio.ensure_future(hold("a", f"a{i}")) for i in (1, 2)]
        leaver = asyncio.ensure_future(hold("b", "b-gone"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="tenant 'a' already has 2 placements waiting"):
            async with lock.hold("a"):
                pass
        leaver.cancel()
        b = asyncio.ensure_future(hold("b", "b0"))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *waiters, b)
        await asyncio.gather(leaver, return_exceptions=True)
        assert not lock.locked()
        return order

    assert asyncio.run(main()) == ["a0", "b0", "a1", "a2"]
