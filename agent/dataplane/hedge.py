"""Hedged calls: a request stuck in a replica's queue is sent to a replica with room as well.

A replica that other entries have queued up (the survivors of a preemption storm, the replicas
serving when a spike arrives) holds its waiting requests until it reaches them, even after new
replicas come up idle beside it: picks send new requests elsewhere, but nothing moves the ones
already waiting. So an entry that has had no first token from the replica it called after
``after`` seconds (:meth:`FirstDeltaTimes.after`: four times the quarter-quantile of the stage's
recent times to a first token here, at least HEDGE_MIN_S) asks for a second replica, and keeps
asking every ``after`` until one has room; the first of the two calls to answer wins and the other
is cancelled (a request still queued there leaves the queue; one already running stops). Hedges
are a bounded share of the calls (:class:`Budget`), and go only where they start at once: to a
replica whose last report (``WAITING_KEY``, within the report's lifetime) had no request waiting
for a first token, i.e. room in its batch, however many it serves; where no such report is at
hand, to one that holds none of this agent's calls and reported at most one request. At most
``HEDGES_PER_REPLICA`` of an agent's hedges are on one replica at once, so a burst of them does not
fill a batch the report said had room. Room, not idleness, is what matters: replicas started for
a spike serve a few requests of their own within a second, and would otherwise take no more of
the backlog waiting on the replicas that were there before them
(``bench/autoscaler_replay.py --queues replica`` measures the difference).
Nothing reaches the caller before a call wins, so a streamed answer comes from one replica only.
"""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator, Callable, Hashable

from atoll.wire.worker import Delta

HEDGE_MIN_S = 0.25       # never hedge sooner than this
HEDGE_FACTOR = 4.0       # ... nor before this many times the stage's usual first-token time here
HEDGE_DEFAULT_S = 1.0    # until MIN_SAMPLES first-token times are known
SAMPLES = 64             # first-token times kept per stage
MIN_SAMPLES = 8
BUDGET_SHARE = 0.1       # hedges: at most one per ten calls ...
BUDGET_CAP = 10.0        # ... with bursts of up to ten
HEDGES_PER_REPLICA = 4   # an agent's hedges on one replica at once


class FirstDeltaTimes:
    """The recent times to a first token of calls that were not hedged, per stage."""

    def __init__(self):
        self._times: dict[Hashable, collections.deque] = {}

    def add(self, key: Hashable, seconds: float) -> None:
        q = self._times.get(key)
        if q is None:
            q = self._times[key] = collections.deque(maxlen=SAMPLES)
        q.append(seconds)

    def after(self, key: Hashable) -> float:
        """How long a call of stage ``key`` goes without a first token before it is hedged: a
        low quantile, so that queueing (what hedging is for) does not raise it."""
        q = self._times.get(key)
        if q is None or len(q) < MIN_SAMPLES:
            return HEDGE_DEFAULT_S
        return max(HEDGE_MIN_S, HEDGE_FACTOR * sorted(q)[len(q) // 4])


class Budget:
    """A token bucket: each call earns BUDGET_SHARE of a hedge, up to BUDGET_CAP."""

    def __init__(self, share: float = BUDGET_SHARE, cap: float = BUDGET_CAP):
        self.share, self.cap = share, cap
        self.tokens = cap

    def earn(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.share)

    def spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


_END = object()


async def _next(stream: AsyncIterator[Delta]):
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END


async def close(stream: AsyncIterator[Delta], task: asyncio.Task | None = None) -> None:
    """Stop ``stream``: cancel the task waiting on its next delta, then close it (a Worker call
    is cancelled; an engine's request leaves its queue)."""
    if task is not None and not task.done():
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - the stream's end, whatever it was
            pass
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing a cancelled call may raise its cancellation
            pass


async def _prepend(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    yield first
    async for d in rest:
        yield d


def stream_from(first, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """The won stream again, its first delta (already read) included."""
    if first is _END:
        return _empty()
    return _prepend(first, rest)


async def _empty() -> AsyncIterator[Delta]:
    return
    yield  # noqa: unreachable - makes this an async generator


async def race(primary: AsyncIterator[Delta], after: float,
               hedge: Callable[[], tuple[object, AsyncIterator[Delta]] | None]) -> tuple[object | None, object, AsyncIterator[Delta]]:
    """Wait for ``primary``'s first delta. With none after ``after`` seconds, and again every
    ``after`` while it has none, ask ``hedge()`` for a second call (its key, its stream; None:
    not now); once there is one, the first of the two to yield a delta wins, and a call that
    fails leaves the other to go on. Returns (the hedge's key when it won, else None; the first
    delta, or the end marker when the stream ended without one; the winning stream, to read on
    from). The loser is cancelled and closed. When both fail, ``primary``'s error is raised."""
    t1 = asyncio.ensure_future(_next(primary))
    second: tuple[object, AsyncIterator[Delta], asyncio.Task] | None = None
    try:
        while second is None:
            done, _ = await asyncio.wait({t1}, timeout=after)
            if done:
                return None, t1.result(), primary
            alt = hedge()
            if alt is not None:
                second = (alt[0], alt[1], asyncio.ensure_future(_next(alt[1])))
        key, stream, t2 = second
        pending = {t1, t2}
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if t1 in done and t1.exception() is None:
                await close(stream, t2)
                second = None
                return None, t1.result(), primary
            if t2 in done and t2.exception() is None:
                await close(primary, t1)
                second = None
                return key, t2.result(), stream
            if not pending:                 # both failed
                return None, t1.result(), primary
    except BaseException:
        # the caller gave up (cancelled) or both failed: nothing of either call is left running
        await close(primary, t1)
        if second is not None:
            await close(second[1], second[2])
        raise
