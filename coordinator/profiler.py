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
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound
from atoll.wire.worker import WorkerClient

TIMEOUT_S = 120


async def profile_variant(wm, workers: WorkerClient, workflow: str, task: str, variant: str, node: str,
                          requests: int, concurrency: int) -> dict:
    if not (1 <= requests <= 10_000) or not (1 <= concurrency <= 256):
        raise InvalidArgument("requests must be 1..10000 and concurrency 1..256")
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
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            prompt = stage.prompt.replace("{input}", f"profiling request {i}") if stage.prompt else f"profiling {i}"
            if stage.kind == "embedding":
                await workers.embed(address, prompt, adapter=adapter, timeout=TIMEOUT_S, node_id=target["node_id"])
                return
            async for d in workers.generate(address, prompt, adapter=adapter, max_tokens=stage.max_tokens,
                                            temperature=stage.temperature, timeout=TIMEOUT_S,
                                            node_id=target["node_id"]):
                if d.finished:
                    tokens[0] += d.prompt_tokens + d.completion_tokens

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(requests)))
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
