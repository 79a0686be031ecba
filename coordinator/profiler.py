"""``atoll profile``: measure a variant's throughput on a live agent and record it.

Sends ``requests`` generate calls (``concurrency`` at a time) for the stage's prompt to one
ready replica of (task, variant) and records requests/s and tokens/s for that node's hardware
class. The planner then prefers the measured figure over the declared one for that workflow
(``atoll.coordinator.placement.with_measured``). Calls go through the coordinator's
:class:`~atoll.wire.worker.WorkerClient` (over mutual TLS when agents use it).
"""

from __future__ import annotations

import asyncio
import time

from atoll.coordinator.fleet import hardware_class
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from atoll.core.pools import Held
from atoll.wire.worker import WorkerClient

TIMEOUT_S = 120
# A profile runs on the coordinator's event loop, which serves every RPC and heartbeat: at most
# one per tenant and MAX_RUNNING in all at once (RESOURCE_EXHAUSTED past either), each with at
# most ``concurrency`` calls in flight (workers that take the next request, never a task per
# request). Before, 32 profiles of 10,000 requests from one user key made 320,000 tasks, held
# the coordinator's other calls for 30 s and took it from 101 to 765 MiB.
MAX_RUNNING = 2
_running = Held()                    # tenant -> profiles under way


async def profile_variant(wm, workers: WorkerClient, workflow: str, task: str, variant: str, node: str,
                          requests: int, concurrency: int, tenant: str = "") -> dict:
    if not (1 <= requests <= 10_000) or not (1 <= concurrency <= 256):
        raise InvalidArgument("requests must be 1..10000 and concurrency 1..256")
    if _running.of(tenant):
        raise ResourceExhausted(f"tenant {tenant or '(none)'!r} already has a profile under way",
                                hint="profile one variant at a time")
    if _running.total() >= MAX_RUNNING:
        raise ResourceExhausted(f"{MAX_RUNNING} profiles are under way", hint="retry when one has finished")
    with _running.holding(tenant):
        return await _profile(wm, workers, workflow, task, variant, node, requests, concurrency)


async def _profile(wm, workers: WorkerClient, workflow: str, task: str, variant: str, node: str,
                   requests: int, concurrency: int) -> dict:
    rec = wm.get(workflow)
    spec = wm.spec(workflow)
    stages = {s.task: s for s in wm.serving(workflow).stages}
    if task not in stages:
        raise NotFound(f"workflow {workflow!r} has no task {task!r}", hint="tasks: " + ", ".join(stages))
    views = [v for v in wm.replica_views(rec) if v["task"] == task and (not variant or v["variant"] == variant)]
    if node:
        views = [v for v in views if node in (v["node_name"], v["node_id"])]
    ready = [v for v in views if v["state"] == "ready" and v["node_state"] == "READY" and v["worker_address"]]
    if not ready:
        raise FailedPrecondition(f"no ready replica of {task}/{variant or '*'}" + (f" on {node}" if node else ""),
                                 hint="profile a variant the current plan runs (see `atoll status`)")
    target = ready[0]
    adapter = next(x.adapter for x in rec.assignments if x.replica_id == target["replica_id"])
    stage = stages[task]
    address = target["worker_address"]
    tokens = [0]
    numbers = iter(range(requests))

    async def one(i: int) -> None:
        prompt = stage.prompt.replace("{input}", f"profiling request {i}") if stage.prompt else f"profiling {i}"
        if stage.kind == "embedding":
            await workers.embed(address, prompt, adapter=adapter, timeout=TIMEOUT_S, node_id=target["node_id"])
            return
        async for d in workers.generate(address, prompt, adapter=adapter, max_tokens=stage.max_tokens,
                                        temperature=stage.temperature, timeout=TIMEOUT_S,
                                        node_id=target["node_id"]):
            if d.finished:
                tokens[0] += d.prompt_tokens + d.completion_tokens

    async def worker() -> None:
        for i in numbers:                 # shared: each request is taken by one worker
            await one(i)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    elapsed = time.monotonic() - t0
    nrec = wm.registry.nodes[target["node_id"]]
    hw = hardware_class(nrec)
    rps, tps = requests / elapsed, tokens[0] / elapsed
    wm.store.put_profile(f"{workflow}/{task}/{target['variant']}", hw, rps, tps, "profiled")
    declared = 0.0
    for v in spec.resolved_variants(None)[task]:
        if v.name == target["variant"]:
            t = next(t for t in spec.tasks if t.name == task)
            declared = v.requests_per_second(hw, t.tokens_per_request) or 0.0
    return {"variant": f"{task}/{target['variant']}", "hardware": hw, "node_name": nrec.name,
            "requests_per_second": round(rps, 4), "tokens_per_second": round(tps, 2),
            "declared_rps": declared, "requests": requests}
