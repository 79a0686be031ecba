"""SqliteStore: what is committed survives a reopen; renames and batches behave."""

from atoll.coordinator.store import NodeRecord, SqliteStore


def rec(**o):
    base = dict(id="id-aaaaaaaa", name="n1", spec={"name": "n1", "tier": "edge", "region": "r"},
                capacity={"gpus": []}, status={}, state="READY", registered_at=1.0, last_heartbeat=2.0)
    base.update(o)
    return NodeRecord(**base)


def test_upsert_get_list_and_reopen(tmp_path):
    s = SqliteStore(tmp_path / "a.db")
    s.upsert_node(rec())
    s.upsert_node(rec(id="id-bbbbbbbb", name="n0", capacity={"gpus": [{"name": "L4"}]}))
    assert [r.name for r in s.list_nodes()] == ["n0", "n1"]
    s.set_node_state("id-aaaaaaaa", "LOST")
    s.set_node_capacity("id-bbbbbbbb", {"gpus": [], "cpu_cores": 8})
    s.close()
    s2 = SqliteStore(tmp_path / "a.db")
    assert s2.get_node("id-aaaaaaaa").state == "LOST"
    assert s2.get_node("id-bbbbbbbb").capacity == {"gpus": [], "cpu_cores": 8}
    assert s2.get_node("missing") is None


def test_name_moves_to_new_id(tmp_path):
    s = SqliteStore(tmp_path / "a.db")
    s.upsert_node(rec())
    s.upsert_node(rec(id="id-cccccccc"))  # same name, new id: the old row goes
    assert [r.id for r in s.list_nodes()] == ["id-cccccccc"]


def test_touch_batch_and_drain_flag(tmp_path):
    s = SqliteStore(tmp_path / "a.db")
    s.upsert_node(rec())
    s.touch_nodes([("id-aaaaaaaa", 99.0, 7, {"queue_depth": 3}), ("unknown", 1.0, 1, None)])
    r = s.get_node("id-aaaaaaaa")
    assert (r.last_heartbeat, r.heartbeats, r.status) == (99.0, 7, {"queue_depth": 3})
    s.set_node_state("id-aaaaaaaa", "DRAINING", drain_requested=True)
    assert s.get_node("id-aaaaaaaa").drain_requested is True


def test_meta(tmp_path):
    s = SqliteStore(tmp_path / "a.db")
    assert s.get_meta("k") is None
    s.set_meta("k", "v1")
    s.set_meta("k", "v2")
    assert s.get_meta("k") == "v2"
