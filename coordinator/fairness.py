"""Who goes next: a queue per caller (a tenant, or the coordinator itself), served in turns.

Two things are scarce on the coordinator and can be held for a long time by one call: the
planning workers (:mod:`atoll.coordinator.planning`; a plan may hold one for up to its time
budget) and the placement lock (:class:`FairLock`; placements that commit go one at a time, so
each plans on a fleet no other is about to change). Served first come, first served, one
tenant's burst would keep every other tenant waiting behind all of it. :class:`FairQueue`
decides instead, and decides only (no asyncio; the caller hands out what is scarce):

- each caller has its own FIFO queue; the next call to run comes from the caller that was
  served longest ago, a caller not served yet first (in the order they arrived): round-robin
  over the callers with something waiting, where a newcomer waits for no caller that has
  already had a turn. So while tenant A has many calls queued, tenant B's one call runs as soon
  as what A holds now is released, before any more of A's;
- a caller may hold at most ``max_running_each`` at once (for the planning workers the pool's
  size less one, so with two workers one tenant never holds both and another tenant's small
  submit starts at once; for the lock, one);
- a caller may have at most ``max_waiting_each`` calls waiting; one more is refused with
  RESOURCE_EXHAUSTED, unless the caller is one of ``unbounded`` (the coordinator's own calls,
  which it serialises itself);
- an ``urgent`` caller (:data:`REPLAN`: the coordinator's re-plans of workflows that lost a node)
  goes before every other caller with something waiting, so a re-plan waits only for what is
  under way, never for the turns of the tenants queued before it.

:class:`Handout` is the thin asyncio part that hands out what is scarce in those turns: the
planning workers, and the one key of :class:`FairLock`, the placement lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import AsyncIterator, Collection, Generic, TypeVar

from atoll.core.errors import ResourceExhausted

T = TypeVar("T")
R = TypeVar("R")

SYSTEM = "(coordinator)"      # not a valid tenant name: the coordinator's own calls (its autoscaling pass)
REPLAN = "(re-plan)"          # not a valid tenant name: re-plans of workflows that lost capacity (urgent)


class FairQueue(Generic[T]):
    def __init__(self, max_running_each: int, max_waiting_each: int, unbounded: Collection[str] = (SYSTEM, REPLAN),
                 what: str = "planning calls", urgent: Collection[str] = (REPLAN,)):
        """``what``: what the calls are, in the refusal ("tenant 'a' already has 8 <what> waiting");
        ``urgent``: callers served before any other (in turns among themselves)."""
        if max_running_each < 1 or max_waiting_each < 0:
            raise ValueError("max_running_each must be >= 1 and max_waiting_each >= 0")
        self.max_running_each, self.max_waiting_each = max_running_each, max_waiting_each
        self.unbounded = frozenset(unbounded)
        self.urgent = frozenset(urgent)
        self.what = what
        self._waiting: dict[str, deque[T]] = {}       # in the order the callers arrived
        self._running: dict[str, int] = {}
        self._served: dict[str, int] = {}             # caller -> its last turn (while it waits or runs)
        self._turn = 0

    def add(self, who: str, item: T, first: bool = False) -> None:
        """Queue ``item`` for ``who`` (``first``: ahead of ``who``'s other calls); ResourceExhausted
        when ``who`` already has its share waiting."""
        q = self._waiting.get(who)
        if q is not None and len(q) >= self.max_waiting_each and who not in self.unbounded:
            raise ResourceExhausted(
                f"tenant {who!r} already has {len(q)} {self.what} waiting (at most {self.max_waiting_each})",
                hint="wait for your earlier submits and dry runs to finish, then retry")
        if q is None:
            q = self._waiting[who] = deque()
        if first:
            q.appendleft(item)
        else:
            q.append(item)

    def remove(self, who: str, item: T) -> bool:
        """Take a waiting ``item`` back (its caller went away); False if it is not waiting."""
        q = self._waiting.get(who)
        if q is None or item not in q:
            return False
        q.remove(item)
        if not q:
            del self._waiting[who]
        self._forget(who)
        return True

    def next(self) -> tuple[str, T] | None:
        """The next call to run, counted as running for its caller until :meth:`done`; None when
        nothing waits or every caller with something waiting holds its share. Urgent callers
        first; then the caller served longest ago."""
        best = None
        for who in self._waiting:
            if self._running.get(who, 0) < self.max_running_each and (
                    best is None or self._rank(who) < self._rank(best)):
                best = who
        if best is None:
            return None
        q = self._waiting[best]
        item = q.popleft()
        if not q:
            del self._waiting[best]
        self._turn += 1
        self._served[best] = self._turn
        self._running[best] = self._running.get(best, 0) + 1
        return best, item

    def _rank(self, who: str) -> tuple[bool, int]:
        return who not in self.urgent, self._served.get(who, 0)

    def done(self, who: str) -> None:
        """A call of ``who`` that :meth:`next` handed out has finished."""
        left = self._running.get(who, 0) - 1
        if left > 0:
            self._running[who] = left
        else:
            self._running.pop(who, None)
        self._forget(who)

    def _forget(self, who: str) -> None:
        """A caller with nothing waiting or running starts afresh next time (an idle tenant is no
        one's debtor)."""
        if who not in self._waiting and who not in self._running:
            self._served.pop(who, None)

    def waiting(self, who: str) -> int:
        return len(self._waiting.get(who, ()))

    def running(self, who: str) -> int:
        return self._running.get(who, 0)


class Handout(Generic[R]):
    """The thin asyncio part: hands the ``free`` resources (a list this object owns from now on)
    to waiting callers, in the turns a :class:`FairQueue` decides. A waiter that goes away gives
    its turn back (or the resource, when it was handed over as it left)."""

    def __init__(self, turns: FairQueue[asyncio.Future], free: list[R]):
        self.turns, self.free = turns, free

    def _dispatch(self) -> None:
        while self.free:
            turn = self.turns.next()
            if turn is None:
                return
            who, fut = turn
            if fut.done():                  # its caller went away just now
                self.turns.done(who)
                continue
            fut.set_result(self.free.pop())

    def release(self, who: str, resource: R) -> None:
        self.turns.done(who)
        self.free.append(resource)
        self._dispatch()

    async def acquire(self, who: str, first: bool = False) -> R:
        """A resource, in ``who``'s turn (``first``: ahead of ``who``'s other waiters);
        ResourceExhausted past ``who``'s waiting share."""
        fut = asyncio.get_running_loop().create_future()
        self.turns.add(who, fut, first)
        self._dispatch()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():     # handed over as the caller left
                self.release(who, fut.result())
            else:
                self.turns.remove(who, fut)
            raise


class FairLock:
    """An asyncio lock whose waiters take turns by caller: ``async with lock.hold(tenant): ...``.
    At most ``max_waiting_each`` waiters per tenant (one more: RESOURCE_EXHAUSTED); the
    coordinator's own (:data:`SYSTEM`, :data:`REPLAN`) are not counted, and its re-plans
    (:data:`REPLAN`) go before every tenant's waiters."""

    def __init__(self, max_waiting_each: int, what: str = "placements"):
        self._handout: Handout[bool] = Handout(FairQueue(1, max_waiting_each, what=what), [True])

    def locked(self) -> bool:
        return not self._handout.free

    @contextlib.asynccontextmanager
    async def hold(self, who: str = SYSTEM) -> AsyncIterator[None]:
        key = await self._handout.acquire(who)
        try:
            yield
        finally:
            self._handout.release(who, key)
