"""The agent daemon: one per host.

It is an ordered list of periodic duties (STYLE.md 7). The order matters: the heartbeat duty
runs first because the coordinator's view of the node (and every later duty's instructions)
depends on it; the capacity refresh feeds the next heartbeat; duties added later (reconcile
assignments, report throughput) consume what the heartbeat delivered.

SIGTERM/SIGINT drains: health turns NOT_SERVING, the coordinator is told (it marks the node
DRAINING and acknowledges), in-flight work finishes, then the process exits 0.

Identity (``identity.py``): the node key in STATE_DIR proves who registers; the coordinator's
key pinned there verifies the capability tokens every Worker call must carry (``guard.py``);
the node token from the heartbeat stream lets this node fetch what its assignments name.
Fetched blobs no assignment has named for ``cache_keep_seconds`` are removed from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from atoll.agent.carry import TrustGate
from atoll.agent.dataplane.chain import NodeSelf
from atoll.agent.dataplane.door import make_entry_door
from atoll.agent.dataplane.node import DataPlaneNode
from atoll.agent.fetch import cached_names, prune, resolve_source
from atoll.agent.guard import WorkerGuard
from atoll.agent.heartbeat import AgentRefused, HeartbeatClient
from atoll.agent.identity import NodeIdentity
from atoll.agent.probe import probe
from atoll.agent.replicas import ReplicaManager
from atoll.agent.serving import LocalEngine, SwitchingWorker, replica_queues
from atoll.agent.worker import WorkerService
from atoll.core import credentials as cred
from atoll.core.errors import FailedPrecondition, Unauthenticated, Unavailable
from atoll.core.logs import kv
from atoll.core.metrics_http import read_token_file, serve_metrics
from atoll.core.rpc import CHANNEL_OPTIONS, SERVER_OPTIONS, add_health_and_reflection, set_serving
from atoll.core.tls import channel_credentials, mutual_server_credentials, plain_http_warning, plaintext_policy
from atoll.specs.common import load_yaml
from atoll.specs.config import FAILOVER_CHANNEL_OPTIONS, AgentSettings, split_address, split_addresses
from atoll.specs.node import NodeConfig

log = logging.getLogger("atoll.agent")
PRUNE_EVERY_S = 2.0


@dataclass
class Duty:
    """A periodic duty: ``fn`` runs every ``period`` seconds (0: runs once, for its lifetime)."""

    name: str
    period: float
    fn: Callable[[], Awaitable[None]]


class NodeIdFile:
    """The node id lives in STATE_DIR/node_id so that it survives agent restarts."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "node_id"

    def read(self) -> str:
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def write(self, node_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(node_id + "\n")
        tmp.replace(self.path)


class Agent:
    def __init__(self, settings: AgentSettings, node: NodeConfig):
        self.settings = settings
        self.node = node
        self.state_dir = Path(settings.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ids = NodeIdFile(self.state_dir)
        self.identity = NodeIdentity(self.state_dir, over_tls=bool(settings.tls_ca))
        # fetched blob -> when an assignment last named it (what is cached at start counts as named now)
        self._referenced: dict[str, float] = dict.fromkeys(cached_names(self.state_dir / "blobs"), time.monotonic())
        self._pruned_at = 0.0
        self.channel: grpc.aio.Channel | None = None
        self.channels: list[grpc.aio.Channel] = []
        self.hb: HeartbeatClient | None = None
        self.duties: list[Duty] = []
        self._tasks: list[asyncio.Task] = []
        self.metrics_registry = CollectorRegistry()
        # The Worker port's door: the guard checks the caller's token, the gate what it asks for.
        self.guard = WorkerGuard(self._guard_identity, revoked=lambda: self.dataplane.keys.keyset.revoked_nodes)
        self.gate = TrustGate(self.guard.claims, lambda: self.dataplane.plane.state,
                              lambda: (self.replicas.desired_generation, self.replicas.desired),
                              lambda: self._self().node_id, registry=self.metrics_registry)
        self.worker = SwitchingWorker(admit=self.gate.infer)
        self.server: grpc.aio.Server | None = None
        self.health = None
        self.worker_address = ""
        self.replicas = ReplicaManager(self._make_engine, self._resolve, on_change=self._status_changed)
        self._engine_seen = None
        st = settings
        # The data plane: this agent is an entry, and a hop on the plan's paths between stages.
        self.dataplane = DataPlaneNode(
            node=self._self, local=LocalEngine(self.worker), local_address=lambda: self.worker_address,
            connected=lambda: self.hb is not None and self.hb.connected.is_set(),
            credentials=channel_credentials(st.tls_ca, st.tls_cert, st.tls_key), registry=self.metrics_registry,
            otlp_endpoint=st.otlp_endpoint, wake=self._status_changed,
            peer_token=self.identity.current_token, peer_proof=self.identity.call_proof,
            admit_forward=self.gate.forward)
        self.dataplane.keys.identity = self._guard_identity    # caller tokens: for this node, by the pinned key

    def _self(self) -> NodeSelf:
        return NodeSelf(self.hb.node_id if self.hb is not None else self.ids.read(), self.node.name,
                        self.node.region, self.node.tier)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> "Agent":
        return cls(settings, load_yaml(NodeConfig, settings.config))

    def spec(self) -> dict:
        return self.node.model_dump(exclude={"simulated_hardware"})

    async def start(self) -> None:
        token = self.settings.join_token
        if not token:
            raise Unauthenticated("no join token", hint="pass --join-token or set ATOLL_JOIN_TOKEN "
                                  "(the coordinator keeps it in STATE_DIR/join-token)")
        await self._start_worker_server()
        st = self.settings
        entry = await self.dataplane.start_entry(st.entry_listen, tls_cert=st.tls_cert, tls_key=st.tls_key,
                                                 insecure=st.insecure, advertise=st.entry_advertise)
        log.info("entry listening", extra=kv(node=self.node.name, address=entry))
        self._start_metrics()
        self.openai = None
        if self.settings.openai_listen:
            ohost, oport = split_address(self.settings.openai_listen)
            plain_http_warning(ohost, f"agent {self.node.name}'s OpenAI door (--openai-listen), which receives keys,")
            try:
                self.openai = make_entry_door(self.dataplane.entry, host=ohost, port=oport)
            except OSError as exc:
                raise Unavailable(f"cannot serve the OpenAI API on {self.settings.openai_listen}: {exc}",
                                  hint="pick a free port with --openai-listen") from None
            await self.openai.start()
            log.info("openai endpoint", extra=kv(node=self.node.name, url=f"http://{ohost}:{self.openai.port}/v1"))
        # One channel per coordinator listed (several: fail over between them).
        addresses = split_addresses(self.settings.coordinator)
        options = CHANNEL_OPTIONS + (FAILOVER_CHANNEL_OPTIONS if len(addresses) > 1 else [])
        creds = channel_credentials(self.settings.tls_ca, self.settings.tls_cert, self.settings.tls_key)
        self.channels = [grpc.aio.secure_channel(a, creds, options=options) if creds
                         else grpc.aio.insecure_channel(a, options=options) for a in addresses]
        self.channel = self.channels[0]
        self.hb = HeartbeatClient(self.channels if len(self.channels) > 1 else self.channel,
                                  addresses=addresses, join_token=token, spec=self.spec(),
                                  capacity=probe(self.node, str(self.state_dir)),
                                  node_id=self.ids.read(), on_node_id=self.ids.write,
                                  on_instruction=self._on_instruction, status_fn=self._status,
                                  generation_fn=lambda: self.replicas.applied_generation,
                                  dataplane_fn=self.dataplane.heartbeat_extras, on_session=self.dataplane.on_session,
                                  node_key=self.identity.key, on_coordinator_key=self.identity.pin,
                                  on_credential=self.identity.set_token, tls=creds is not None)
        # The ordered duties: heartbeat first (everything else depends on the coordinator's view);
        # converge acts on the assignments the heartbeat stream delivered; the capacity refresh
        # feeds the next heartbeat.
        self.duties = [
            Duty("heartbeat", 0, self.hb.run),
            Duty("converge-assignments", 0.2, self._converge),
            Duty("capacity-refresh", 30.0, self._refresh_capacity),
            Duty("dataplane-watch", 0, self.dataplane.watch),
        ]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run_duty(d), name=d.name) for d in self.duties]

    async def _run_duty(self, duty: Duty) -> None:
        if duty.period <= 0:
            await duty.fn()
            return
        while True:
            await asyncio.sleep(duty.period)
            try:
                await duty.fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one failed round must not stop the duty
                log.exception("duty failed", extra=kv(duty=duty.name))

    async def _refresh_capacity(self) -> None:
        self.hb.set_capacity(probe(self.node, str(self.state_dir)))
        self._reload_price()

    def _reload_price(self) -> None:
        """Marketplaces re-price hosts: re-read node.yaml's price_per_hour/preemptible (on the
        periodic refresh, and at once on SIGHUP) and report a change in the heartbeats."""
        try:
            fresh = load_yaml(NodeConfig, self.settings.config)
        except Exception as exc:  # noqa: BLE001 - keep the last good config, say why
            log.warning("node.yaml reload failed", extra=kv(error=str(exc)[:200]))
            return
        if (fresh.price_per_hour, fresh.preemptible) != (self.node.price_per_hour, self.node.preemptible):
            log.info("price changed", extra=kv(node=self.node.name, old=self.node.price_per_hour,
                                               new=fresh.price_per_hour, preemptible=fresh.preemptible))
            self.node = self.node.model_copy(update={"price_per_hour": fresh.price_per_hour,
                                                     "preemptible": fresh.preemptible})
            self.hb.set_price(fresh.price_per_hour, fresh.preemptible)

    def _start_metrics(self) -> None:
        """Prometheus on --metrics-listen: the runtime's metrics of the engine loaded now, plus
        the replicas this agent holds by state."""
        if not self.settings.metrics_listen:
            return
        agent = self

        class _Current:
            def describe(self):
                return []

            def collect(self):
                svc = agent.worker.current
                if svc is not None:
                    yield from svc.registry.collect()
                g = GaugeMetricFamily("atoll_agent_replicas", "Replicas this agent holds, by state", labels=["state"])
                counts: dict[str, int] = {}
                for st in agent.replicas.states.values():
                    counts[st] = counts.get(st, 0) + 1
                for st in ("pending", "loading", "ready", "failed"):
                    g.add_metric([st], counts.get(st, 0))
                yield g

        reg = self.metrics_registry          # the data plane's families are in it already
        reg.register(_Current())
        host, port = split_address(self.settings.metrics_listen)
        token = read_token_file(self.settings.metrics_token_file)
        plain_http_warning(host, f"agent {self.node.name}'s metrics (--metrics-listen)")
        serve_metrics(host, port, reg, token)
        log.info("agent metrics", extra=kv(node=self.node.name, url=f"http://{host}:{port}/metrics"))

    async def _start_worker_server(self) -> None:
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[self.guard])
        self.worker.add_to_server(self.server)
        self.dataplane.add_to_worker_server(self.server)
        self.health = add_health_and_reflection(self.server, ["atoll.v1.Worker"])
        host, port = split_address(self.settings.worker_listen)
        st = self.settings
        try:
            if st.tls_cert and st.tls_key and st.tls_ca:
                # The Worker answers only the coordinator: its client certificate must be signed by tls_ca.
                bound = self.server.add_secure_port(f"{host}:{port}",
                                                    mutual_server_credentials(st.tls_cert, st.tls_key, st.tls_ca))
            else:
                plaintext_policy(host, st.insecure, f"agent {self.node.name}'s Worker")
                bound = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {st.worker_listen}: {exc}",
                              hint="pick a free port with --worker-listen") from None
        await self.server.start()
        await set_serving(self.health, ["atoll.v1.Worker"], True)
        if st.worker_advertise:
            self.worker_address = st.worker_advertise
        else:
            if host in ("0.0.0.0", "::", ""):
                try:       # a wildcard bind: advertise this host's own address, not loopback
                    host = socket.gethostbyname(socket.gethostname())
                except OSError:
                    host = "127.0.0.1"
            self.worker_address = f"{host}:{bound}"
        log.info("worker listening", extra=kv(node=self.node.name, address=self.worker_address))

    def _guard_identity(self):
        """What the Worker's guard checks tokens against: the pinned key and this node's id."""
        return self.identity.coordinator_key, (self.hb.node_id if self.hb is not None else self.ids.read())

    def _worker_caller(self) -> str:
        """Who calls the Worker's request under way: the calling node's id ("coordinator" for the
        coordinator's own calls, "" without a fleet token)."""
        claims = self.guard.claims()
        if claims is None:
            return ""
        return "coordinator" if claims.is_coordinator else claims.node_id

    def _make_engine(self, model_dir: Path):
        # The runtime (torch, seconds to import) loads with the first model, so an agent joins
        # the fleet without waiting for it.
        import torch

        from atoll.agent.runtime import Engine

        cuda = torch.cuda.is_available()
        return Engine(model_dir, device="cuda" if cuda else "cpu", dtype="float16" if cuda else "float32",
                      lora_backend="auto")

    async def _resolve(self, source: str) -> Path:
        def progress(done: int, total: int) -> None:
            if total and (done == total or done % (64 << 20) < (1 << 20)):
                log.info("fetching", extra=kv(name=source[:19], done=done, total=total))

        channel = self.hb.channel if self.hb is not None else self.channel
        return await resolve_source(source, channel=channel, cache_dir=self.state_dir / "blobs",
                                    progress=progress, token=self.identity.current_token(),
                                    proof=self.identity.call_proof(cred.COORDINATOR_AUDIENCE))

    def _prune_cache(self, now: float) -> None:
        """Drop fetched blobs that no assignment (desired or loaded) has named for a while."""
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        named = {s for it in self.replicas.desired for s in (it.base_model, it.adapter_source)}
        named |= {self.replicas.loaded.base_source, *self.replicas.loaded.adapters.values()}
        for src in named:
            if src.startswith("sha256:"):
                self._referenced[src] = now
        keep = named | {s for s, t in self._referenced.items() if now - t < self.settings.cache_keep_seconds}
        gone = prune(self.state_dir / "blobs", keep)
        if gone:
            log.info("removed fetched blobs no assignment names", extra=kv(node=self.node.name, blobs=len(gone)))
        for src in gone:
            self._referenced.pop(src, None)

    async def _converge(self) -> None:
        await self.replicas.converge()
        self._prune_cache(time.monotonic())
        engine = self.replicas.engine
        if engine is not self._engine_seen:
            self.worker.current = WorkerService(engine, caller=self._worker_caller) if engine is not None else None
            self._engine_seen = engine
            self._status_changed()

    def _status_changed(self) -> None:
        if self.hb is not None:
            self.hb.poke()

    def _status(self) -> dict:
        """The NodeStatus fields (see ``atoll.wire.nodes``) for the next heartbeat."""
        st = {"worker_address": self.worker_address, "entry_address": self.dataplane.address,
              "replica_states": dict(self.replicas.states),
              "replica_messages": dict(self.replicas.messages),
              "replica_load_seconds": {k: round(v, 4) for k, v in self.replicas.load_seconds.items()},
              "measured_throughput": {k: round(v, 4) for k, v in self.worker.meter.rates().items()},
              "running_requests": self.worker.in_flight, "cached_models": cached_names(self.state_dir / "blobs"),
              "replica_queue_depth": replica_queues(self.replicas.desired, self.worker.waiting)}
        eng = self.replicas.engine
        if eng is not None:
            try:
                s = eng.stats()
                st["queue_depth"] = int(s.get("waiting", 0))
                st["kv_cache_usage"] = float(s.get("kv_usage", s.get("kv_cache_usage", 0.0)))
                st["ttft_seconds"] = float(s.get("ttft_mean_s", 0.0))
            except Exception:  # noqa: BLE001 - stats are best effort
                pass
            st["loaded"] = [{"base_model": self.replicas.loaded.base_source,
                             "adapters": sorted(self.replicas.loaded.adapters), "state": "ready"}]
        return st

    async def _on_instruction(self, ins: dict) -> None:
        if ins.get("drain") and not self.hb._draining:
            log.info("drained by the coordinator; taking no new work", extra=kv(node=self.node.name))
        elif self.dataplane.on_instruction(ins):
            return
        elif "assignments" in ins:
            self.replicas.set_desired(ins["assignments"].items, ins["assignments"].generation)

    async def drain_and_stop(self) -> None:
        if self.hb is not None and self.hb.connected.is_set():
            acked = await self.hb.drain(timeout=5.0)
            log.info("drained", extra=kv(node=self.node.name, acknowledged=acked))
        await self.stop()

    async def stop(self) -> None:
        if self.health is not None:
            await set_serving(self.health, ["atoll.v1.Worker"], False)
        if self.hb is not None:
            self.hb.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(5.0)       # in-flight requests get up to 5 s to finish
        if getattr(self, "openai", None) is not None:
            await self.openai.stop()
        await self.replicas.close()
        await self.dataplane.close()
        for ch in self.channels or ([self.channel] if self.channel is not None else []):
            await ch.close()

    async def run_until_signal(self) -> None:
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_price)
        hb_task = self._tasks[0]
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({waiter, hb_task}, return_when=asyncio.FIRST_COMPLETED)
        if hb_task in done and not waiter.done():
            waiter.cancel()
            exc = hb_task.exception()
            await self.stop()
            if isinstance(exc, AgentRefused):
                raise FailedPrecondition(str(exc)) if exc.code != grpc.StatusCode.UNAUTHENTICATED \
                    else Unauthenticated(str(exc))
            if exc:
                raise exc
            return
        log.info("signal received: draining", extra=kv(node=self.node.name))
        await self.drain_and_stop()
