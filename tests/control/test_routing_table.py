"""The routing table is an immutable value built once per plan or replica-state change: requests
in between reuse it; a heartbeat that changes only load figures does not rebuild it."""

from __future__ import annotations

import dataclasses
import time

import pytest

from atoll.coordinator.records import Assignment, WorkflowRecord
from atoll.coordinator.join_tokens import hash_token
from atoll.coordinator.registry import Registry
from atoll.coordinator.store import SqliteStore
from atoll.coordinator.workflows import WorkflowManager
from atoll.core import credentials as cred
from atoll.core.errors import FailedPrecondition
from atoll.planner.plan import Plan, Route

TOKEN = "join-token-123"
RID = "wf.chat.v.node0000"


def setup(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    store = SqliteStore(tmp_path / "s.db")
    reg = Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0)
    status = {"worker_address": "10.0.0.1:7000", "replica_states": {RID: "ready"}, "queue_depth": 0}
    node_id, token = reg.register(TOKEN, "", {"name": "gpu-1", "tier": "datacenter", "region": "eu",
                                              "price_per_hour": 1.0}, {}, status,
                                  cred.make_proof(cred.new_private_key(), "", time.time()))
    spec_yaml = (f"name: wf\nsources: [{{name: users, rate: 4, region: eu, tier: edge}}]\n"
                 f"tasks: [{{name: chat, variants: [{{name: v, accuracy: 0.9, throughput: {{a10: 4}}, "
                 f"model: {model}}}]}}]\nedges: [{{from: users, to: chat}}]\n")
    plan = Plan(planner="milp", status="optimal", variants={"chat": "v"}, hosts=(), replicas=(),
                routes=(Route("users", "chat", "eu/edge", "eu/datacenter", 4.0, 1.0, 1.0, 0.0),),
                compute_cost_per_hour=1.0, transfer_cost_per_hour=0.0, accuracy=0.9, solve_seconds=0.0, gap=None)
    store.put_workflow(WorkflowRecord(
        name="wf", spec_yaml=spec_yaml, state="READY", plan=plan, generation=1,
        assignments=(Assignment(RID, "wf", "chat", "v", node_id, str(model), "", "", "llm", 4.0, "g"),)))
    return WorkflowManager(store, reg), reg, reg.open_session(node_id, token), status


def test_requests_reuse_one_table_until_a_replica_changes(tmp_path):
    wm, reg, sess, status = setup(tmp_path)
    route = wm.route("wf")
    assert [(e.address, e.location, e.weight) for e in route.endpoints["chat"]] == [("10.0.0.1:7000", "eu/datacenter",
                                                                                      4.0)]
    assert route.flows[("users", "chat")] == (("eu/edge", "eu/datacenter", 4.0),)
    assert [s.task for s in route.stages] == ["chat"] and route.sink == "chat"
    table = wm.routing_table()
    assert wm.route("wf") is route and wm.routing_table() is table          # not rebuilt per request
    reg.heartbeat(sess, 2, None, {**status, "queue_depth": 7}, False)
    assert wm.routing_table() is table                                      # load figures: same routes
    reg.heartbeat(sess, 3, None, {**status, "replica_states": {RID: "loading"}}, False)
    assert wm.routing_table() is not table and wm.route("wf").endpoints == {}


def test_a_record_change_rebuilds_it_and_a_workflow_not_ready_has_no_route(tmp_path):
    wm, _, _, _ = setup(tmp_path)
    table = wm.routing_table()
    rec = wm.records["wf"]
    rec.state, rec.message = "DEPLOYING", "waiting"
    wm._save(rec)
    assert wm.routing_table() is not table
    with pytest.raises(FailedPrecondition, match="DEPLOYING"):
        wm.route("wf")


def test_the_table_is_an_immutable_value(tmp_path):
    wm, _, _, _ = setup(tmp_path)
    route = wm.route("wf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.sink = "other"
    with pytest.raises(TypeError):
        route.endpoints["chat"] = ()
    assert isinstance(route.endpoints["chat"], tuple) and isinstance(route.stages, tuple)


def test_what_a_tenant_adds_to_every_hosts_routing_state_is_bounded(tmp_path, monkeypatch):
    """Every host's routing state carries every workflow's prompt templates in one heartbeat
    message, which gRPC refuses past 16 MiB: a tenant's ordinary workflows once broke every
    node's stream at once. A submit is RESOURCE_EXHAUSTED past the tenant's number of workflows,
    its bytes of templates and stops, or the fleet's; and a routing state too large to send is
    not sent (the node keeps the one it holds) rather than end every stream."""
    import asyncio

    import atoll.coordinator.workflows as wfs
    from atoll.coordinator.publish import Publisher
    from atoll.core.errors import ResourceExhausted

    wm, reg, sess, status = setup(tmp_path)
    spec = wm.spec("wf")
    one = wfs.route_text(spec)
    assert one >= len(spec.tasks[0].prompt) + 256

    def submit(name: str, prompt: str = "{input}", tenant: str = "b"):
        text = wm.records["wf"].spec_yaml.replace("name: wf", f"name: {name}").replace(
            "{name: chat,", f"{{name: chat, prompt: '{prompt}',")
        return asyncio.run(wm.submit(text, f"{name}.yaml", dry_run=True, tenant=tenant))

    monkeypatch.setattr(wfs, "MAX_WORKFLOWS_PER_TENANT", 1)      # tenant "" holds wf
    with pytest.raises(ResourceExhausted, match="has 1 workflows, the most one tenant may have"):
        submit("wf2", tenant="")
    monkeypatch.setattr(wfs, "MAX_WORKFLOWS_PER_TENANT", 64)
    monkeypatch.setattr(wfs, "MAX_ROUTE_TEXT_PER_TENANT", 2000)
    with pytest.raises(ResourceExhausted, match="would carry .* bytes of prompt templates and stop strings to every host"):
        submit("big", prompt="x" * 2000 + "{input}")
    monkeypatch.setattr(wfs, "MAX_ROUTE_TEXT_PER_TENANT", 1 << 20)
    monkeypatch.setattr(wfs, "MAX_ROUTE_TEXT", one + 100)          # the fleet's: wf's text is in it
    with pytest.raises(ResourceExhausted, match="the fleet's workflows would carry"):
        submit("small")

    sent = []
    sess.push = lambda ins: sent.append(ins)
    pub = Publisher(reg, loads=type("L", (), {"report": lambda *a: None, "node_gone": lambda *a: None})())
    import atoll.coordinator.publish as pubmod
    monkeypatch.setattr(pubmod, "MAX_ROUTING_BYTES", 10)
    from atoll.core.apikeys import key_set
    pub.publish(wm.routing_table(), key_set([]), 0.0)
    assert [list(i) for i in sent] == [["keys"]]                      # the routing state was held back
    monkeypatch.setattr(pubmod, "MAX_ROUTING_BYTES", 12 << 20)
    pub._sizes.clear()
    pub.publish(wm.routing_table(), key_set([]), 100.0)
    assert ["routing"] in [list(i) for i in sent]
