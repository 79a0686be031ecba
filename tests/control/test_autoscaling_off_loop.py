"""The autoscaler's re-plans run in the planning workers: while a large workflow is re-planned for
a new load, the coordinator's event loop keeps answering RPCs (here a gRPC health check served
on the same loop, called from another thread, as a client would). In process: a real store,
registry, workflow manager and planning worker; the health server stands in for the
coordinator's services, which share its loop."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time

import grpc
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from atoll.coordinator.join_tokens import hash_token
from atoll.coordinator.planning import PlanWorkers
from atoll.coordinator.records import WorkflowRecord
from atoll.coordinator.registry import Registry
from atoll.coordinator.store import SqliteStore
from atoll.coordinator.workflows import WorkflowManager
from atoll.core import credentials as cred

TOKEN = "join-token-offloop"


def big_spec(name: str, model: str, tasks: int, variants: int, seed: int = 3) -> str:
    """A chain of ``tasks`` tasks of ``variants`` variants each, with an autoscaling policy."""
    rng = random.Random(seed)

    def variant(j: int) -> dict:
        return {"name": f"v{j}", "model": model, "accuracy": round(rng.uniform(0.97, 0.999), 3),
                "memory_gb": round(rng.uniform(0.5, 4), 2),
                "throughput": {hw: round(rng.uniform(20, top), 2) for hw, top in (("a100", 200), ("h100", 300))}}

    chain = ["u"] + [f"t{i}" for i in range(tasks)]
    spec = {"name": name, "sources": [{"name": "u", "rate": 20, "region": "us-east", "tier": "datacenter"}],
            "tasks": [{"name": t, "variants": [variant(j) for j in range(variants)]} for t in chain[1:]],
            "edges": [{"from": a, "to": b, "size_kb": 4} for a, b in zip(chain, chain[1:])],
            "slo": {"min_accuracy": 0.01}, "autoscaling": {}}
    return yaml.safe_dump(spec, sort_keys=False)


def fleet(tmp_path, nodes: int = 12):
    store = SqliteStore(tmp_path / "s.db")
    reg = Registry(store, join_token_hash=hash_token(TOKEN), heartbeat_interval=1.0)
    for i in range(nodes):
        hw = "a100" if i % 2 else "h100"
        reg.register(TOKEN, "", {"name": f"gpu-{i}", "tier": "datacenter", "region": "us-east",
                                 "price_per_hour": 2.0 + 0.1 * i, "labels": {"hardware": hw}},
                     {"gpus": [{"name": hw, "memory_total_bytes": 80 << 30, "memory_free_bytes": 80 << 30}]},
                     {"worker_address": f"10.0.0.{i}:7000", "queue_depth": 0},
                     cred.make_proof(cred.new_private_key(), "", time.time()))
    return store, reg


def test_an_rpc_is_answered_promptly_while_the_autoscaler_replans_a_large_workflow(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    store, reg = fleet(tmp_path)
    store.put_workflow(WorkflowRecord(name="big", spec_yaml=big_spec("big", str(model), tasks=64, variants=12),
                                      state="READY", generation=1))

    async def main():
        planner = PlanWorkers(workers=1, preload=("atoll.coordinator.placement",))
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert await planner.run(abs, -1) == 1                  # the worker started (not timed)
            wm = WorkflowManager(store, reg, planner=planner)
            for _ in range(300):                                    # a burst: the pass scales up
                wm.request_started("big")
            stop = threading.Event()
            lat: list[float] = []

            def probe():
                with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                    stub = health_pb2_grpc.HealthStub(ch)
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)      # warm the channel
                    while not stop.is_set():
                        t0 = time.monotonic()
                        try:
                            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                            lat.append(time.monotonic() - t0)
                        except grpc.RpcError:                       # not answered in 10 s
                            lat.append(float("inf"))
                        time.sleep(0.02)

            th = threading.Thread(target=probe)
            th.start()
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            done = await wm.autoscale()
            seconds = time.monotonic() - t0
            stop.set()
            await asyncio.to_thread(th.join, 20)
            return wm, done, seconds, lat
        finally:
            await server.stop(0)
            planner.close()

    wm, done, seconds, lat = asyncio.run(main())
    d = wm.autoscaler.decisions_of("big")[-1]
    assert done == [("big", "scale")], (d.reason, d.outcome)
    assert d.action == "up" and d.outcome.startswith("planned"), d.outcome
    rec = wm.records["big"]
    assert rec.generation == 2 and len(rec.assignments) >= 64 and rec.deployment.autoscale.scale > 1.0
    assert seconds > 1.0, f"the re-plan took {seconds:.2f} s: too quick to show anything"
    lat.sort()
    p95 = lat[int(0.95 * (len(lat) - 1))]
    print(f"\nre-plan {seconds:.1f} s; {len(lat)} health checks meanwhile: median "
          f"{1000 * statistics.median(lat):.1f} ms, p95 {1000 * p95:.1f} ms, max {1000 * lat[-1]:.1f} ms")
    # On the loop, one call waits out the whole re-plan and few are answered meanwhile; off it,
    # calls are answered all along (at least 10 per second of re-planning; the probe asks about
    # 50 times a second) and none waits for a good part of the re-plan, even on a busy host.
    assert len(lat) >= 10 * seconds and p95 < 0.25 and lat[-1] < 0.5 * seconds, lat[-10:]
