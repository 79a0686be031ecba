"""The Python SDK: ``atoll.Client`` talks to a coordinator over gRPC.

    import atoll
    c = atoll.Client("127.0.0.1:7070")
    for n in c.nodes(tier="edge"):
        print(n.name, n.state, n.last_heartbeat_age_seconds)
    c.drain("edge-1")

Errors arrive as :mod:`atoll.errors` types (NotFound, InvalidArgument, Unavailable, ...).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import grpc

from atoll.errors import InvalidArgument, Unavailable
from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc
from atoll.rpc import CHANNEL_OPTIONS, error_from_rpc
from atoll.specs.config import check_address
from atoll.specs.node import TIERS

STATES = ("READY", "SUSPECT", "LOST", "DRAINING")


@dataclass
class NodeInfo:
    id: str
    name: str
    state: str
    tier: str
    region: str
    zone: str
    price_per_hour: float
    preemptible: bool
    labels: dict[str, str]
    gpus: list[dict]
    cpu_cores: int
    memory_bytes: int
    simulated: bool
    last_heartbeat_age_seconds: float
    last_heartbeat_unix: float
    registered_unix: float
    heartbeats: int
    agent_version: str
    status: dict = field(default_factory=dict)

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_count"] = self.gpu_count
        return d


def _node_from_pb(n: common_pb2.Node) -> NodeInfo:
    return NodeInfo(
        id=n.id, name=n.spec.name, state=common_pb2.NodeState.Name(n.state), tier=n.spec.tier,
        region=n.spec.region, zone=n.spec.zone, price_per_hour=n.spec.price_per_hour,
        preemptible=n.spec.preemptible, labels=dict(n.spec.labels),
        gpus=[{"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
               "memory_free_bytes": g.memory_free_bytes, "compute_capability": g.compute_capability}
              for g in n.capacity.gpus],
        cpu_cores=n.capacity.cpu_cores, memory_bytes=n.capacity.memory_bytes,
        simulated=n.capacity.simulated, last_heartbeat_age_seconds=round(n.last_heartbeat_age_seconds, 3),
        last_heartbeat_unix=n.last_heartbeat_unix, registered_unix=n.registered_unix,
        heartbeats=n.heartbeats, agent_version=n.capacity.agent_version,
        status={"queue_depth": n.status.queue_depth, "running_requests": n.status.running_requests,
                "worker_address": n.status.worker_address,
                "measured_throughput": dict(n.status.measured_throughput)})


class Client:
    def __init__(self, address: str | None = None, *, timeout: float = 10.0):
        address = address or os.environ.get("ATOLL_COORDINATOR") or "127.0.0.1:7070"
        try:
            check_address(address)
        except ValueError as exc:
            raise InvalidArgument(f"coordinator address: {exc}") from None
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = control_pb2_grpc.ClientServiceStub(self._channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"cannot reach the coordinator at {self.address} ({exc.code().name})",
                                  hint="is it running? set --coordinator or ATOLL_COORDINATOR") from None
            raise error_from_rpc(exc) from None

    def nodes(self, tier: str | None = None, region: str | None = None,
              state: str | None = None) -> list[NodeInfo]:
        if tier and tier not in TIERS:
            raise InvalidArgument(f"unknown tier {tier!r}", hint="one of " + ", ".join(TIERS))
        if state and state.upper() not in STATES:
            raise InvalidArgument(f"unknown state {state!r}", hint="one of " + ", ".join(STATES))
        req = control_pb2.ListNodesRequest(tier=tier or "", region=region or "",
                                           state=common_pb2.NodeState.Value(state.upper()) if state else 0)
        return [_node_from_pb(n) for n in self._call(self._stub.ListNodes, req).nodes]

    def node(self, node: str) -> NodeInfo:
        return _node_from_pb(self._call(self._stub.GetNode, control_pb2.GetNodeRequest(node=node)))

    def drain(self, node: str) -> NodeInfo:
        return _node_from_pb(self._call(self._stub.DrainNode, control_pb2.DrainNodeRequest(node=node)))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
