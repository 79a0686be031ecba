"""SqliteStore: what is committed survives a reopen; renames and batches behave."""

import json

from atoll.coordinator.records import Assignment
from atoll.coordinator.store import NodeRecord, SqliteStore
from atoll.planner.plan import HostGroup, Plan, Replica, Route


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


def test_rows_written_before_plans_were_typed_read_back_typed(tmp_path):
    """Rows hold the plan as Plan.to_dict() plus deployment keys and the assignments as dicts,
    as coordinators wrote them before the record kept typed values: they read back typed, and
    writing the record again stores the same data."""
    plan = Plan(planner="milp", status="optimal", variants={"chat": "v"},
                hosts=(HostGroup("m@fp16", "pool-0", 1, (("chat", "v"),), 0.5),),
                replicas=(Replica("chat", "v", "pool-0", "eu/datacenter", 1, 2.0, 0.5, 0.5),),
                routes=(Route("users", "chat", "eu/edge", "eu/datacenter", 2.0, 1.0, 1.0, 0.001),),
                compute_cost_per_hour=0.5, transfer_cost_per_hour=0.001, accuracy=0.9, solve_seconds=0.01, gap=0.0)
    old_plan = {**plan.to_dict(),
                "constraints": {"trusted_only": True, "on_demand_only": False, "forbid_tiers": ["renter"],
                                "forbid_regions": []},
                "on_demand_floor": {"share": 0.25, "cost_per_hour": 0.5},
                "autoscale": {"scale": 0.0, "rate": 0.0, "reason": "idle", "decided_unix": 5.0,
                              "scale_before_zero": 2.0}}
    old_assignment = {"replica_id": "wf.chat.v.abcdefgh", "workflow": "wf", "task": "chat", "variant": "v",
                      "node_id": "abcdefgh-1", "base_model": "/m", "adapter": "", "adapter_source": "",
                      "kind": "llm", "weight": 2.0, "group": "m@fp16"}
    s = SqliteStore(tmp_path / "a.db")
    s._db.execute("INSERT INTO workflows(name, spec_yaml, state, message, plan, assignments, generation, created, "
                  "updated, tenant) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  ("wf", "name: wf\n", "IDLE", "scaled to zero: idle", json.dumps(old_plan),
                   json.dumps([old_assignment]), 3, 1.0, 2.0, "t"))
    rec = s.get_workflow("wf")
    assert rec.plan == plan and rec.assignments == (Assignment(**old_assignment),)
    d = rec.deployment
    assert d.constraints.trusted_only and d.on_demand_floor.share == 0.25 and d.failure_domains is None
    assert (d.autoscale.scale, d.autoscale.scale_before_zero) == (0.0, 2.0)
    s.put_workflow(rec)
    plan_json, asg_json = s._db.execute("SELECT plan, assignments FROM workflows WHERE name = 'wf'").fetchone()
    assert json.loads(plan_json) == json.loads(json.dumps(old_plan)) and json.loads(asg_json) == [old_assignment]


def test_a_schema_2_database_gains_retired_nodes_and_its_name_moves_retire_rows(tmp_path):
    """Schema 2 -> 3: a database written before retired_nodes existed opens, and from then on a
    row displaced by a name moving to a new id is kept there (audit finding 3)."""
    import sqlite3

    s = SqliteStore(tmp_path / "a.db")
    s.upsert_node(rec(public_key="key-x", tokens_before=float("inf")))
    s.close()
    db = sqlite3.connect(str(tmp_path / "a.db"))
    db.execute("DROP TABLE retired_nodes")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    s = SqliteStore(tmp_path / "a.db")
    assert s.get_meta("schema_version") == "3" and s.list_retired_nodes() == []
    s.upsert_node(rec(id="id-cccccccc"))
    assert [(r.id, r.public_key, r.tokens_before) for r in s.list_retired_nodes()] == \
        [("id-aaaaaaaa", "key-x", float("inf"))]
