"""Work in flight, bounded: thread pools of their own (:class:`Pool`) and counts of what each
caller holds (:class:`Held`).

Pools keep blocking duties apart from asyncio's default executor.

The default executor has ``min(32, cpus + 4)`` threads (6 on a 2-core host) and every
``asyncio.to_thread`` shares them. Work a caller can hold open (a push stream that stops sending
held one thread each) must not take the threads that planning, the leader's lock check, the
store's flush and blob fetches need: 8 stalled pushes from one user key stopped every tenant's
planning and every fetch. Each such duty runs in a :class:`Pool` sized for it (the coordinator's
pushes, planning I/O, leader lock checks and status flushes; an agent's prompt encoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator


class Pool:
    """``size`` threads named ``atoll-<name>``, started as needed; :meth:`run` is
    ``asyncio.to_thread`` on them (the function sees the caller's context variables)."""

    def __init__(self, name: str, size: int):
        self.size = size
        self._ex = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"atoll-{name}")

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._ex, functools.partial(ctx.run, fn, *args))

    def close(self) -> None:
        self._ex.shutdown(wait=False, cancel_futures=True)


class Held(dict):
    """key -> how many it holds now (a tenant's pushes or profiles, a workflow's waiting
    requests); a key holding none is not listed. Callers check their bounds against
    :meth:`of` and :meth:`total`, then hold one for as long as the work lasts."""

    def of(self, key: str) -> int:
        return self.get(key, 0)

    def total(self) -> int:
        return sum(self.values())

    @contextlib.contextmanager
    def holding(self, key: str) -> Iterator[None]:
        self[key] = self.of(key) + 1
        try:
            yield
        finally:
            self[key] -= 1
            if not self[key]:
                del self[key]
