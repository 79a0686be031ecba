"""Planning off the event loop: placement runs in worker processes with a time and memory budget.

The planner (PuLP model building, HiGHS) holds the CPU for seconds on a large workflow; run on
the coordinator's event loop it would stall every RPC meanwhile. :class:`PlanWorkers` keeps a
few worker processes (a fresh interpreter each, started with ``python -c``, so they inherit
nothing of the coordinator's threads and never re-run its main module), each limited to ``memory_bytes`` of address space (``RLIMIT_AS``), and
sends each :func:`atoll.coordinator.placement.place` call to an idle one; the event loop only
waits on a pipe. Calls wait their turn fairly (:mod:`atoll.coordinator.fairness`): a queue per
tenant served round-robin, no tenant holding every worker, a bounded number waiting per tenant;
``run(..., on_behalf_of=tenant)`` says whose call it is, and calls that say nothing are the
coordinator's own (re-plans). A call that runs past ``time_budget`` seconds gets its process killed (and a
new one started) and fails with RESOURCE_EXHAUSTED, as does one that runs out of memory. The
planner's own errors (PlanInfeasible, SpecError) come back as the same typed errors.

``place`` is a pure function of picklable values (spec, serving view, fleet snapshot, previous
assignments), so running it in another process changes nothing but where the CPU time goes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pickle
import resource
import socket
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from atoll.coordinator.fairness import SYSTEM, FairQueue, Handout
from atoll.core.errors import AtollError, ResourceExhausted, Unavailable
from atoll.core.logs import kv
from atoll.core.pools import Pool

log = logging.getLogger("atoll.coordinator")

TIME_BUDGET_S = 120.0
STARTUP_S = 120.0            # a worker's imports, on a busy host
MEMORY_BYTES = 4 << 30
WORKERS = 2
WAITING_PER_TENANT = 8       # planning calls one tenant may have waiting; one more is RESOURCE_EXHAUSTED


def serve(fd: int, memory_bytes: int, preload: tuple[str, ...] = ()) -> None:
    """The worker process: import ``preload``, say it is ready, then run each (function, args,
    kwargs) it is sent over the socket ``fd``; answer with the result or the error (AtollErrors
    by class and fields, so they cross intact)."""
    conn = Connection(fd)
    for name in preload:
        importlib.import_module(name)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    conn.send(("ready",))
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, kwargs = pickle.loads(raw)
            conn.send(("ok", fn(*args, **kwargs)))
        except AtollError as exc:
            conn.send(("error", type(exc).__module__, type(exc).__qualname__, exc.args, dict(exc.__dict__)))
        except MemoryError:
            conn.send(("memory",))
        except Exception as exc:  # noqa: BLE001 - a planner bug: report it, keep the worker
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            conn.send(("bug", f"{type(exc).__name__}: {str(exc)[:300]}", f"{frame.filename}:{frame.lineno}"))


def _rebuild(module: str, qualname: str, args: tuple, fields: dict) -> AtollError:
    """The AtollError a worker raised, rebuilt without calling its __init__."""
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(fields)
    return exc


class _Worker:
    def __init__(self, memory_bytes: int, preload: tuple[str, ...], io: Pool):
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        # The worker imports what the coordinator imports: the same sys.path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             f"from atoll.coordinator.planning import serve; serve({fd}, {memory_bytes}, {tuple(preload)!r})"],
            pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.io = io

    async def wait_ready(self) -> None:
        """Its start-up (imports) is not part of any call's time budget."""
        if not self.ready:
            try:
                await asyncio.wait_for(self.io.run(self.conn.recv), STARTUP_S)
            except asyncio.TimeoutError:
                raise Unavailable(f"the planning worker did not start within {STARTUP_S:g} s",
                                  hint="retry; the coordinator's host may be overloaded") from None
            self.ready = True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.conn.close()


class PlanWorkers:
    """A few planning processes, started at the first call, shared fairly between tenants."""

    def __init__(self, workers: int = WORKERS, time_budget: float = TIME_BUDGET_S, memory_bytes: int = MEMORY_BYTES,
                 preload: tuple[str, ...] = (), waiting_per_tenant: int = WAITING_PER_TENANT):
        """``preload``: modules each worker imports before its first call (the planner's). A
        tenant holds at most ``workers - 1`` workers at once (1 with a single worker) and has at
        most ``waiting_per_tenant`` calls waiting."""
        self.time_budget, self.memory_bytes, self.preload = time_budget, memory_bytes, tuple(preload)
        self._size = workers
        self._started = False
        # a send and a receive per worker, and one for a replaced worker's start-up
        self._io = Pool("planning", 2 * max(1, workers) + 1)
        self._workers: Handout[_Worker] = Handout(FairQueue(max(1, workers - 1), waiting_per_tenant), [])

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._workers.free.extend(_Worker(self.memory_bytes, self.preload, self._io) for _ in range(self._size))

    async def run(self, fn: Callable, *args, on_behalf_of: str = SYSTEM, first: bool = False, **kwargs):
        """``fn(*args, **kwargs)`` in a worker process, when it is ``on_behalf_of``'s turn (a
        tenant; by default the coordinator itself; ``first``: ahead of that tenant's other calls,
        for a placement that holds the placement lock); its result or its error. A call that does
        not get its answer (out of time, the worker died, the caller went away) replaces its
        worker: a late answer must never reach the next call."""
        self._start()
        w = await self._workers.acquire(on_behalf_of, first)
        answered = False
        try:
            await w.wait_ready()
            t0 = time.monotonic()
            await self._io.run(w.conn.send, (fn, args, kwargs))
            reply = await asyncio.wait_for(self._io.run(w.conn.recv), self.time_budget)
            answered = True
        except asyncio.TimeoutError:
            log.warning("planning ran out of time; its worker was stopped", extra=kv(budget_s=self.time_budget))
            raise ResourceExhausted(f"planning took longer than {self.time_budget:g} s and was stopped",
                                    hint="plan fewer tasks or variants at once, or fewer node kinds") from None
        except (EOFError, OSError):
            raise Unavailable("the planning worker died; it was restarted", hint="retry") from None
        finally:
            if not answered:
                w.kill()
                w = _Worker(self.memory_bytes, self.preload, self._io)
            self._workers.release(on_behalf_of, w)
        if reply[0] == "ok":
            log.debug("planned in a worker", extra=kv(seconds=round(time.monotonic() - t0, 3)))
            return reply[1]
        if reply[0] == "error":
            raise _rebuild(*reply[1:])
        if reply[0] == "memory":
            raise ResourceExhausted(f"planning needed more than {self.memory_bytes >> 20} MiB and was stopped",
                                    hint="plan fewer tasks or variants at once, or fewer node kinds")
        log.error("the planner failed (a bug)", extra=kv(error=reply[1], where=reply[2]))
        raise AtollError(f"the planner failed: {reply[1]}")

    def close(self) -> None:
        while self._workers.free:
            self._workers.free.pop().kill()
