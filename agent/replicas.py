"""Converge this host to its assignments: which base model to hold and which adapters.

The coordinator sends the full desired set (level-triggered); :class:`ReplicaManager` keeps the
latest one and a duty calls :meth:`ReplicaManager.converge` until what is loaded matches. One
base model per host (the planner places one base-model group per host); adapters of every
workflow sharing that base are loaded into the same engine. Loading runs in a worker thread so
heartbeats and serving continue meanwhile. Each replica reports pending | loading | ready |
failed (with the reason) in the heartbeat status.

An engine that is swapped out (another base model, or no replica left here) or closed is shut
down gracefully: it refuses new requests with UNAVAILABLE (the router retries them on another
replica), lets the ones in flight finish for up to ``DRAIN_SECONDS``, and fails what is left
with UNAVAILABLE instead of leaving a stream open until its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from atoll.core.logs import kv
from atoll.specs.assignment import ReplicaItem

log = logging.getLogger("atoll.agent")

DRAIN_SECONDS = 10.0      # how long a replaced engine may finish its requests in flight


@dataclass
class Loaded:
    base_source: str = ""
    engine: object | None = None
    adapters: dict[str, str] = field(default_factory=dict)   # name -> source


class ReplicaManager:
    """``engine_factory(model_dir) -> Engine``; ``resolve(source) -> Path`` (async)."""

    def __init__(self, engine_factory: Callable[[Path], object], resolve, on_change: Callable[[], None] | None = None):
        self.engine_factory = engine_factory
        self.resolve = resolve
        self.on_change = on_change or (lambda: None)
        self.desired: list[ReplicaItem] = []
        self.desired_generation = 0
        self.applied_generation = 0
        self.loaded = Loaded()
        self.states: dict[str, str] = {}
        self.messages: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self.load_seconds: dict[str, float] = {}      # "replica/fetch|load|warmup" -> seconds

    def set_desired(self, items: Sequence[ReplicaItem], generation: int) -> None:
        self.desired = list(items)
        self.desired_generation = generation
        for it in items:
            self.states.setdefault(it.replica_id, "pending")
        for rid in list(self.states):
            if rid not in {i.replica_id for i in items}:
                self.states.pop(rid, None)
                self.messages.pop(rid, None)
        self.on_change()

    @property
    def engine(self):
        return self.loaded.engine

    def _set(self, items, state: str, msg: str = "") -> None:
        for it in items:
            self.states[it.replica_id] = state
            if msg:
                self.messages[it.replica_id] = msg
            else:
                self.messages.pop(it.replica_id, None)
        self.on_change()

    async def converge(self) -> None:
        async with self._lock:
            items = list(self.desired)
            gen = self.desired_generation
            if gen == self.applied_generation:
                return
            bases = sorted({i.base_model for i in items})
            if len(bases) > 1:
                self._set(items, "failed", f"one base model per host; asked for {len(bases)}: {bases}"[:300])
                self.applied_generation = gen
                return
            want_base = bases[0] if bases else ""
            if want_base != self.loaded.base_source:
                await self._swap_base(want_base, items)
                if want_base and self.loaded.base_source != want_base:
                    self.applied_generation = gen        # failed; reported; retried on a new set
                    return
            if not want_base:
                self.applied_generation = gen
                return
            want = {i.adapter: i.adapter_source for i in items if i.adapter}
            eng = self.loaded.engine
            for name in [n for n in self.loaded.adapters if n not in want or self.loaded.adapters[n] != want[n]]:
                await asyncio.to_thread(eng.remove_adapter, name)
                self.loaded.adapters.pop(name, None)
            for it in items:
                if not it.adapter:
                    self._set([it], "ready")
                    continue
                if self.loaded.adapters.get(it.adapter) == it.adapter_source:
                    self._set([it], "ready")
                    continue
                self._set([it], "loading")
                t0 = time.monotonic()
                try:
                    path = await self.resolve(it.adapter_source)
                    t1 = time.monotonic()
                    await asyncio.to_thread(eng.add_adapter, it.adapter, str(path))
                    t2 = time.monotonic()
                    await asyncio.to_thread(self._warm, eng, it.adapter)
                    t3 = time.monotonic()
                    self.loaded.adapters[it.adapter] = it.adapter_source
                    for i in items:
                        if i.adapter == it.adapter:
                            self._phases(i.replica_id, t1 - t0, t2 - t1, t3 - t2)
                    self._set([i for i in items if i.adapter == it.adapter], "ready")
                except Exception as exc:  # noqa: BLE001 - reported as the replica's state
                    log.warning("adapter load failed", extra=kv(adapter=it.adapter, error=str(exc)[:300]))
                    self._set([i for i in items if i.adapter == it.adapter], "failed", str(exc)[:300])
            self.applied_generation = gen

    async def _swap_base(self, source: str, items: list[ReplicaItem]) -> None:
        old = self.loaded.engine
        self.loaded = Loaded()
        if old is not None:   # requests in flight finish (bounded); new ones get UNAVAILABLE and go elsewhere
            failed = await asyncio.to_thread(old.shutdown, DRAIN_SECONDS)
            if failed:
                log.warning("requests cut off by an engine swap", extra=kv(failed=failed))
        if not source:
            self.on_change()
            return
        self._set(items, "loading")
        t0 = time.monotonic()
        try:
            path = await self.resolve(source)
            t1 = time.monotonic()
            engine = await asyncio.to_thread(self.engine_factory, path)
            t2 = time.monotonic()
            await asyncio.to_thread(self._warm, engine, None)
            t3 = time.monotonic()
            self.loaded = Loaded(base_source=source, engine=engine)
            for it in items:
                if not it.adapter:
                    self._phases(it.replica_id, t1 - t0, t2 - t1, t3 - t2)
            self._base_phases = (t1 - t0, t2 - t1, t3 - t2)
            log.info("base model loaded", extra=kv(source=source[:80], fetch_s=round(t1 - t0, 3),
                                                    load_s=round(t2 - t1, 3), warmup_s=round(t3 - t2, 3)))
        except Exception as exc:  # noqa: BLE001
            log.warning("base model load failed", extra=kv(source=source[:80], error=str(exc)[:300]))
            self._set(items, "failed", str(exc)[:300])

    def _phases(self, rid: str, fetch: float, load: float, warmup: float) -> None:
        self.load_seconds[f"{rid}/fetch"] = fetch
        self.load_seconds[f"{rid}/load"] = load
        self.load_seconds[f"{rid}/warmup"] = warmup

    @staticmethod
    def _warm(engine, adapter) -> None:
        """One tiny generation, so the first real request does not pay for lazy set-up."""
        try:
            # The runtime (torch, seconds to import) loads with the first model, so an agent joins
            # the fleet without waiting for it.
            from atoll.agent.runtime import SamplingParams

            engine.generate([[1, 2, 3]], adapters=[adapter], sampling=SamplingParams(max_tokens=1))
        except Exception as exc:  # noqa: BLE001 - a failed warm-up is not a failed load
            log.debug("warm-up skipped", extra=kv(error=str(exc)[:200]))

    async def close(self) -> None:
        if self.loaded.engine is not None:
            await asyncio.to_thread(self.loaded.engine.shutdown, DRAIN_SECONDS)
            self.loaded = Loaded()
