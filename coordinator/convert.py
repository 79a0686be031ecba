"""Protobuf <-> domain conversion for the coordinator's servicers (the only place, with the
servicers, that touches ``*_pb2``)."""

from __future__ import annotations

from atoll.coordinator.store import NodeRecord
from atoll.proto.v1 import common_pb2, control_pb2

STATE_TO_PB = {"READY": common_pb2.READY, "SUSPECT": common_pb2.SUSPECT,
               "LOST": common_pb2.LOST, "DRAINING": common_pb2.DRAINING}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}


def spec_from_pb(m: common_pb2.NodeSpec) -> dict:
    return {"name": m.name, "tier": m.tier, "region": m.region, "zone": m.zone,
            "price_per_hour": m.price_per_hour, "preemptible": m.preemptible,
            "labels": dict(m.labels)}


def spec_to_pb(d: dict) -> common_pb2.NodeSpec:
    return common_pb2.NodeSpec(name=d.get("name", ""), tier=d.get("tier", ""),
                               region=d.get("region", ""), zone=d.get("zone", ""),
                               price_per_hour=float(d.get("price_per_hour", 0.0)),
                               preemptible=bool(d.get("preemptible", False)),
                               labels=d.get("labels") or {})


def capacity_from_pb(m: common_pb2.NodeCapacity) -> dict:
    return {"gpus": [{"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
                      "memory_free_bytes": g.memory_free_bytes,
                      "compute_capability": g.compute_capability} for g in m.gpus],
            "cpu_cores": m.cpu_cores, "memory_bytes": m.memory_bytes, "disk_bytes": m.disk_bytes,
            "simulated": m.simulated, "agent_version": m.agent_version}


def capacity_to_pb(d: dict) -> common_pb2.NodeCapacity:
    return common_pb2.NodeCapacity(
        gpus=[common_pb2.GpuInfo(**g) for g in d.get("gpus", [])],
        cpu_cores=int(d.get("cpu_cores", 0)), memory_bytes=int(d.get("memory_bytes", 0)),
        disk_bytes=int(d.get("disk_bytes", 0)), simulated=bool(d.get("simulated", False)),
        agent_version=d.get("agent_version", ""))


def status_from_pb(m: common_pb2.NodeStatus) -> dict:
    return {"loaded": [{"base_model": x.base_model, "adapters": list(x.adapters), "state": x.state,
                        "message": x.message} for x in m.loaded],
            "queue_depth": m.queue_depth, "running_requests": m.running_requests,
            "measured_throughput": dict(m.measured_throughput),
            "kv_cache_usage": m.kv_cache_usage, "worker_address": m.worker_address,
            "replica_states": dict(m.replica_states), "replica_messages": dict(m.replica_messages),
            "replica_load_seconds": dict(m.replica_load_seconds), "cached_models": list(m.cached_models),
            "ttft_seconds": m.ttft_seconds}


def status_to_pb(d: dict) -> common_pb2.NodeStatus:
    return common_pb2.NodeStatus(
        loaded=[common_pb2.LoadedModel(**x) for x in d.get("loaded", [])],
        queue_depth=int(d.get("queue_depth", 0)), running_requests=int(d.get("running_requests", 0)),
        measured_throughput=d.get("measured_throughput") or {},
        kv_cache_usage=float(d.get("kv_cache_usage", 0.0)),
        worker_address=d.get("worker_address", ""), replica_states=d.get("replica_states") or {},
        replica_messages=d.get("replica_messages") or {},
        replica_load_seconds=d.get("replica_load_seconds") or {},
        cached_models=d.get("cached_models") or [], ttft_seconds=float(d.get("ttft_seconds", 0.0)))


def node_to_pb(rec: NodeRecord, age: float) -> common_pb2.Node:
    return common_pb2.Node(id=rec.id, spec=spec_to_pb(rec.spec), capacity=capacity_to_pb(rec.capacity),
                           state=STATE_TO_PB.get(rec.state, common_pb2.NODE_STATE_UNSPECIFIED),
                           last_heartbeat_unix=rec.last_heartbeat, last_heartbeat_age_seconds=age,
                           registered_unix=rec.registered_at, status=status_to_pb(rec.status),
                           heartbeats=rec.heartbeats)


def instruction_to_pb(ins: dict) -> control_pb2.Instruction:
    if ins.get("drain"):
        return control_pb2.Instruction(drain=True)
    if ins.get("reregister"):
        return control_pb2.Instruction(reregister=True)
    if "assignments" in ins:
        a = ins["assignments"]
        return control_pb2.Instruction(assignments=control_pb2.Assignments(
            generation=int(a.get("generation", 0)),
            items=[control_pb2.Assignment(**item) for item in a.get("items", [])]))
    raise ValueError(f"unknown instruction {sorted(ins)}")
