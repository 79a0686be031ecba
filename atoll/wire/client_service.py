"""``ClientService`` on the wire as the SDK sees it, and the plan message both ways.

The SDK builds requests with :func:`request` (the method's request message from keyword
fields) and reads every answer into plain dicts here. The typed :class:`~atoll.planner.plan.Plan`
crosses the API as the ``Plan`` message: :func:`plan_to_pb` (the coordinator's side) and
:func:`plan_from_pb` are inverses; the SDK shows a plan as ``Plan.to_dict()`` plus the
coordinator's deployment facts (:func:`plan_dict`). The rest of the coordinator's side of
this service is ``atoll.coordinator.convert``.
"""

from __future__ import annotations

import json

from atoll.core.errors import Unavailable
from atoll.planner.plan import HostGroup, Plan, Replica, Route
from atoll.proto.v1 import control_pb2, control_pb2_grpc
from atoll.wire.dataplane import output_from_json
from atoll.wire.nodes import STATE_TO_PB, node_from_pb

SERVICE = control_pb2.DESCRIPTOR.services_by_name["ClientService"]


def client_stub(channel) -> control_pb2_grpc.ClientServiceStub:
    return control_pb2_grpc.ClientServiceStub(channel)


def request(method: str, **fields):
    """The request message of ClientService ``method`` with ``fields`` set."""
    return getattr(control_pb2, SERVICE.methods_by_name[method].input_type.name)(**fields)


def node_state(state: str) -> int:
    return STATE_TO_PB[state]


def nodes_of(resp) -> list[dict]:
    return [node_from_pb(n) for n in resp.nodes]


# ---------------------------------------------------------------------- the plan
def _member(task: str, variant: str) -> control_pb2.PlanMember:
    return control_pb2.PlanMember(task=task, variant=variant)


def plan_to_pb(p: Plan) -> control_pb2.Plan:
    return control_pb2.Plan(
        planner=p.planner, status=p.status, variants=[_member(t, v) for t, v in p.variants.items()],
        hosts=[control_pb2.PlanHostGroup(group=h.group, pool=h.pool, count=int(h.count), cost_per_hour=h.cost_per_hour,
                                         members=[_member(t, v) for t, v in h.members]) for h in p.hosts],
        replicas=[control_pb2.PlanReplica(task=r.task, variant=r.variant, pool=r.pool, location=r.location,
                                          replicas=int(r.replicas), rate=r.rate, utilization=r.utilization,
                                          cost_per_hour=r.cost_per_hour, shared_with=list(r.shared_with))
                  for r in p.replicas],
        routes=[control_pb2.PlanRoute(src=r.src, dst=r.dst, from_location=r.from_location, to_location=r.to_location,
                                      rate=r.rate, size_kb=r.size_kb, weight=r.weight, cost_per_hour=r.cost_per_hour)
                for r in p.routes],
        compute_cost_per_hour=p.compute_cost_per_hour, transfer_cost_per_hour=p.transfer_cost_per_hour,
        accuracy=p.accuracy, solve_seconds=p.solve_seconds, gap=p.gap, moved_replicas=int(p.moved_replicas),
        notes=list(p.notes))


def plan_from_pb(m: control_pb2.Plan) -> Plan:
    return Plan(
        planner=m.planner, status=m.status, variants={x.task: x.variant for x in m.variants},
        hosts=tuple(HostGroup(group=h.group, pool=h.pool, count=h.count,
                              members=tuple((x.task, x.variant) for x in h.members), cost_per_hour=h.cost_per_hour)
                    for h in m.hosts),
        replicas=tuple(Replica(task=r.task, variant=r.variant, pool=r.pool, location=r.location, replicas=r.replicas,
                               rate=r.rate, utilization=r.utilization, cost_per_hour=r.cost_per_hour,
                               shared_with=tuple(r.shared_with)) for r in m.replicas),
        routes=tuple(Route(src=r.src, dst=r.dst, from_location=r.from_location, to_location=r.to_location,
                           rate=r.rate, size_kb=r.size_kb, weight=r.weight, cost_per_hour=r.cost_per_hour)
                     for r in m.routes),
        compute_cost_per_hour=m.compute_cost_per_hour, transfer_cost_per_hour=m.transfer_cost_per_hour,
        accuracy=m.accuracy, solve_seconds=m.solve_seconds, gap=m.gap if m.HasField("gap") else None,
        moved_replicas=m.moved_replicas, notes=tuple(m.notes))


