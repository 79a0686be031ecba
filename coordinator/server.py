"""The coordinator process: store, registry, gRPC services, metrics, and periodic duties.

Periodic duties (the leader's), in order of urgency:
1. liveness sweep (every interval/10, at most 0.5 s): marks nodes SUSPECT or LOST on time;
2. reconcile (every 0.25 s): re-plans workflows that lost a node, sends assignment differences;
3. flush (every interval, at most 2 s): batch-writes heartbeat times and statuses.

High availability (``database_url`` set): several coordinators share one PostgreSQL database and
one of them leads (``leader.py``). Until it is elected a coordinator is a *standby*: it answers
the read RPCs (ListNodes, GetNode, ListWorkflows, GetWorkflow) from the database, and every
other RPC with UNAVAILABLE "standby; leader is at ADDR", so agents and clients move on to the
next address they know. On election it builds its registry and workflow manager from the store
(nodes that were alive get the registry's restore grace, so agents reconnecting are not marked
LOST), starts the duties above and turns health SERVING for every service. Health on a standby:
"" and ClientService SERVING (reads), AgentService and ModelStore NOT_SERVING — AgentService's
status says who leads. With SQLite there is no election: the coordinator leads from the start.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import grpc

from atoll.coordinator.agent_api import AgentApi
from atoll.coordinator.auth import AuthInterceptor, KeyRing
from atoll.coordinator.autoscaler import PassTimer
from atoll.coordinator.blobs import BlobStore
from atoll.coordinator.client_api import ClientApi
from atoll.coordinator.convert import SERVICES
from atoll.coordinator.identity import Issuer, load_signing_key
from atoll.coordinator.leader import AdvisoryLockLeadership, SoloLeadership
from atoll.coordinator.metrics import CoordinatorMetrics
from atoll.coordinator.model_store_api import ModelStoreApi
from atoll.coordinator.entry_load import EntryLoads
from atoll.coordinator.forward import EntryForwarder
from atoll.coordinator.openai_http import make_door
from atoll.coordinator.join_tokens import hash_token
from atoll.coordinator.planning import PlanWorkers
from atoll.coordinator.publish import Publisher, entries
from atoll.coordinator.registry import Registry
from atoll.coordinator.store import guard_store, open_store
from atoll.coordinator.workflows import WorkflowManager
from atoll.core.apikeys import KeySet, with_revoked_nodes
from atoll.core.errors import SpecError, Unavailable
from atoll.core.logs import kv
from atoll.core.metrics_http import read_token_file, serve_metrics
from atoll.core.pools import Pool
from atoll.core.rpc import SERVER_OPTIONS, add_health_and_reflection, add_service, set_serving
from atoll.core.tls import (channel_credentials, mutual_server_credentials, plain_http_warning, plaintext_policy,
                            server_credentials)
from atoll.specs.config import CoordinatorSettings, split_address
from atoll.specs.routing import UNTRUSTED_TIERS
from atoll.wire.worker import WorkerClient

log = logging.getLogger("atoll.coordinator")

SERVICE_NAMES = [d.full_name for d in SERVICES.values()]
# What a standby answers itself (from the database); everything else is the leader's.
STANDBY_READS = {"ClientService": {"ListNodes", "GetNode", "ListWorkflows", "GetWorkflow"}}
STANDBY_VIEW_TTL = 0.5      # seconds a standby reuses its view of the database


def _bind_address(host: str, port: int) -> str:
    return f"{'[' + host + ']' if ':' in host else host}:{port}"


def resolve_join_token(store, state_dir: Path, token: str | None,
                       shared: bool = False) -> tuple[str, Path | None]:
    """Return (token hash, path of the token file if we generated or kept one). ``shared``: the
    store is shared with other coordinators, whose stored token stands even without a file here."""
    token_file = state_dir / "join-token"
    if token:
        store.set_meta("join_token_sha256", hash_token(token))
        return hash_token(token), None
    stored = store.get_meta("join_token_sha256")
    if stored and token_file.exists():
        return stored, token_file
    if stored and shared:
        return stored, None
    token = secrets.token_urlsafe(24)
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    store.set_meta("join_token_sha256", hash_token(token))
    return hash_token(token), token_file


class _RoleGate:
    """Stands in for one service's servicer and dispatches each call, when it arrives, to what
    this coordinator's role allows: the leader's servicer, a standby's read view, or UNAVAILABLE
    naming the leader. gRPC binds handlers once at start-up; the role changes later. Each
    handler keeps the shape of ``cls``'s method (async generator or coroutine)."""

    def __init__(self, coord: "Coordinator", service: str, cls: type):
        self._coord, self._service, self._cls = coord, service, cls

    def __getattr__(self, method: str):
        cls = self.__dict__.get("_cls")
        if cls is None or not hasattr(cls, method):
            raise AttributeError(method)
        coord, service = self._coord, self._service
        if inspect.isasyncgenfunction(getattr(cls, method)):
            async def stream(request, context):
                target = coord._target(service, method)
                if target is None:
                    await coord._refuse(context)
                    return
                async for item in target(request, context):
                    yield item
            return stream

        async def call(request, context):
            target = coord._target(service, method)
            if target is None:
                await coord._refuse(context)
                return None
            return await target(request, context)
        return call


