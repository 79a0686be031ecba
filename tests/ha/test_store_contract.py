"""The store contract, checked on both stores: SQLite (embedded) and PostgreSQL (HA).

Mirrors tests/control/test_store.py and adds workflows, profiles and meta, so that a
coordinator behaves the same whichever store it runs on.
"""

from __future__ import annotations

import pytest

from atoll.coordinator.records import SCHEMA_VERSION, Assignment
from atoll.coordinator.store import NodeRecord, SqliteStore, WorkflowRecord, open_store
from atoll.planner.plan import Plan
from atoll.coordinator.store_pg import PostgresStore
from atoll.specs.config import CoordinatorSettings


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request, tmp_path):
    """A factory: each call opens the same database anew (to check what survives a reopen)."""
    opened = []
    if request.param == "sqlite":
        target = tmp_path / "a.db"
        factory = lambda: SqliteStore(target)  # noqa: E731
    else:
        url = request.getfixturevalue("pg_url")
        factory = lambda: PostgresStore(url)  # noqa: E731

    def make():
        s = factory()
        opened.append(s)
        return s

    yield make
    for s in opened:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def rec(**o):
    base = dict(id="id-aaaaaaaa", name="n1", spec={"name": "n1", "tier": "edge", "region": "r"},
                capacity={"gpus": []}, status={}, state="READY", registered_at=1.0, last_heartbeat=2.0)
    base.update(o)
    return NodeRecord(**base)


PLAN = Plan(planner="milp", status="optimal", variants={"a": "v"}, hosts=(), replicas=(), routes=(),
            compute_cost_per_hour=1.0, transfer_cost_per_hour=0.25, accuracy=0.9, solve_seconds=0.5, gap=None)
ASSIGNMENT = Assignment(replica_id="r1", workflow="wf-1", task="a", variant="v", node_id="id-aaaaaaaa",
                        base_model="/m", adapter="", adapter_source="", kind="llm", weight=1.0, group="g")


def wf(**o):
    base = dict(name="wf-1", spec_yaml="name: wf-1\n", state="DEPLOYING", message="waiting",
                plan=PLAN, assignments=(ASSIGNMENT,), generation=1,
                created=10.0, updated=11.0, tenant="t1")
    base.update(o)
    return WorkflowRecord(**base)


def test_upsert_get_list_and_reopen(make_store):
    s = make_store()
    s.upsert_node(rec())
    s.upsert_node(rec(id="id-bbbbbbbb", name="n0", capacity={"gpus": [{"name": "L4"}]}))
    assert [r.name for r in s.list_nodes()] == ["n0", "n1"]
    s.set_node_state("id-aaaaaaaa", "LOST")
    s.set_node_capacity("id-bbbbbbbb", {"gpus": [], "cpu_cores": 8})
    s.close()
    s2 = make_store()
    assert s2.get_node("id-aaaaaaaa").state == "LOST"
    assert s2.get_node("id-bbbbbbbb").capacity == {"gpus": [], "cpu_cores": 8}
    assert s2.get_node("missing") is None
    r = s2.get_node("id-aaaaaaaa")
    assert (r.registered_at, r.last_heartbeat, r.heartbeats, r.drain_requested) == (1.0, 2.0, 0, False)
    assert r.spec == {"name": "n1", "tier": "edge", "region": "r"}


def test_name_moves_to_new_id(make_store):
    s = make_store()
    s.upsert_node(rec())
    s.upsert_node(rec(id="id-cccccccc"))  # same name, new id: the old row goes
    assert [r.id for r in s.list_nodes()] == ["id-cccccccc"]
    s.upsert_node(rec(id="id-cccccccc", name="n2", heartbeats=5))   # same id, renamed: updated in place
    assert [(r.id, r.name, r.heartbeats) for r in s.list_nodes()] == [("id-cccccccc", "n2", 5)]


def test_a_row_whose_name_moves_is_retired_with_its_identity_not_deleted(make_store):
    """Audit finding 3: the displaced row was deleted, and with it a removed node's revocation."""
    s = make_store()
    removed = rec(public_key="key-x", tokens_before=float("inf"), scope={"token": "bootstrap"}, state="LOST")
    s.upsert_node(removed)
    s.upsert_node(rec(id="id-cccccccc", public_key="key-y"))          # a new key takes the name over
    assert [r.id for r in s.list_nodes()] == ["id-cccccccc"]
    s.close()
    s = make_store()                                                    # survives a reopen (a restart)
    assert s.list_retired_nodes() == [removed]
    s.upsert_node(rec(id="id-cccccccc", public_key="key-y", heartbeats=3))    # the same id again: nothing moves
    assert s.list_retired_nodes() == [removed]
    s.upsert_node(rec(id="id-aaaaaaaa", name="n2", public_key="key-x"))        # a retired id back in the fleet
    assert s.list_retired_nodes() == [] and {r.id for r in s.list_nodes()} == {"id-aaaaaaaa", "id-cccccccc"}


