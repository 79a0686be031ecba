"""Leader election on a real PostgreSQL: one leader, a standby that knows where it is, and a
fast hand-over when the leader's lock connection dies."""

from __future__ import annotations

import asyncio
import time

import psycopg

from atoll.coordinator.leader import AdvisoryLockLeadership
from atoll.coordinator.store_pg import PostgresStore


def test_one_leader_standby_knows_it_and_takes_over(pg_url):
    PostgresStore(pg_url).close()          # the schema (meta table)

    async def main():
        events: list[tuple[str, str, float]] = []

        def make(addr):
            async def elected():
                events.append(("elected", addr, time.monotonic()))

            async def lost(why):
                events.append(("lost", addr, time.monotonic()))
            return AdvisoryLockLeadership(pg_url, addr, on_elected=elected, on_lost=lost, poll=0.2, check=0.3)

        a, b = make("a:1"), make("b:2")
        ta = asyncio.create_task(a.run())
        for _ in range(50):
            if a.is_leader:
                break
            await asyncio.sleep(0.05)
        tb = asyncio.create_task(b.run())
        await asyncio.sleep(0.8)
        assert a.is_leader and not b.is_leader
        assert b.leader_address == "a:1"
        assert [e[:2] for e in events] == [("elected", "a:1")]
        epoch_a = a.epoch

        # The leader's lock connection dies (as when its process is killed or partitioned away).
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'atoll-leader-lock' AND pid IN "
                          "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")
        t0 = time.monotonic()
        for _ in range(100):
            if b.is_leader and not a.is_leader:
                break
            await asyncio.sleep(0.05)
        assert b.is_leader and not a.is_leader, events
        took = time.monotonic() - t0
        assert took < 2.0, took
        assert b.epoch == epoch_a + 1
        assert ("lost", "a:1") in [e[:2] for e in events]
        await ta                                   # the old leader's loop ended after on_lost
        with psycopg.connect(pg_url, autocommit=True) as c:
            assert c.execute("SELECT value FROM meta WHERE key = 'leader_address'").fetchone()[0] == "b:2"
        tb.cancel()
        await b.close()
        await a.close()

    asyncio.run(main())
