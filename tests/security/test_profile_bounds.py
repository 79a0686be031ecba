"""``atoll profile`` runs on the coordinator's event loop: at most one per tenant and MAX_RUNNING
in all at once, each with at most ``concurrency`` calls in flight and never a task per request.
32 profiles of 10,000 requests from one user key made 320,000 tasks, held the coordinator's other
calls for 30 s and took it from 101 to 765 MiB."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import atoll.coordinator.profiler as profiler
from atoll.core.errors import ResourceExhausted
from atoll.wire.worker import Delta


class _Workers:
    def __init__(self):
        self.open = self.most = self.calls = 0

    async def generate(self, address, prompt, **kw):
        self.open += 1
        self.calls += 1
        self.most = max(self.most, self.open)
        await asyncio.sleep(0.001)
        self.open -= 1
        yield Delta("x", 3, 1, True)


def _fleet():
    rec = SimpleNamespace(assignments=(SimpleNamespace(replica_id="r1", adapter=""),))
    stage = SimpleNamespace(task="chat", kind="llm", prompt="{input}", max_tokens=2, temperature=0.0)
    variant = SimpleNamespace(name="v", requests_per_second=lambda hw, tokens: 1.0)
    spec = SimpleNamespace(resolved_variants=lambda _: {"chat": [variant]},
                           tasks=[SimpleNamespace(name="chat", tokens_per_request=4)])
    view = {"task": "chat", "variant": "v", "node_name": "n", "node_id": "id-n", "state": "ready",
            "node_state": "READY", "worker_address": "127.0.0.1:1", "replica_id": "r1"}
    saved = []
    wm = SimpleNamespace(get=lambda name: rec, spec=lambda name: spec,
                         serving=lambda name: SimpleNamespace(stages=[stage]), replica_views=lambda r: [view],
                         registry=SimpleNamespace(nodes={"id-n": SimpleNamespace(name="n", capacity={}, spec={},
                                                                                 labels={})}),
                         store=SimpleNamespace(put_profile=lambda *a: saved.append(a)))
    return wm, saved


def test_profiles_are_bounded_per_tenant_and_in_all(monkeypatch):
    release = asyncio.Event

    async def main():
        gate = release()

        async def held(*args):
            await gate.wait()
            return {"ok": True}

        monkeypatch.setattr(profiler, "_profile", held)
        args = (None, None, "wf", "chat", "v", "", 10, 2)
        first = asyncio.ensure_future(profiler.profile_variant(*args, tenant="b"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="'b' already has a profile under way"):
            await profiler.profile_variant(*args, tenant="b")
        second = asyncio.ensure_future(profiler.profile_variant(*args, tenant="c"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="2 profiles are under way"):
            await profiler.profile_variant(*args, tenant="d")
        gate.set()
        assert await first == await second == {"ok": True}
        assert profiler._running == {}
        assert await profiler.profile_variant(*args, tenant="d") == {"ok": True}

    asyncio.run(main())


def test_a_profile_runs_concurrency_workers_not_a_task_per_request(monkeypatch):
    monkeypatch.setattr(profiler, "hardware_class", lambda rec: "cpu")
    wm, saved = _fleet()
    workers = _Workers()
    tasks_seen = []

    async def main():
        run = asyncio.ensure_future(profiler.profile_variant(wm, workers, "wf", "chat", "v", "", 500, 7, tenant="b"))
        for _ in range(5):
            await asyncio.sleep(0.002)
            tasks_seen.append(len(asyncio.all_tasks()))
        return await run

    res = asyncio.run(main())
    assert workers.calls == 500 and workers.most == 7 and res["requests"] == 500
    assert max(tasks_seen) <= 7 + 3, tasks_seen           # the workers, the profile, main: not 500
    assert saved and saved[0][0] == "wf/chat/v"
