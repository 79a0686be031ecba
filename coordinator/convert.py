"""The coordinator's side of the wire: domain values -> the messages its servicers send.

Node messages are :mod:`atoll.wire.nodes`' and instructions :mod:`atoll.wire.agent_service`'s
(shared with the agent); the plan message is :mod:`atoll.wire.client_service`'s (shared with
the SDK). Everything else the servicers answer is packed here, and the servicers and this
module are the coordinator's only code that touches ``*_pb2``.
"""

from __future__ import annotations

import json
from typing import Sequence

from atoll.coordinator.records import Deployment, NodeRecord, WorkflowRecord
from atoll.proto.v1 import common_pb2, control_pb2
from atoll.wire import nodes
from atoll.wire.agent_service import instruction_to_pb
from atoll.wire.client_service import plan_to_pb

SERVICES = {name: control_pb2.DESCRIPTOR.services_by_name[name]
            for name in ("AgentService", "ClientService", "ModelStore")}
PB_TO_STATE = nodes.PB_TO_STATE
UNSPECIFIED_STATE = common_pb2.NODE_STATE_UNSPECIFIED


# ---------------------------------------------------------------------- nodes
def node_to_pb(rec: NodeRecord, age: float) -> common_pb2.Node:
    return nodes.node_to_pb(node_id=rec.id, spec=rec.spec, capacity=rec.capacity, status=rec.status,
                            state=rec.state, last_heartbeat=rec.last_heartbeat, age=age,
                            registered=rec.registered_at, heartbeats=rec.heartbeats, trusted=rec.trusted)


def nodes_response(recs: list[NodeRecord], age) -> control_pb2.ListNodesResponse:
    return control_pb2.ListNodesResponse(nodes=[node_to_pb(r, age(r)) for r in recs])


# ---------------------------------------------------------------------- agents
def register_response(node_id: str, token: str, interval: float, lease: float, coordinator_key: bytes,
                      trusted: bool) -> control_pb2.RegisterResponse:
    return control_pb2.RegisterResponse(node_id=node_id, session_token=token, heartbeat_interval_seconds=interval,
                                        lease_seconds=lease, coordinator_public_key=coordinator_key, trusted=trusted)


def heartbeat_response(ack_seq: int, interval: float, instructions: Sequence[dict] = ()
                       ) -> control_pb2.HeartbeatResponse:
    return control_pb2.HeartbeatResponse(ack_seq=ack_seq, heartbeat_interval_seconds=interval,
                                         instructions=[instruction_to_pb(i) for i in instructions])


# ---------------------------------------------------------------------- workflows
def deployment_to_pb(d: Deployment) -> control_pb2.Deployment:
    m = control_pb2.Deployment()
    if d.constraints is not None:
        c = d.constraints
        m.constraints.CopyFrom(control_pb2.PlacementConstraints(
            trusted_only=c.trusted_only, on_demand_only=c.on_demand_only, forbid_tiers=list(c.forbid_tiers),
            forbid_regions=list(c.forbid_regions)))
    if d.on_demand_floor is not None:
        m.on_demand_floor.CopyFrom(control_pb2.OnDemandFloor(share=d.on_demand_floor.share,
                                                             cost_per_hour=d.on_demand_floor.cost_per_hour))
    if d.failure_domains is not None:
        m.failure_domains.CopyFrom(control_pb2.FailureDomains(label=d.failure_domains.label,
                                                              domains=d.failure_domains.domains))
    if d.autoscale is not None:
        a = d.autoscale
        m.autoscale.CopyFrom(control_pb2.Autoscale(scale=a.scale, rate=a.rate, reason=a.reason,
                                                   decided_unix=a.decided_unix,
                                                   scale_before_zero=a.scale_before_zero))
    return m


def _plan_fields(rec: WorkflowRecord) -> dict:
    return {"plan": plan_to_pb(rec.plan) if rec.plan is not None else None,
            "deployment": deployment_to_pb(rec.deployment)}


