"""The node messages of ``common.proto`` <-> plain dicts, for every side.

An agent sends its node spec, capacity and status (``*_to_pb``); the coordinator keeps them as
dicts in its registry and store (``*_from_pb``) and sends whole nodes to clients
(:func:`node_to_pb`); the SDK reads those back (:func:`node_from_pb`).
"""

from __future__ import annotations

from atoll.proto.v1 import common_pb2

STATES = ("READY", "SUSPECT", "LOST", "DRAINING")
STATE_TO_PB = {name: common_pb2.NodeState.Value(name) for name in STATES}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}
UNSPECIFIED = common_pb2.NODE_STATE_UNSPECIFIED


def state_to_pb(state: str) -> int:
    """A node state name -> the enum value (NODE_STATE_UNSPECIFIED for an unknown name)."""
    return STATE_TO_PB.get(state, UNSPECIFIED)


def spec_from_pb(m: common_pb2.NodeSpec) -> dict:
    return {"name": m.name, "tier": m.tier, "region": m.region, "zone": m.zone,
            "price_per_hour": m.price_per_hour, "preemptible": m.preemptible,
            "labels": dict(m.labels)}


def spec_to_pb(d: dict) -> common_pb2.NodeSpec:
    return common_pb2.NodeSpec(name=d.get("name", ""), tier=d.get("tier", ""),
                               region=d.get("region", ""), zone=d.get("zone", "") or "",
                               price_per_hour=float(d.get("price_per_hour", 0.0)),
                               preemptible=bool(d.get("preemptible", False)),
                               labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()})


def gpu_from_pb(g: common_pb2.GpuInfo) -> dict:
    return {"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
            "memory_free_bytes": g.memory_free_bytes, "compute_capability": g.compute_capability}


def gpu_to_pb(g: dict) -> common_pb2.GpuInfo:
    return common_pb2.GpuInfo(index=int(g.get("index", 0)), name=g.get("name", ""),
                              memory_total_bytes=int(g.get("memory_total_bytes", 0)),
                              memory_free_bytes=int(g.get("memory_free_bytes", 0)),
                              compute_capability=g.get("compute_capability", ""))


def capacity_from_pb(m: common_pb2.NodeCapacity) -> dict:
    return {"gpus": [gpu_from_pb(g) for g in m.gpus],
            "cpu_cores": m.cpu_cores, "memory_bytes": m.memory_bytes, "disk_bytes": m.disk_bytes,
            "simulated": m.simulated, "agent_version": m.agent_version}


def capacity_to_pb(d: dict) -> common_pb2.NodeCapacity:
    return common_pb2.NodeCapacity(
        gpus=[gpu_to_pb(g) for g in d.get("gpus", [])],
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
            "ttft_seconds": m.ttft_seconds, "entry_address": m.entry_address,
            "replica_queue_depth": dict(m.replica_queue_depth)}


def status_to_pb(d: dict) -> common_pb2.NodeStatus:
    return common_pb2.NodeStatus(
        loaded=[common_pb2.LoadedModel(**x) for x in d.get("loaded", [])],
        queue_depth=int(d.get("queue_depth", 0)), running_requests=int(d.get("running_requests", 0)),
        measured_throughput=d.get("measured_throughput") or {},
        kv_cache_usage=float(d.get("kv_cache_usage", 0.0)),
        worker_address=d.get("worker_address", ""), replica_states=d.get("replica_states") or {},
        replica_messages=d.get("replica_messages") or {},
        replica_load_seconds=d.get("replica_load_seconds") or {},
        cached_models=d.get("cached_models") or [], ttft_seconds=float(d.get("ttft_seconds", 0.0)),
        entry_address=d.get("entry_address", ""),
        replica_queue_depth={k: int(v) for k, v in (d.get("replica_queue_depth") or {}).items()})


def node_to_pb(*, node_id: str, spec: dict, capacity: dict, status: dict, state: str, last_heartbeat: float,
               age: float, registered: float, heartbeats: int, trusted: bool = False) -> common_pb2.Node:
    return common_pb2.Node(id=node_id, spec=spec_to_pb(spec), capacity=capacity_to_pb(capacity),
                           state=state_to_pb(state), last_heartbeat_unix=last_heartbeat,
                           last_heartbeat_age_seconds=age, registered_unix=registered,
                           status=status_to_pb(status), heartbeats=heartbeats, trusted=trusted)


def node_from_pb(n: common_pb2.Node) -> dict:
    """A Node message as the SDK's NodeInfo fields."""
    return dict(
        id=n.id, name=n.spec.name, state=common_pb2.NodeState.Name(n.state), tier=n.spec.tier,
        region=n.spec.region, zone=n.spec.zone, price_per_hour=n.spec.price_per_hour,
        preemptible=n.spec.preemptible, labels=dict(n.spec.labels),
        gpus=[gpu_from_pb(g) for g in n.capacity.gpus],
        cpu_cores=n.capacity.cpu_cores, memory_bytes=n.capacity.memory_bytes,
        simulated=n.capacity.simulated, last_heartbeat_age_seconds=round(n.last_heartbeat_age_seconds, 3),
        last_heartbeat_unix=n.last_heartbeat_unix, registered_unix=n.registered_unix,
        heartbeats=n.heartbeats, agent_version=n.capacity.agent_version,
        status=status_from_pb(n.status), trusted=n.trusted)