def deployment_dict(m: control_pb2.Deployment) -> dict:
    """The deployment facts as the keys a plan dict carries beside ``Plan.to_dict()``."""
    out: dict = {}
    if m.HasField("constraints"):
        c = m.constraints
        out["constraints"] = {"trusted_only": c.trusted_only, "on_demand_only": c.on_demand_only,
                              "forbid_tiers": list(c.forbid_tiers), "forbid_regions": list(c.forbid_regions)}
    if m.HasField("on_demand_floor"):
        out["on_demand_floor"] = {"share": m.on_demand_floor.share, "cost_per_hour": m.on_demand_floor.cost_per_hour}
    if m.HasField("failure_domains"):
        out["failure_domains"] = {"label": m.failure_domains.label, "domains": m.failure_domains.domains}
    if m.HasField("autoscale"):
        a = m.autoscale
        out["autoscale"] = {"scale": a.scale, "rate": a.rate, "reason": a.reason, "decided_unix": a.decided_unix,
                            **({"scale_before_zero": a.scale_before_zero} if a.HasField("scale_before_zero") else {})}
    return out


def plan_dict(st: control_pb2.WorkflowStatus) -> dict:
    """A workflow's plan as the SDK shows it: ``Plan.to_dict()`` and the deployment facts."""
    out = plan_from_pb(st.plan).to_dict() if st.HasField("plan") else {}
    out.update(deployment_dict(st.deployment))
    return out


# ---------------------------------------------------------------------- workflows
def workflow_from_pb(st: control_pb2.WorkflowStatus) -> dict:
    """A WorkflowStatus as the SDK's WorkflowInfo fields."""
    return dict(
        name=st.name, state=st.state, message=st.message, plan=plan_dict(st),
        replicas=[{"replica_id": r.replica_id, "task": r.task, "variant": r.variant, "node": r.node_name,
                   "node_id": r.node_id, "state": r.state, "region": r.region, "tier": r.tier,
                   "weight": r.weight, "worker_address": r.worker_address, "message": r.message,
                   "fetch_seconds": r.fetch_seconds, "load_seconds": r.load_seconds,
                   "warmup_seconds": r.warmup_seconds}
                  for r in st.replicas],
        profiles=[{"variant": p.variant, "hardware": p.hardware, "declared_rps": p.declared_rps,
                   "measured_rps": p.measured_rps, "source": p.source} for p in st.profiles],
        generation=st.generation, cold_starts=json.loads(st.cold_starts_json or "[]"),
        autoscale_decisions=[{"unix": d.unix, "action": d.action, "rate": d.rate, "previous_rate": d.previous_rate,
                              "reason": d.reason, "signals": dict(d.signals), "outcome": d.outcome}
                             for d in st.autoscale_decisions])


def workflow_summaries(resp) -> list[dict]:
    return [{"name": w.name, "state": w.state, "cost_per_hour": w.cost_per_hour, "accuracy": w.accuracy,
             "replicas": w.replicas, "ready_replicas": w.ready_replicas} for w in resp.workflows]


# ---------------------------------------------------------------------- invocations
def invoke_result(resp) -> dict:
    """The final InvokeResponse (None: the stream ended without one) as the SDK's result dict."""
    if resp is None:
        raise Unavailable("the coordinator closed the call without a result")
    return {"output": output_from_json(resp.output_json), "request_id": resp.request_id,
            "stages": [{"task": s.task, "variant": s.variant, "node": s.node_name, "region": s.region,
                        "seconds": s.seconds, "attempts": s.attempts, "output_bytes": s.output_bytes,
                        "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens}
                       for s in resp.stages]}


def stream_item(resp) -> dict | str | None:
    """One message of a streamed invocation: the result dict when done, else its text delta
    (None when it carries neither)."""
    if resp.done:
        return invoke_result(resp)
    return resp.text or None


def profile_result(r) -> dict:
    return {"variant": r.variant, "hardware": r.hardware, "node": r.node_name,
            "requests_per_second": r.requests_per_second, "tokens_per_second": r.tokens_per_second,
            "declared_rps": r.declared_rps, "requests": r.requests}


# ---------------------------------------------------------------------- API keys
def created_key(r) -> dict:
    return {"id": r.info.id, "tenant": r.info.tenant, "role": r.info.role, "key": r.key}


def key_list(r) -> list[dict]:
    return [{"id": k.id, "tenant": k.tenant, "role": k.role, "created_unix": k.created_unix,
             "revoked": k.revoked} for k in r.keys]


def revoked_key(k) -> dict:
    return {"id": k.id, "tenant": k.tenant, "role": k.role, "revoked": k.revoked}


# ---------------------------------------------------------------------- join tokens
def join_token_dict(t) -> dict:
    return {"id": t.id, "tiers": list(t.tiers), "regions": list(t.regions), "trusted": t.trusted,
            "expires_unix": t.expires_unix, "uses_left": t.uses_left, "uses": t.uses,
            "created_unix": t.created_unix, "revoked": t.revoked}


def created_join_token(r) -> dict:
    return {**join_token_dict(r.info), "token": r.token}


def join_token_list(r) -> list[dict]:
    return [join_token_dict(t) for t in r.tokens]
