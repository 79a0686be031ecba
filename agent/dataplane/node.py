"""The data plane of one agent, assembled: its routing state and key set (from the heartbeat
stream), the ``Entry`` server for clients, the ``DataPlane`` service beside the Worker, the
load reports for the heartbeats, and degraded mode.

Degraded mode: while the heartbeat stream to the coordinator is down, the agent keeps serving
from the last routing state and key set it received (nothing expires them), routes around
replicas that fail (:class:`~.table.Exclusions`), and says so: ``Describe`` answers
``degraded`` with the reason and the routing state's age, the gauges
``atoll_dataplane_degraded`` / ``atoll_dataplane_coordinator_connected`` /
``atoll_dataplane_routing_age_seconds`` show it, the entry's gRPC health reports the service
``atoll.v1.Coordinator`` NOT_SERVING (the entry itself stays SERVING), and the change is logged.
The real agent (``agent/daemon.py``) and the benchmark's simulated agents both use this class.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry

from atoll.agent.dataplane.chain import DataPlane, LocalWorker, NodeSelf
from atoll.agent.dataplane.entry import EntryGuard, EntryService, Keys
from atoll.agent.dataplane.hop import HopService
from atoll.agent.dataplane.load import LoadBook
from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.trace import OtlpExporter
from atoll.core.errors import Unavailable
from atoll.core.logs import kv
from atoll.core.rpc import SERVER_OPTIONS, add_health_and_reflection, add_service, set_serving
from atoll.core.tls import plaintext_policy, server_credentials
from atoll.specs.config import split_address
from atoll.specs.routing import Route
from atoll.wire.dataplane import DATAPLANE, ENTRY, EntryInfo
from atoll.wire.worker import WorkerClient

log = logging.getLogger("atoll.agent")
COORDINATOR_HEALTH = "atoll.v1.Coordinator"


class DataPlaneNode:
    def __init__(self, *, node: Callable[[], NodeSelf], local: LocalWorker | None,
                 local_address: Callable[[], str], connected: Callable[[], bool],
                 credentials: grpc.ChannelCredentials | None = None, registry: CollectorRegistry | None = None,
                 otlp_endpoint: str | None = None, wake: Callable[[], None] = lambda: None,
                 peer_token: Callable[[], str] = lambda: "", peer_proof: Callable[[str], str] = lambda node_id: "",
                 admit_forward: Callable[[Route], None] = lambda route: None):
        """``admit_forward(route)``: raises to refuse the caller of a Forward (``agent/carry.py``)."""
        self.node, self.connected = node, connected
        self.metrics = DataPlaneMetrics(registry)
        exporter = OtlpExporter(otlp_endpoint, "atoll-agent", node().name) if otlp_endpoint else None
        self.workers = WorkerClient(credentials)
        self.plane = DataPlane(node, local, self.workers, self.metrics, exporter, local_address, peer_token,
                               peer_proof)
        self.keys = Keys()
        self.book = LoadBook()
        self.entry = EntryService(self.plane, self.keys, self.book, describe=self.describe, wake=wake)
        self.hop = HopService(self.plane, admit_forward)
        self.server: grpc.aio.Server | None = None
        self.health = None
        self.address = ""
        self._was_degraded = False
        m = self.metrics
        m.coordinator_connected.set_function(lambda: 1.0 if self.connected() else 0.0)
        m.degraded.set_function(lambda: 1.0 if self.degraded() else 0.0)
        m.routing_age.set_function(self.routing_age)

    # -- from the coordinator ---------------------------------------------------------------
    def on_instruction(self, ins: dict) -> bool:
        """Take a routing state or key set; False for any other instruction."""
        if "routing" in ins:
            self.plane.set_routing(ins["routing"])
            return True
        if "keys" in ins:
            self.keys.set(ins["keys"])
            return True
        return False

    def heartbeat_extras(self) -> tuple:
        """(routing digest, key-set digest, entry load) for the next heartbeat; confirms the state."""
        self.plane.updated = time.monotonic() if self.connected() else self.plane.updated
        return self.plane.state.digest, self.keys.keyset.digest, self.book.take()

    def on_session(self) -> None:
        self.book.rebase()

    # -- degraded mode ------------------------------------------------------------------------
    def degraded(self) -> bool:
        return bool(self.plane.state.digest) and not self.connected()

    def routing_age(self) -> float:
        return max(0.0, time.monotonic() - self.plane.updated) if self.plane.state.digest else 0.0

    async def watch(self, period: float = 0.5) -> None:
        """Log and publish changes of degraded mode (a periodic duty)."""
        while True:
            now = self.degraded()
            if now != self._was_degraded:
                self._was_degraded = now
                if now:
                    log.warning("coordinator unreachable: serving from the last routing state",
                                extra=kv(node=self.node().name, workflows=len(self.plane.state.routes)))
                else:
                    log.info("coordinator reachable again", extra=kv(node=self.node().name))
            if self.health is not None:
                await set_serving(self.health, [COORDINATOR_HEALTH], self.connected())
            self.metrics.excluded.set(len(self.plane.excluded.active()))
            await asyncio.sleep(period)

    def describe(self) -> EntryInfo:
        me = self.node()
        degraded = self.degraded()
        return EntryInfo(me.name, me.region, me.tier, self.address, me.node_id, degraded,
                         "the coordinator is unreachable; serving from the last routing state" if degraded else "",
                         round(self.routing_age(), 3), len(self.plane.state.routes))

    # -- servers ------------------------------------------------------------------------------
    def add_to_worker_server(self, server) -> None:
        add_service(server, self.hop, DATAPLANE)

    async def start_entry(self, listen: str, *, tls_cert: str | None = None, tls_key: str | None = None,
                          insecure: bool = False, advertise: str | None = None) -> str:
        """Serve ``Entry`` on ``listen`` (TLS with the agent's certificate when given; clients
        authenticate with API keys). Returns the address clients use."""
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[EntryGuard(self.entry.keys)])
        add_service(self.server, self.entry, ENTRY)
        self.health = add_health_and_reflection(self.server, [ENTRY.full_name, COORDINATOR_HEALTH])
        host, port = split_address(listen)
        try:
            if tls_cert and tls_key:
                bound = self.server.add_secure_port(f"{host}:{port}", server_credentials(tls_cert, tls_key))
            else:
                plaintext_policy(host, insecure, f"agent {self.node().name}'s entry")
                bound = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {listen}: {exc}", hint="pick a free port with --entry-listen") from None
        await self.server.start()
        await set_serving(self.health, [ENTRY.full_name], True)
        if not advertise and host in ("0.0.0.0", "::", ""):
            try:       # a wildcard bind: advertise this host's own address, not loopback
                host = socket.gethostbyname(socket.gethostname())
            except OSError:
                host = "127.0.0.1"
        self.address = advertise or f"{host}:{bound}"
        return self.address

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(2.0)
        await self.workers.close()
        if self.plane.exporter is not None:
            self.plane.exporter.close()