class Coordinator:
    def __init__(self, settings: CoordinatorSettings):
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.metrics = CoordinatorMetrics()
        self.store = None
        self.registry: Registry | None = None
        self.workflows: WorkflowManager | None = None
        self.server: grpc.aio.Server | None = None
        self.health = None
        self._flush_io = Pool("store-flush", 1)    # the batched status write, never behind other threads
        self.leadership = None
        self._apis: dict[str, object] = {}          # the leader's servicers, by service
        self._view: tuple[float, ClientApi] | None = None   # a standby's read view
        self._tasks: list[asyncio.Task] = []
        self._duties: list[asyncio.Task] = []
        self._metrics_server = None
        self.port = 0
        self.metrics_port = 0
        self.exit_code = 0
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return bool(self.leadership and self.leadership.is_leader and self._apis)

    async def start(self) -> None:
        """Open the state, serve gRPC (and metrics, and the OpenAI door when asked), then take
        the role: lead at once (SQLite), or stand by for the election (PostgreSQL)."""
        token_file = self._open_state()
        self._check_tls_settings()
        self._build_server()
        host = self._bind()
        mhost = self._start_metrics()
        self.advertise = self.settings.advertise or (
            f"{socket.gethostname() if host in ('0.0.0.0', '::') else host}:{self.port}")
        await self.server.start()
        await self._start_openai()
        if not self.keys.enabled():
            log.warning("no API keys exist: client calls are not authenticated "
                        "(create the first admin key with `atoll keys create --tenant NAME --role admin`)")
        await self._take_role()
        self._log_started(host, mhost, token_file)

    def _open_state(self) -> Path | None:
        """The store (refused when it is empty but this state dir says it held data:
        ``store.guard_store``), the signing key, the join token, the blob store, the API keys, the
        profiler's Worker client (over TLS, with this coordinator's certificate as the client
        certificate when agents use mutual TLS, and always with a coordinator token for the
        node) and the forwarder to agents' entries. Returns the join-token file, if one is kept
        here."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(self.settings)
        st = self.settings
        guard_store(self.store, self.state_dir, st.allow_empty_store)
        self.issuer = Issuer(load_signing_key(self.store))
        self._token_hash, token_file = resolve_join_token(self.store, self.state_dir, st.join_token,
                                                          bool(st.database_url))
        self.blobs = BlobStore(self.state_dir / "blobs", self.store)
        creds = channel_credentials(st.tls_client_ca, st.tls_cert, st.tls_key)
        self.workers = WorkerClient(creds, tokens=self.issuer.coordinator_token)
        self.publisher: Publisher | None = None
        self.forwarder = EntryForwarder(self._entries, channel_credentials(st.tls_client_ca), self._entry_current,
                                        mint=self._caller_token)
        self.keys = KeyRing(self.store)
        return token_file

    def _check_tls_settings(self) -> None:
        st = self.settings
        if bool(st.tls_cert) != bool(st.tls_key):
            raise SpecError("give both --tls-cert and --tls-key", source="settings")
        if st.tls_client_ca and not st.tls_cert:
            raise SpecError("--tls-client-ca needs --tls-cert and --tls-key", source="settings")
        if st.tls_client_ca and not st.agent_listen:
            raise SpecError("--tls-client-ca needs --agent-listen (the mutual-TLS port for agents)",
                            source="settings")

    def _build_server(self) -> None:
        """The gRPC server: every service behind a role gate, API keys checked, health and reflection."""
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[AuthInterceptor(
            self.keys, self.issuer, revoked=self._revoked_nodes)])
        self.require_agent_certs = bool(self.settings.tls_client_ca)
        for name, cls in (("AgentService", AgentApi), ("ClientService", ClientApi), ("ModelStore", ModelStoreApi)):
            add_service(self.server, _RoleGate(self, name, cls), SERVICES[name])
        self.health = add_health_and_reflection(self.server, SERVICE_NAMES)

    def _bind(self) -> str:
        """Listen on --listen (TLS when a certificate is given; plaintext only where the policy
        allows), and on --agent-listen with mutual TLS. Returns the listen host."""
        st = self.settings
        host, port = split_address(st.listen)
        try:
            if st.tls_cert:
                self.port = self.server.add_secure_port(_bind_address(host, port),
                                                        server_credentials(st.tls_cert, st.tls_key))
                if st.tls_client_ca:
                    ahost, aport = split_address(st.agent_listen)
                    self.agent_port = self.server.add_secure_port(
                        _bind_address(ahost, aport), mutual_server_credentials(st.tls_cert, st.tls_key,
                                                                               st.tls_client_ca))
            else:
                plaintext_policy(host, st.insecure, "the coordinator")
                self.port = self.server.add_insecure_port(_bind_address(host, port))
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {st.listen}: {exc}", hint="pick a free port with --listen") from None
        return host

    def _start_metrics(self) -> str:
        mhost, mport = split_address(self.settings.metrics_listen)
        token = read_token_file(self.settings.metrics_token_file)
        plain_http_warning(mhost, "the coordinator's metrics (--metrics-listen)")
        try:
            self._metrics_server = serve_metrics(mhost, mport, self.metrics.registry, token)
            self.metrics_port = self._metrics_server.server_address[1]
        except OSError as exc:
            raise Unavailable(f"cannot serve metrics on {self.settings.metrics_listen}: {exc}",
                              hint="pick a free port with --metrics-listen") from None
        return mhost

    async def _start_openai(self) -> None:
        self.openai = None
        if not self.settings.openai_listen:
            return
        ohost, oport = split_address(self.settings.openai_listen)
        plain_http_warning(ohost, "the coordinator's OpenAI door (--openai-listen), which receives API keys,")
        try:
            self.openai = make_door(self.keys, lambda: self.workflows, self.forwarder, host=ohost, port=oport,
                                    metrics=self.metrics)
        except OSError as exc:
            raise Unavailable(f"cannot serve the OpenAI API on {self.settings.openai_listen}: {exc}",
                              hint="pick a free port with --openai-listen") from None
        await self.openai.start()

    async def _take_role(self) -> None:
        if self.settings.database_url:
            self.leadership = AdvisoryLockLeadership(self.settings.database_url, self.advertise,
                                                     on_elected=self._promote, on_lost=self._lost)
            await self._set_health(leader=False)
            self._tasks = [asyncio.get_running_loop().create_task(self.leadership.run())]
        else:
            self.leadership = SoloLeadership(self._promote)
            await self.leadership.run()

    def _log_started(self, host: str, mhost: str, token_file: Path | None) -> None:
        st = self.settings
        log.info("coordinator listening", extra=kv(
            grpc=f"{host}:{self.port}", metrics=f"http://{mhost}:{self.metrics_port}/metrics",
            store="postgresql" if st.database_url else str(self.state_dir / "atoll.db"),
            role="leader" if self.is_leader else "standby", advertise=self.advertise,
            openai=(f"http://{st.openai_listen.rsplit(':', 1)[0]}:{self.openai.port}/v1" if self.openai else "off"),
            heartbeat_interval=st.heartbeat_interval, signing_key=self.issuer.fingerprint,
            join_token=(f"in {token_file}" if token_file else "from settings" if st.join_token
                        else "from the database")))

    # -- roles --------------------------------------------------------------------------------
    async def _promote(self) -> None:
        """Become the leader: load the state from the store, serve every RPC, run the duties."""
        t0 = time.monotonic()
        self.registry = Registry(self.store, join_token_hash=self._token_hash,
                                 heartbeat_interval=self.settings.heartbeat_interval, metrics=self.metrics,
                                 join_burst=self.settings.join_burst, join_rate=self.settings.join_rate,
                                 max_nodes=self.settings.max_nodes)
        self.metrics.bind(self.registry)
        self.planner = PlanWorkers(preload=("atoll.coordinator.placement", "atoll.coordinator.admission"))
        self.workflows = WorkflowManager(self.store, self.registry, self.metrics, self.blobs, planner=self.planner)
        if self.settings.database_url:       # from now on a write commits only while we lead
            loop = asyncio.get_running_loop()
            self.store.fence(self.leadership.epoch, lambda why: loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self._lost(why))))
        self.publisher = Publisher(self.registry, EntryLoads(self.workflows))
        self._apis = {"AgentService": AgentApi(self.registry, self.metrics, self.issuer,
                                               require_client_cert=self.require_agent_certs,
                                               dataplane=self.publisher),
                      "ClientService": ClientApi(self.registry, self.workflows, self.forwarder, self.metrics,
                                                 keys=self.keys, workers=self.workers, entries=self._entries,
                                                 mint=self._caller_token),
                      "ModelStore": ModelStoreApi(self.blobs, references=self.workflows.references)}
        self._view = None
        loop = asyncio.get_running_loop()
        self._duties = [loop.create_task(self._sweep_loop()), loop.create_task(self._flush_loop()),
                        loop.create_task(self._reconcile_loop())]
        self._tasks += self._duties
        await self._set_health(leader=True)
        if self.settings.database_url:
            log.info("leading", extra=kv(epoch=self.leadership.epoch, nodes=len(self.registry.nodes),
                                         workflows=len(self.workflows.records),
                                         load_seconds=round(time.monotonic() - t0, 3)))

    async def _lost(self, why: str) -> None:
        """Leadership cannot be confirmed (or a write was fenced out by a newer epoch): stop
        writing at once and exit, so a supervisor restarts this process as a standby (the safe
        side of a partition from the database)."""
        if not self._apis:
            return
        log.error("leadership lost; stepping down", extra=kv(why=why[:300]))
        self._apis = {}
        for t in self._duties:
            t.cancel()
        await self._set_health(leader=False)
        self.exit_code = 3
        self._stop_requested.set()

    async def _set_health(self, leader: bool) -> None:
        await set_serving(self.health, ["atoll.v1.AgentService", "atoll.v1.ModelStore"], leader)
        await set_serving(self.health, ["atoll.v1.ClientService"], True)   # and "": this process serves

    def _target(self, service: str, method: str):
        api = self._apis.get(service)
        if api is not None:
            return getattr(api, method)
        if method in STANDBY_READS.get(service, ()):
            return getattr(self._standby_view(), method)
        return None

    def _standby_view(self) -> ClientApi:
        """A read-only ClientApi over the database as it is now (rebuilt at most every 0.5 s)."""
        now = time.monotonic()
        if self._view is None or now - self._view[0] > STANDBY_VIEW_TTL:
            reg = Registry(self.store, join_token_hash=self._token_hash,
                           heartbeat_interval=self.settings.heartbeat_interval)
            self._view = (now, ClientApi(reg, WorkflowManager(self.store, reg, None, self.blobs), keys=self.keys))
        return self._view[1]

    async def _refuse(self, context) -> None:
        leader = getattr(self.leadership, "leader_address", "")
        if not leader and self.settings.database_url:      # before this standby's first poll
            try:
                leader = self.store.get_meta("leader_address") or ""
            except Exception:  # noqa: BLE001 - only a hint
                leader = ""
        leader = leader or "unknown (election under way)"
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"standby; leader is at {leader}")

    def _entries(self, region: str, workflow: str = ""):
        """READY agents' entries, ``region``'s first; a trusted_only workflow's only on nodes the
        operator trusts, and never on a renter (``atoll.specs.routing.may_hold``)."""
        trusted = False
        if workflow and self.workflows is not None and workflow in self.workflows.records:
            trusted = self.workflows.spec(workflow).placement.trusted_only
        nodes = self.registry.nodes.values() if self.registry else ()
        if trusted:
            nodes = [n for n in nodes if n.trusted]
        return entries(nodes, region, (lambda tier: tier not in UNTRUSTED_TIERS) if trusted else None)

    def _caller_token(self, ident, node_id: str) -> str:
        """What ``ident`` (an API key's holder) presents at ``node_id``'s entry instead of its key."""
        return self.issuer.caller_token(ident.key_id, ident.tenant, ident.role, node_id)[0]

    def _entry_current(self, node_id: str) -> bool:
        return self.publisher is None or self.publisher.current(node_id, self._agent_keys(),
                                                                self.workflows.routing_table())

    def _revoked_nodes(self) -> dict[str, float]:
        return self.registry.revoked_nodes() if self.registry is not None else {}

    def _agent_keys(self) -> KeySet:
        """What agents check: the API keys, and the node-token revocations."""
        return with_revoked_nodes(self.keys.key_set(), self._revoked_nodes())

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
        """Level-triggered: re-plan workflows that lost capacity, then send differences. The
        re-plans and the autoscaler's pass each run as a task of their own (one at a time; the
        pass once a second at most), so their placements, which wait their turn for the
        placement lock and then plan in a worker, never hold this loop up: assignments, routing
        states, key sets and cut-offs keep going out meanwhile. Both end with this loop. A
        heartbeat stream that ended (an agent died) starts a pass at once, so the replicas it
        held are replaced within this loop's tick rather than at the next second."""
        autoscaling: asyncio.Task | None = None
        replanning: asyncio.Task | None = None
        timer = PassTimer(self.registry.sessions_closed)
        try:
            while True:
                await asyncio.sleep(0.25)
                try:
                    if replanning is None or replanning.done():
                        replanning = asyncio.get_running_loop().create_task(self._replan())
                    now = time.monotonic()
                    if timer.due(now, self.registry.sessions_closed) and (autoscaling is None or autoscaling.done()):
                        timer.started(now, self.registry.sessions_closed)
                        autoscaling = asyncio.get_running_loop().create_task(self._autoscale(now))
                    self.workflows.reconcile()
                    self.registry.cut_off()
                    self.publisher.publish(self.workflows.routing_table(), self._agent_keys(), now)
                except Exception:  # noqa: BLE001
                    log.exception("reconcile failed")
        finally:
            for task in (autoscaling, replanning):
                if task is not None:
                    task.cancel()

    async def _replan(self) -> None:
        """Re-plan the workflows that lost capacity; what changed reaches the agents' routing
        state at once (the placements were sent to the nodes when they were committed)."""
        try:
            if await self.workflows.replan_pending():
                self.publisher.publish(self.workflows.routing_table(), self._agent_keys(), time.monotonic())
        except Exception:  # noqa: BLE001 - the next tick re-plans anyway
            log.exception("re-plan failed")

    async def _autoscale(self, now: float) -> None:
        """One autoscaling pass; what it changed reaches the agents' routing state at once (its
        placements were sent to the nodes when they were committed)."""
        try:
            if await self.workflows.autoscale(now):
                self.publisher.publish(self.workflows.routing_table(), self._agent_keys(), time.monotonic())
        except Exception:  # noqa: BLE001 - the next pass runs anyway
            log.exception("autoscaling pass failed")

    async def _flush_loop(self) -> None:
        period = min(2.0, self.settings.heartbeat_interval)
        while True:
            await asyncio.sleep(period)
            try:
                rows = self.registry.flush_rows()
                if rows:      # the batch write runs in a thread of its own: the event loop keeps serving
                    await self._flush_io.run(self.store.touch_nodes, rows)
            except Exception:  # noqa: BLE001
                log.exception("flush failed")

    async def stop(self, grace: float = 2.0) -> None:
        if getattr(self, "openai", None) is not None:
            await self.openai.stop()
        if self.health is not None:
            await set_serving(self.health, SERVICE_NAMES, False)
        for t in self._tasks:
            t.cancel()
        if self.server is not None:
            await self.server.stop(grace)
        if getattr(self, "workers", None) is not None:
            await self.workers.close()
            await self.forwarder.close()
        if getattr(self, "planner", None) is not None:
            self.planner.close()
        if self.registry is not None and self._apis:
            self.registry.flush()
        if self.leadership is not None:
            await self.leadership.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.store is not None:
            self.store.close()
        self._stopped.set()

    async def run_until_signal(self) -> int:
        await self.start()
        stop = self._stop_requested
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("coordinator shutting down")
        await self.stop()
        return self.exit_code
