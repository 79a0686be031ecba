"""The engine's intake: requests and cancellations handed from any thread to the step thread.

Any thread may :meth:`Inbox.put` a request or :meth:`Inbox.cancel` one; both only touch lists
under one condition variable. The step thread :meth:`Inbox.take`\\ s them at the start of each
step. The inbox also knows which request ids are live (queued or running, until the step
thread :meth:`Inbox.forget`\\ s them), whether the engine is refusing new work (shutting down)
or stopping, and wakes the step loop when work arrives.
"""

from __future__ import annotations

import threading
from typing import Callable

from atoll.core.errors import InvalidArgument, ResourceExhausted, Unavailable

from .request import Request


class Inbox:
    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._cv = threading.Condition()
        self._new: list[Request] = []
        self._cancels: set[str] = set()
        self._live: set[str] = set()
        self._refusing = False
        self._stopping = False

    # ---- any thread ------------------------------------------------------------------------
    def put(self, req: Request, waiting: int, on_reject: Callable[[], None]) -> None:
        """Queue ``req`` behind ``waiting`` requests the scheduler already holds. Raises
        Unavailable (shutting down), InvalidArgument (id in use) or ResourceExhausted (queue
        full, after calling ``on_reject``)."""
        with self._cv:
            if self._refusing:
                raise Unavailable("this engine is shutting down (its replica is being replaced or removed)",
                                  hint="retry on another replica")
            if req.request_id in self._live:
                raise InvalidArgument(f"request id {req.request_id!r} is already in use")
            if waiting + len(self._new) >= self.max_waiting:
                on_reject()
                raise ResourceExhausted(f"{self.max_waiting} requests already waiting", hint="retry later")
            self._live.add(req.request_id)
            self._new.append(req)
            self._cv.notify_all()

    def cancel(self, request_id: str) -> bool:
        with self._cv:
            if request_id not in self._live:
                return False
            self._cancels.add(request_id)
            self._cv.notify_all()
        return True

    def __contains__(self, request_id: str) -> bool:
        """Whether ``request_id`` is live: queued or running, not finished yet."""
        with self._cv:
            return request_id in self._live

    def queued(self) -> int:
        """Requests put but not yet taken by the step thread."""
        return len(self._new)

    def has_pending(self) -> bool:
        return bool(self._new or self._cancels)

    # ---- the step thread -------------------------------------------------------------------
    def take(self) -> tuple[list[Request], set[str]]:
        """New requests (in arrival order) and cancelled ids since the last take."""
        with self._cv:
            new, self._new = self._new, []
            cancels, self._cancels = self._cancels, set()
        return new, cancels

    def forget(self, request_id: str) -> None:
        """The request finished: its id may be used again and cancelling it does nothing."""
        with self._cv:
            self._live.discard(request_id)

    # ---- the loop's state ------------------------------------------------------------------
    def set_refusing(self, refusing: bool) -> None:
        with self._cv:
            self._refusing = refusing

    def set_stopping(self, stopping: bool) -> None:
        with self._cv:
            self._stopping = stopping
            self._cv.notify_all()

    def wait_for_work(self, has_work: Callable[[], bool], timeout: float = 0.5) -> bool:
        """Block until ``has_work()`` or a stop; returns False when the loop should stop."""
        with self._cv:
            while not self._stopping and not has_work():
                self._cv.wait(timeout)
            return not self._stopping