def test_touch_batch_and_drain_flag(make_store):
    s = make_store()
    s.upsert_node(rec())
    s.upsert_node(rec(id="id-bbbbbbbb", name="n0", status={"queue_depth": 1}))
    s.touch_nodes([("id-aaaaaaaa", 99.0, 7, {"queue_depth": 3}), ("unknown", 1.0, 1, None),
                   ("id-bbbbbbbb", 50.5, 2, None)])
    r = s.get_node("id-aaaaaaaa")
    assert (r.last_heartbeat, r.heartbeats, r.status) == (99.0, 7, {"queue_depth": 3})
    r = s.get_node("id-bbbbbbbb")
    assert (r.last_heartbeat, r.heartbeats, r.status) == (50.5, 2, {"queue_depth": 1})
    s.touch_nodes([])
    s.set_node_state("id-aaaaaaaa", "DRAINING", drain_requested=True)
    assert s.get_node("id-aaaaaaaa").drain_requested is True
    s.set_node_state("id-aaaaaaaa", "READY")          # drain flag untouched when not given
    assert s.get_node("id-aaaaaaaa").drain_requested is True
    s.set_node_state("id-aaaaaaaa", "READY", drain_requested=False)
    assert s.get_node("id-aaaaaaaa").drain_requested is False


def test_meta(make_store):
    s = make_store()
    assert s.get_meta("k") is None
    s.set_meta("k", "v1")
    s.set_meta("k", "v2")
    assert s.get_meta("k") == "v2"
    assert s.get_meta("schema_version") == str(SCHEMA_VERSION)


def test_workflows_roundtrip_update_delete(make_store):
    s = make_store()
    assert s.list_workflows() == [] and s.get_workflow("wf-1") is None
    s.put_workflow(wf())
    s.put_workflow(wf(name="wf-0", tenant=""))
    assert [w.name for w in s.list_workflows()] == ["wf-0", "wf-1"]
    s.put_workflow(wf(state="READY", generation=2, updated=12.0, created=999.0))
    s.close()
    s = make_store()
    got = s.get_workflow("wf-1")
    assert got == wf(state="READY", generation=2, updated=12.0)   # created is kept from the insert
    assert s.delete_workflow("wf-1") is True
    assert s.delete_workflow("wf-1") is False
    assert [w.name for w in s.list_workflows()] == ["wf-0"]


def test_profiles(make_store):
    s = make_store()
    s.put_profile("wf/t/v", "a100", 10.0, 100.0, "declared")
    s.put_profile("wf/t/v", "a100", 12.5, 120.0, "profiled")
    s.put_profile("wf/a/v", "l4", 3.0, 30.0, "profiled")
    rows = s.list_profiles()
    assert [r[:5] for r in rows] == [("wf/a/v", "l4", 3.0, 30.0, "profiled"),
                                     ("wf/t/v", "a100", 12.5, 120.0, "profiled")]
    assert all(isinstance(r[5], float) and r[5] > 0 for r in rows)


def test_schema_creation_is_idempotent(make_store):
    a = make_store()
    a.upsert_node(rec())
    b = make_store()          # a second coordinator on the same database
    assert [r.id for r in b.list_nodes()] == ["id-aaaaaaaa"]


def test_open_store_picks_by_settings(tmp_path, pg_url):
    s = open_store(CoordinatorSettings(state_dir=str(tmp_path)))
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "atoll.db"
    s.close()
    p = open_store(CoordinatorSettings(state_dir=str(tmp_path), database_url=pg_url))
    assert isinstance(p, PostgresStore)
    p.close()


def test_postgres_reconnects_after_the_connection_dies(pg_url):
    import psycopg

    s = PostgresStore(pg_url)
    s.upsert_node(rec())
    pid = s._db.info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert s.get_node("id-aaaaaaaa").name == "n1"      # reconnected and retried
    s.set_node_state("id-aaaaaaaa", "LOST")
    assert PostgresStore(pg_url).get_node("id-aaaaaaaa").state == "LOST"


def test_bad_database_url_is_a_clear_error(tmp_path):
    from atoll.core.errors import SpecError, Unavailable
    from atoll.specs.config import resolve_settings

    with pytest.raises(SpecError, match="PostgreSQL URL"):
        resolve_settings(CoordinatorSettings, flags={"database_url": "mysql://x"}, config_file=None, env={})
    from control.helpers import free_port
    with pytest.raises(Unavailable, match="cannot connect to PostgreSQL"):
        PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
