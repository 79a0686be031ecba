"""Simulated GPU hosts for the elasticity benchmark: many per process, one asyncio object each.

Each :class:`SimHost` is a real agent as far as the coordinator can tell:

- the agent's own :class:`atoll.agent.heartbeat.HeartbeatClient` (real Register and heartbeat
  stream) with a node spec (tier, region, price, preemptible, label ``hardware: <class>``);
- a real ``grpc.aio`` server on its own loopback port serving ``atoll.v1.Worker.Generate``
  (registered from the descriptor with :func:`atoll.core.rpc.add_service`), so the coordinator's
  data plane calls it exactly as it calls a real agent's;
- on an ``assignments`` instruction, each new replica turns ``loading`` and, after a simulated
  cold start, ``ready``; once every replica of the desired set is ready the host reports
  ``assignments_generation = generation`` (as ``agent/daemon.py`` does through ReplicaManager).

Service model (batch-aware, from the runtime's measured CPU profile, see :func:`service_time`):
at most ``concurrency`` requests are served at once (the rest wait in FIFO order, reported as
``queue_depth``); a request for ``n`` completion tokens (its ``max_tokens``) entering service
when ``k`` requests are in service takes ``service_time(k, n) / speed`` seconds, streamed as a
few text chunks.

Every host is also a data-plane node (``atoll.agent.dataplane``, the agent's own): an ``Entry``
server where clients invoke workflows, the ``DataPlane`` service beside its Worker, the routing
state and key set from its heartbeat stream, and stages whose replica it holds run in process
(the same service model). ``instant=True`` serves every request at once with one chunk (the
data-plane benchmark's near-instant Workers).

Killing a host (:meth:`SimHost.kill`) cancels its heartbeat task and stops its Worker server
without grace: in-flight calls fail, and the data plane retries them on another replica.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from atoll.agent.dataplane.chain import NodeSelf
from atoll.agent.dataplane.node import DataPlaneNode
from atoll.core.credentials import public_from_bytes
from atoll.agent.heartbeat import HeartbeatClient
from atoll.core.errors import Unavailable
from atoll.core.rpc import SERVER_OPTIONS, add_service
from atoll.proto.v1 import worker_pb2
from atoll.wire.worker import LOAD_KEY, WAITING_KEY, Delta

# ---------------------------------------------------------------------------------- the profile
# The shape of a replica's batch curve is the runtime's, as measured on the 2-core CPU
# (bench/results/runtime.json, docs/runtime.md "Synthetic model, 32 adapters": atoll, bare base
# model, the 56.4M-parameter Llama, 32 requests x 64 prompt + 64 new tokens):
#   - decode at batch 32: 528.9 tok/s for the whole batch (results.base.decode_tok_s) -> 60.5 ms per step;
#   - decode at batch 1: the byte bound, step_bytes 210.3 MB at the measured copy bandwidth of
#     24.6 GB/s (machine.copy_bandwidth_gb_s)                                       -> 8.6 ms per step;
#   - prefill: 0.978 s for 2,048 prompt tokens (results.base.prefill_s)            -> 30.6 ms for 64.
# Step time is interpolated linearly in the batch size between those two points. A simulated
# host runs this curve ``speed`` times faster (the benchmark sets each hardware class's speed
# from its assumed time for a lone 64-token answer, see :func:`speed_for`).
NEW_TOKENS = 64
STEP_B1 = 210_274_304 / 24.58e9
STEP_B32 = 32 / 528.9
PREFILL_S = 0.978 / 32


def service_time(k: int, new_tokens: int = NEW_TOKENS) -> float:
    """Seconds for one request of ``new_tokens`` completion tokens on the measured CPU when
    ``k`` requests share the batch."""
    k = max(1, k)
    step = STEP_B1 + (STEP_B32 - STEP_B1) * (k - 1) / 31
    return new_tokens * step + PREFILL_S


def speed_for(alone_s: float) -> float:
    """The speed-up over the measured profile at which a lone 64-token answer takes ``alone_s``."""
    return service_time(1) / alone_s


def declared_rps(speed: float, k: int) -> float:
    """Requests/s of one replica running ``k`` at a time (Little's law), for the planner's spec."""
    return k / (service_time(k) / speed)


WORKER = worker_pb2.DESCRIPTOR.services_by_name["Worker"]


class SimHost:
    def __init__(self, *, name: str, tier: str, region: str, price: float, preemptible: bool, hardware: str,
                 speed: float, gpu_mem_gb: int, channel, join_token: str, concurrency: int = 8,
                 cold_start: tuple[float, float] = (1.0, 2.5), seed: int = 0, provider: str = "",
                 instant: bool = False, registry=None):
        self.name, self.tier, self.hardware, self.speed = name, tier, hardware, speed
        self.region, self.instant = region, instant
        self.preemptible = preemptible
        self.price = price
        self.concurrency = concurrency
        self.cold_start = cold_start
        self.rng = random.Random(seed)
        self.spec = {"name": name, "tier": tier, "region": region, "zone": "", "price_per_hour": price,
                     "preemptible": preemptible, "labels": {"hardware": hardware, "provider": provider or name}}
        cap = {"gpus": [{"index": 0, "name": f"SIM {hardware}", "memory_total_bytes": gpu_mem_gb << 30,
                         "memory_free_bytes": gpu_mem_gb << 30, "compute_capability": "8.0"}],
               "cpu_cores": 8, "memory_bytes": 64 << 30, "disk_bytes": 1 << 40, "simulated": True,
               "agent_version": "elasticity-bench"}
        self.dataplane = DataPlaneNode(
            node=lambda: NodeSelf(self.hb.node_id, name, region, tier), local=_Local(self),
            local_address=lambda: self.address, connected=lambda: self.hb.connected.is_set(), registry=registry,
            wake=lambda: self.hb.poke(), peer_token=lambda: self.node_token)
        self.node_token = ""             # presented agent to agent, as a real agent does (not checked here)
        self.coordinator_key = None      # pinned at registration: the entry verifies caller tokens with it
        self.dataplane.keys.identity = lambda: (self.coordinator_key, self.hb.node_id)
        self.hb = HeartbeatClient(channel, join_token=join_token, spec=self.spec, capacity=cap,
                                  status_fn=self._status, on_instruction=self._on_instruction,
                                  generation_fn=lambda: self.applied_generation, max_backoff=2.0,
                                  rng=random.Random(seed + 1), dataplane_fn=self.dataplane.heartbeat_extras,
                                  on_session=self.dataplane.on_session,
                                  on_credential=lambda token, _exp: setattr(self, "node_token", token),
                                  on_coordinator_key=self._pin)
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.states: dict[str, str] = {}
        self.load_seconds: dict[str, float] = {}
        self.desired_generation = 0
        self.applied_generation = 0
        self.active = 0
        self.waiting = 0
        self.served = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._hb_task: asyncio.Task | None = None
        self._loads: dict[str, asyncio.Task] = {}
        self.alive = False

    # -------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        # the agent's own server options (agent/daemon.py): with gRPC's defaults the server
        # answers the clients' 10 s keepalive pings on idle connections with GOAWAY
        # "too_many_pings", and the next call waits for a new connection
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        add_service(self.server, self, WORKER)
        self.dataplane.add_to_worker_server(self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        await self.dataplane.start_entry("127.0.0.1:0")
        self.alive = True
        self._hb_task = asyncio.ensure_future(self.hb.run())

    async def kill(self) -> None:
        """As a preempted rental vanishes: no drain, heartbeats stop, in-flight calls fail."""
        self.alive = False
        if self._hb_task is not None:
            self._hb_task.cancel()
        for t in self._loads.values():
            t.cancel()
        if self.server is not None:
            await self.server.stop(None)
        if self.dataplane.server is not None:
            await self.dataplane.server.stop(None)

    async def stop(self) -> None:
        if not self.alive:
            return
        self.hb.stop()
        await self.kill()
        if self._hb_task is not None:
            await asyncio.gather(self._hb_task, return_exceptions=True)

    # -------------------------------------------------------------------------- agent side
    def _pin(self, raw: bytes) -> None:
        self.coordinator_key = public_from_bytes(raw, "the coordinator's public key") if raw else None

    def _status(self) -> dict:
        first = sorted(self.states)[:1]          # the one replica a simulated host serves
        return {"worker_address": self.address, "entry_address": self.dataplane.address,
                "replica_states": dict(self.states),
                "replica_load_seconds": dict(self.load_seconds), "running_requests": self.active,
                "queue_depth": self.waiting, "replica_queue_depth": {r: self.waiting for r in first}}

    async def _on_instruction(self, ins: dict) -> None:
        if self.dataplane.on_instruction(ins) or "assignments" not in ins:
            return
        desired = ins["assignments"]
        self.desired_generation = desired.generation
        want = {it.replica_id for it in desired.items}
        for rid in list(self.states):
            if rid not in want:
                self.states.pop(rid, None)
                t = self._loads.pop(rid, None)
                if t is not None:
                    t.cancel()
        for rid in want:
            if rid not in self.states:
                self.states[rid] = "loading"
                self._loads[rid] = asyncio.ensure_future(self._load(rid))
        self._maybe_applied()
        self.hb.poke()

    async def _load(self, rid: str) -> None:
        """Simulated cold start: fetch (30%) + load (60%) + warm-up (10%)."""
        total = self.rng.uniform(*self.cold_start)
        await asyncio.sleep(total)
        if rid in self.states:
            self.states[rid] = "ready"
            for ph, share in (("fetch", 0.3), ("load", 0.6), ("warmup", 0.1)):
                self.load_seconds[f"{rid}/{ph}"] = round(total * share, 4)
        self._loads.pop(rid, None)
        self._maybe_applied()
        self.hb.poke()

    def _maybe_applied(self) -> None:
        if all(s == "ready" for s in self.states.values()):
            self.applied_generation = self.desired_generation

    # -------------------------------------------------------------------------- Worker service
    async def Generate(self, request, context):
        if not any(s == "ready" for s in self.states.values()):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{self.name}: no ready replica")
        async for d in self.serve(request.sampling.max_tokens):
            yield worker_pb2.GenerateResponse(text=d.text, finished=d.finished,
                                              finish_reason="length" if d.finished else "",
                                              completion_tokens=d.completion_tokens)
        context.set_trailing_metadata(((LOAD_KEY, str(self.waiting + self.active)), (WAITING_KEY, str(self.waiting))))

    async def serve(self, max_tokens: int):
        """One request under the service model, as Delta values (Worker calls and in-process
        stages alike)."""
        tokens = max_tokens or NEW_TOKENS               # the request's completion budget
        if self.instant:
            self.served += 1
            yield Delta("done", 1, tokens, True)
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            self.active += 1
            k = self.active
            # batch-aware: time per request grows with the batch; +-10% jitter per request
            total = service_time(k, tokens) / self.speed * self.rng.uniform(0.9, 1.1)
            chunks = 4
            words = ["sim", "ulated", " tokens", " done"]
            for i in range(chunks):
                await asyncio.sleep(total / chunks)
                yield Delta(words[i], 1, tokens if i == chunks - 1 else 0, i == chunks - 1)
            self.served += 1
        finally:
            self.active -= 1
            self._slots.release()

    async def LoadAdapter(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "simulated host")

    async def UnloadAdapter(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "simulated host")

    async def ListAdapters(self, request, context):
        return worker_pb2.ListAdaptersResponse()

    async def Embed(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "simulated host")


class _Local:
    """The host's stages run in process by its data plane (the data plane's LocalWorker)."""

    def __init__(self, host: SimHost):
        self.host = host

    @property
    def in_flight(self) -> int:
        return self.host.waiting + self.host.active

    @property
    def waiting(self) -> int:
        return self.host.waiting

    async def generate(self, prompt, *, adapter, max_tokens, timeout, messages=None, **sampling):
        """The simulated service takes the token budget; the other settings change nothing here."""
        if not any(s == "ready" for s in self.host.states.values()):
            raise Unavailable(f"{self.host.name}: no ready replica")
        async for d in self.host.serve(max_tokens):
            yield d

    async def embed(self, text, *, adapter, timeout):
        raise Unavailable("simulated host: no embeddings")


def now() -> float:
    return time.monotonic()
