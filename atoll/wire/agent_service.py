"""``AgentService`` on the wire, both sides: the agent's heartbeat client builds the requests and
reads the instructions; the coordinator's servicer reads the requests and sends instructions.

Instructions are plain values on both sides: ``{"drain": True}`` (stop taking work; also the
acknowledgement of an agent's own drain), ``{"reregister": True}`` (the session is unknown),
``{"assignments": AssignmentSet}`` (the node's full desired set), ``{"routing": RoutingState}``
(the routes the node may serve, ``atoll.specs.routing``), ``{"keys": KeySet}`` (the API keys
its doors check, ``atoll.core.apikeys``) and ``{"credential": (token, expires_unix)}`` (the
node's capability token). Heartbeats carry the digests of the routing state and key set that
the agent holds, and its entry's load reports (``atoll.wire.dataplane.EntryLoad``).

A registration carries the agent's proof of possession of its node key
(:class:`atoll.core.credentials.Proof`); the answer, the coordinator's public key to pin.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from atoll.core.credentials import Proof
from atoll.proto.v1 import control_pb2, control_pb2_grpc
from atoll.specs.assignment import AssignmentSet, ReplicaItem
from atoll.wire.dataplane import (EntryLoad, keys_from_pb, keys_to_pb, load_from_pb, load_to_pb, routing_from_pb,
                                  routing_to_pb)
from atoll.wire.nodes import capacity_to_pb, spec_to_pb, status_to_pb

SERVICE = control_pb2.DESCRIPTOR.services_by_name["AgentService"]

# One routing state goes to every node of a tier and trust each time it changes (a replica's state
# changes it: a host flipping its replica between ready and loading on every heartbeat changed it
# every reconcile pass), and building its message in Python costs as much as its text, on the
# coordinator's event loop. Each state (by its content digest) is built once; the last few kept.
_ROUTING_KEPT = 8
_routing_messages: "OrderedDict[int, control_pb2.Instruction]" = OrderedDict()


def routing_instruction(state) -> control_pb2.Instruction:
    """The ``{"routing": state}`` instruction's message, built once per digest (never mutate it)."""
    if not state.digest:
        return control_pb2.Instruction(routing=routing_to_pb(state))
    msg = _routing_messages.get(state.digest)
    if msg is None:
        msg = _routing_messages[state.digest] = control_pb2.Instruction(routing=routing_to_pb(state))
        while len(_routing_messages) > _ROUTING_KEPT:
            _routing_messages.popitem(last=False)
    return msg


def agent_stub(channel) -> control_pb2_grpc.AgentServiceStub:
    return control_pb2_grpc.AgentServiceStub(channel)


def register_request(*, join_token: str, node_id: str, spec: dict, capacity: dict,
                     status: dict | None, proof: Proof | None = None) -> control_pb2.RegisterRequest:
    req = control_pb2.RegisterRequest(join_token=join_token, node_id=node_id, spec=spec_to_pb(spec),
                                      capacity=capacity_to_pb(capacity),
                                      status=status_to_pb(status) if status is not None else None)
    if proof is not None:
        req.node_public_key, req.proof_unix = proof.public_key, proof.unix
        req.proof_nonce, req.proof_signature = proof.nonce, proof.signature
    return req


def proof_from_pb(req: control_pb2.RegisterRequest) -> Proof | None:
    """The registration's proof of possession (None when it carries no key)."""
    if not req.node_public_key:
        return None
    return Proof(bytes(req.node_public_key), req.proof_unix, req.proof_nonce[:200], bytes(req.proof_signature))


def heartbeat_request(*, node_id: str, session_token: str, seq: int, draining: bool, generation: int,
                      price: tuple[float, bool] | None, capacity: dict | None, status: dict | None,
                      sent_unix: float, routing_digest: int = 0, keys_digest: int = 0,
                      entry_load: Sequence[EntryLoad] = ()) -> control_pb2.HeartbeatRequest:
    """One heartbeat; ``capacity`` when it changed, ``price`` (per hour, preemptible) when the
    host re-priced itself, ``status`` when the agent has one to report; the digests of the
    routing state and key set it holds, and its entry's load since the last heartbeat."""
    req = control_pb2.HeartbeatRequest(node_id=node_id, session_token=session_token, seq=seq, draining=draining,
                                       assignments_generation=generation, sent_unix=sent_unix,
                                       routing_digest=routing_digest, keys_digest=keys_digest,
                                       entry_load=load_to_pb(entry_load))
    if price is not None:
        req.has_price, (req.price_per_hour, req.preemptible) = True, price
    if capacity is not None:
        req.capacity.CopyFrom(capacity_to_pb(capacity))
        req.has_capacity = True
    if status is not None:
        req.status.CopyFrom(status_to_pb(status))
    return req


def item_to_pb(item: ReplicaItem) -> control_pb2.Assignment:
    return control_pb2.Assignment(replica_id=item.replica_id, workflow=item.workflow, task=item.task,
                                  variant=item.variant, base_model=item.base_model, adapter=item.adapter,
                                  adapter_source=item.adapter_source, kind=item.kind)


def item_from_pb(a: control_pb2.Assignment) -> ReplicaItem:
    return ReplicaItem(a.replica_id, a.workflow, a.task, a.variant, a.base_model, a.adapter, a.adapter_source,
                       a.kind or "llm")


def instruction_to_pb(ins: dict) -> control_pb2.Instruction:
    if ins.get("drain"):
        return control_pb2.Instruction(drain=True)
    if ins.get("reregister"):
        return control_pb2.Instruction(reregister=True)
    if "credential" in ins:
        token, expires = ins["credential"]
        return control_pb2.Instruction(credential=control_pb2.Credential(token=token, expires_unix=expires))
    if "assignments" in ins:
        a: AssignmentSet = ins["assignments"]
        return control_pb2.Instruction(assignments=control_pb2.Assignments(
            generation=a.generation, items=[item_to_pb(i) for i in a.items]))
    if "routing" in ins:
        return routing_instruction(ins["routing"])
    if "keys" in ins:
        return control_pb2.Instruction(keys=keys_to_pb(ins["keys"]))
    raise ValueError(f"unknown instruction {sorted(ins)}")


def instruction_from_pb(m: control_pb2.Instruction) -> dict:
    kind = m.WhichOneof("kind")
    if kind == "assignments":
        return {"assignments": AssignmentSet(m.assignments.generation,
                                             tuple(item_from_pb(a) for a in m.assignments.items))}
    if kind in ("drain", "reregister"):
        return {kind: True}
    if kind == "routing":
        return {"routing": routing_from_pb(m.routing)}
    if kind == "keys":
        return {"keys": keys_from_pb(m.keys)}
    if kind == "credential":
        return {"credential": (m.credential.token, m.credential.expires_unix)}
    return {}


def heartbeat_extras(req: control_pb2.HeartbeatRequest) -> tuple[int, int, list[EntryLoad]]:
    """The data plane's part of a heartbeat: (routing digest, key-set digest, entry load)."""
    return req.routing_digest, req.keys_digest, load_from_pb(req.entry_load)