def planned_status(rec: WorkflowRecord) -> control_pb2.WorkflowStatus:
    """A dry run's answer: the plan, nothing deployed."""
    return control_pb2.WorkflowStatus(name=rec.name, state=rec.state, **_plan_fields(rec))


def workflow_status(rec: WorkflowRecord, replicas: list[dict], profiles: list[dict],
                    cold_starts: list[dict], decisions: Sequence = ()) -> control_pb2.WorkflowStatus:
    """``decisions``: the autoscaler's ``DecisionRecord`` values to show."""
    return control_pb2.WorkflowStatus(
        name=rec.name, state=rec.state, message=rec.message, **_plan_fields(rec),
        replicas=[control_pb2.ReplicaStatus(**{k: v for k, v in r.items() if k != "node_state"}) for r in replicas],
        profiles=[control_pb2.ProfileEntry(**p) for p in profiles], spec_yaml=rec.spec_yaml,
        created_unix=rec.created, updated_unix=rec.updated, generation=rec.generation, tenant=rec.tenant,
        cold_starts_json=json.dumps(cold_starts),
        autoscale_decisions=[control_pb2.AutoscaleDecision(
            unix=d.unix, action=d.action, rate=d.rate, previous_rate=d.previous_rate, reason=d.reason,
            signals=dict(d.signals), outcome=d.outcome) for d in decisions])


def workflow_list(rows: list[tuple[WorkflowRecord, list[dict]]]) -> control_pb2.ListWorkflowsResponse:
    """(record, its replica views) per workflow -> the summaries."""
    return control_pb2.ListWorkflowsResponse(workflows=[control_pb2.WorkflowSummary(
        name=rec.name, state=rec.state, cost_per_hour=rec.plan.total_cost_per_hour if rec.plan else 0.0,
        accuracy=rec.plan.accuracy if rec.plan else 0.0, replicas=len(views),
        ready_replicas=sum(1 for v in views if v["state"] == "ready")) for rec, views in rows])


def deleted() -> control_pb2.DeleteWorkflowResponse:
    return control_pb2.DeleteWorkflowResponse(deleted=True)


def profile_response(res: dict) -> control_pb2.ProfileResponse:
    return control_pb2.ProfileResponse(**res)


# ---------------------------------------------------------------------- API keys
def key_info(k: dict) -> control_pb2.ApiKeyInfo:
    return control_pb2.ApiKeyInfo(id=k["id"], tenant=k["tenant"], role=k["role"], created_unix=k["created"],
                                  revoked=k["revoked"])


def created_key(info: dict, key: str) -> control_pb2.CreateKeyResponse:
    return control_pb2.CreateKeyResponse(info=key_info(info), key=key)


def key_list(keys: list[dict]) -> control_pb2.ListKeysResponse:
    return control_pb2.ListKeysResponse(keys=[key_info(k) for k in keys])


# ---------------------------------------------------------------------- join tokens
def join_token_info(t: dict) -> control_pb2.JoinTokenInfo:
    return control_pb2.JoinTokenInfo(id=t["id"], tiers=t["tiers"], regions=t["regions"], trusted=t["trusted"],
                                     expires_unix=t["expires"], uses_left=t["uses_left"], uses=t["uses"],
                                     created_unix=t["created"], revoked=t["revoked"])


def created_join_token(info: dict, token: str) -> control_pb2.CreateJoinTokenResponse:
    return control_pb2.CreateJoinTokenResponse(info=join_token_info(info), token=token)


def join_token_list(tokens: list[dict]) -> control_pb2.ListJoinTokensResponse:
    return control_pb2.ListJoinTokensResponse(tokens=[join_token_info(t) for t in tokens])


# ---------------------------------------------------------------------- model store
def blob_info(info: dict) -> control_pb2.BlobInfo:
    return control_pb2.BlobInfo(name=info["name"], kind=info["kind"], size_bytes=info["size_bytes"],
                                display_name=info.get("display_name", ""))


def blob_chunk(name: str, kind: str, data: bytes, offset: int, total: int) -> control_pb2.BlobChunk:
    return control_pb2.BlobChunk(name=name, kind=kind, data=data, offset=offset, total_bytes=total)
