"""HA writes fenced by the leader epoch, on a real PostgreSQL: once another coordinator is
elected, every write of the deposed leader fails, even before it notices it lost the lock."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from atoll.coordinator.leader import AdvisoryLockLeadership
from atoll.coordinator.records import NodeRecord, WorkflowRecord
from atoll.coordinator.store_pg import Fenced, PostgresStore
from tests.ha.conftest import pg_server, pg_url  # noqa: F401 - the HA tests' PostgreSQL fixtures


def test_a_deposed_leaders_writes_are_refused_after_a_partition(pg_url):  # noqa: F811
    fenced: list[str] = []

    async def main():
        async def nothing(*_):
            return None

        old = AdvisoryLockLeadership(pg_url, "old:1", on_elected=nothing, on_lost=nothing, poll=0.1, check=3600)
        new = AdvisoryLockLeadership(pg_url, "new:2", on_elected=nothing, on_lost=nothing, poll=0.1, check=3600)
        store_old, store_new = PostgresStore(pg_url), PostgresStore(pg_url)
        t_old = asyncio.create_task(old.run())
        while not old.is_leader:
            await asyncio.sleep(0.05)
        store_old.fence(old.epoch, fenced.append)
        store_old.put_workflow(WorkflowRecord(name="before", spec_yaml="x"))      # leading: accepted
        t_new = asyncio.create_task(new.run())
        await asyncio.sleep(0.3)
        assert not new.is_leader
        # a partition: the database drops the old leader's lock connection; the standby is elected
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'atoll-leader-lock' AND pid IN "
                          "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")
        while not new.is_leader:
            await asyncio.sleep(0.05)
        assert new.epoch == old.epoch + 1 and old.is_leader      # the old one has not noticed yet
        store_new.fence(new.epoch, lambda why: None)
        writes = [lambda: store_old.put_workflow(WorkflowRecord(name="after", spec_yaml="x")),
                  lambda: store_old.upsert_node(NodeRecord(id="node-aaaaaaaa", name="n", spec={})),
                  lambda: store_old.set_meta("api_keys", "{}"),
                  lambda: store_old.delete_workflow("before"),
                  lambda: store_old.touch_nodes([("node-aaaaaaaa", 1.0, 1, None)])]
        for w in writes:
            with pytest.raises(Fenced, match=f"epoch {old.epoch}, the leader epoch is now {new.epoch}"):
                w()
        assert len(fenced) == len(writes)                       # and the coordinator is told to step down
        store_new.put_workflow(WorkflowRecord(name="new-leader", spec_yaml="x"))
        assert sorted(w.name for w in store_new.list_workflows()) == ["before", "new-leader"]
        assert store_new.get_node("node-aaaaaaaa") is None
        for t in (t_old, t_new):
            t.cancel()
        await asyncio.gather(t_old, t_new, return_exceptions=True)
        await old.close()
        await new.close()
        store_old.close()
        store_new.close()

    asyncio.run(main())
