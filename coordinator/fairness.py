"""Who plans next: a queue per caller (a tenant, or the coordinator itself), served round-robin.

The planning workers (:mod:`atoll.coordinator.planning`) are few and a plan can hold one for up
to its time budget. Served first come, first served, one tenant's burst of large dry runs would
keep every worker busy and every other tenant waiting behind it. :class:`FairQueue` decides
instead, and decides only (no asyncio, no processes; the caller hands out the workers):

- each caller has its own FIFO queue; the next call to run comes from the caller after the one
  served last (round-robin over the callers that have something waiting);
- a caller may hold at most ``max_running_each`` workers at once (the pool's size less one, so
  with two workers one tenant never holds both and another tenant's small submit starts at once);
- a caller may have at most ``max_waiting_each`` calls waiting; one more is refused with
  RESOURCE_EXHAUSTED, unless the caller is one of ``unbounded`` (the coordinator's own re-plans,
  which it serialises itself).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Collection, Generic, TypeVar

from atoll.core.errors import ResourceExhausted

T = TypeVar("T")

SYSTEM = "(coordinator)"      # not a valid tenant name: re-plans and other calls of the coordinator's own


class FairQueue(Generic[T]):
    def __init__(self, max_running_each: int, max_waiting_each: int, unbounded: Collection[str] = (SYSTEM,)):
        if max_running_each < 1 or max_waiting_each < 0:
            raise ValueError("max_running_each must be >= 1 and max_waiting_each >= 0")
        self.max_running_each, self.max_waiting_each = max_running_each, max_waiting_each
        self.unbounded = frozenset(unbounded)
        self._waiting: OrderedDict[str, deque[T]] = OrderedDict()    # in round-robin order
        self._running: dict[str, int] = {}

    def add(self, who: str, item: T) -> None:
        """Queue ``item`` for ``who``; ResourceExhausted when ``who`` already has its share waiting."""
        q = self._waiting.get(who)
        if q is not None and len(q) >= self.max_waiting_each and who not in self.unbounded:
            raise ResourceExhausted(
                f"tenant {who!r} already has {len(q)} planning calls waiting (at most {self.max_waiting_each})",
                hint="wait for your earlier submits and dry runs to finish, then retry")
        if q is None:
            q = self._waiting[who] = deque()
        q.append(item)

    def remove(self, who: str, item: T) -> bool:
        """Take a waiting ``item`` back (its caller went away); False if it is not waiting."""
        q = self._waiting.get(who)
        if q is None or item not in q:
            return False
        q.remove(item)
        if not q:
            del self._waiting[who]
        return True

    def next(self) -> tuple[str, T] | None:
        """The next call to run, counted as running for its caller until :meth:`done`; None when
        nothing waits or every caller with something waiting holds its share of workers."""
        for who, q in self._waiting.items():
            if self._running.get(who, 0) < self.max_running_each:
                item = q.popleft()
                if q:
                    self._waiting.move_to_end(who)
                else:
                    del self._waiting[who]
                self._running[who] = self._running.get(who, 0) + 1
                return who, item
        return None

    def done(self, who: str) -> None:
        """A call of ``who`` that :meth:`next` handed out has finished."""
        left = self._running.get(who, 0) - 1
        if left > 0:
            self._running[who] = left
        else:
            self._running.pop(who, None)

    def waiting(self, who: str) -> int:
        return len(self._waiting.get(who, ()))

    def running(self, who: str) -> int:
        return self._running.get(who, 0)
