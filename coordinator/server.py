"""The coordinator process: store, registry, gRPC services, metrics, and periodic duties.

Periodic duties, in order of urgency:
1. liveness sweep (every interval/10, at most 0.5 s): marks nodes SUSPECT or LOST on time;
2. reconcile (every 0.25 s): re-plans workflows that lost a node, sends assignment differences;
3. flush (every interval, at most 2 s): batch-writes heartbeat times and statuses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from pathlib import Path

import grpc
from prometheus_client import start_http_server

from atoll.coordinator.agent_api import AgentApi
from atoll.coordinator.blobs import BlobStore
from atoll.coordinator.client_api import ClientApi
from atoll.coordinator.model_store_api import ModelStoreApi
from atoll.coordinator.router import Router
from atoll.coordinator.workflows import WorkflowManager
from atoll.coordinator.metrics import CoordinatorMetrics
from atoll.coordinator.registry import Registry, hash_token
from atoll.coordinator.store import SqliteStore
from atoll.errors import Unavailable
from atoll.logs import kv
from atoll.proto.v1 import control_pb2
from atoll.rpc import SERVER_OPTIONS, add_health_and_reflection, add_service, set_serving
from atoll.specs.config import CoordinatorSettings, split_address

log = logging.getLogger("atoll.coordinator")

SERVICES = [control_pb2.DESCRIPTOR.services_by_name[n].full_name
            for n in ("AgentService", "ClientService", "ModelStore")]


def resolve_join_token(store, state_dir: Path, token: str | None) -> tuple[str, Path | None]:
    """Return (token hash, path of the token file if we generated or kept one)."""
    token_file = state_dir / "join-token"
    if token:
        store.set_meta("join_token_sha256", hash_token(token))
        return hash_token(token), None
    stored = store.get_meta("join_token_sha256")
    if stored and token_file.exists():
        return stored, token_file
    token = secrets.token_urlsafe(24)
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    store.set_meta("join_token_sha256", hash_token(token))
    return hash_token(token), token_file


class Coordinator:
    def __init__(self, settings: CoordinatorSettings):
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.metrics = CoordinatorMetrics()
        self.store = None
        self.registry: Registry | None = None
        self.server: grpc.aio.Server | None = None
        self.health = None
        self._tasks: list[asyncio.Task] = []
        self._metrics_server = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.state_dir / "atoll.db")
        token_hash, token_file = resolve_join_token(self.store, self.state_dir, self.settings.join_token)
        self.registry = Registry(self.store, join_token_hash=token_hash,
                                 heartbeat_interval=self.settings.heartbeat_interval, metrics=self.metrics)
        self.metrics.bind(self.registry)
        self.blobs = BlobStore(self.state_dir / "blobs", self.store)
        self.workflows = WorkflowManager(self.store, self.registry, self.metrics, self.blobs)
        self.router = Router(self.metrics)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_service(self.server, AgentApi(self.registry, self.metrics),
                    control_pb2.DESCRIPTOR.services_by_name["AgentService"])
        add_service(self.server, ClientApi(self.registry, self.workflows, self.router, self.metrics),
                    control_pb2.DESCRIPTOR.services_by_name["ClientService"])
        add_service(self.server, ModelStoreApi(self.blobs), control_pb2.DESCRIPTOR.services_by_name["ModelStore"])
        self.health = add_health_and_reflection(self.server, SERVICES)
        host, port = split_address(self.settings.listen)
        try:
            self.port = self.server.add_insecure_port(f"{'[' + host + ']' if ':' in host else host}:{port}")
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {self.settings.listen}: {exc}",
                              hint="pick a free port with --listen") from None
        mhost, mport = split_address(self.settings.metrics_listen)
        try:
            self._metrics_server = start_http_server(mport, addr=mhost, registry=self.metrics.registry)
            srv = self._metrics_server[0] if isinstance(self._metrics_server, tuple) else None
            self.metrics_port = srv.server_address[1] if srv else mport
        except OSError as exc:
            raise Unavailable(f"cannot serve metrics on {self.settings.metrics_listen}: {exc}",
                              hint="pick a free port with --metrics-listen") from None
        await self.server.start()
        await set_serving(self.health, SERVICES, True)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweep_loop()), loop.create_task(self._flush_loop()),
                       loop.create_task(self._reconcile_loop())]
        log.info("coordinator listening", extra=kv(
            grpc=f"{host}:{self.port}", metrics=f"http://{mhost}:{self.metrics_port}/metrics",
            state_dir=str(self.state_dir), nodes=len(self.registry.nodes),
            heartbeat_interval=self.settings.heartbeat_interval,
            join_token=(f"in {token_file}" if token_file else "from settings")))

    async def _sweep_loop(self) -> None:
        period = min(0.5, self.settings.heartbeat_interval / 10)
        while True:
            await asyncio.sleep(period)
            try:
                for t in self.registry.sweep():
                    rec = self.registry.nodes.get(t.node_id)
                    log.info("node state changed", extra=kv(node=rec.name if rec else t.node_id,
                                                            old=t.old, new=t.new))
            except Exception:  # noqa: BLE001 - a failed sweep must not stop the loop
                log.exception("liveness sweep failed")

    async def _reconcile_loop(self) -> None:
        """Level-triggered: re-plan workflows that lost capacity, then send differences."""
        while True:
            await asyncio.sleep(0.25)
            try:
                self.workflows.replan_pending()
                self.workflows.reconcile()
            except Exception:  # noqa: BLE001
                log.exception("reconcile failed")

    async def _flush_loop(self) -> None:
        period = min(2.0, self.settings.heartbeat_interval)
        while True:
            await asyncio.sleep(period)
            try:
                self.registry.flush()
            except Exception:  # noqa: BLE001
                log.exception("flush failed")

    async def stop(self, grace: float = 2.0) -> None:
        if self.health is not None:
            await set_serving(self.health, SERVICES, False)
        for t in self._tasks:
            t.cancel()
        if self.server is not None:
            await self.server.stop(grace)
        if getattr(self, "router", None) is not None:
            await self.router.close()
        if self.registry is not None:
            self.registry.flush()
        if self._metrics_server and isinstance(self._metrics_server, tuple):
            self._metrics_server[0].shutdown()
        if self.store is not None:
            self.store.close()
        self._stopped.set()

    async def run_until_signal(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("coordinator shutting down")
        await self.stop()
