"""A request entering a workflow, by whichever door: gRPC ``Invoke`` or the OpenAI-compatible
HTTP door. :func:`entering` is the one path both take, so both count alike for the autoscaler
and both wake a workflow scaled to zero:

1. the workflow must exist for the caller (NOT_FOUND before anything is counted);
2. the request is counted as started (``WorkflowManager.request_started``: the autoscaler's
   arrivals and in-flight count), and as finished when the caller's block ends, however it ends;
3. a workflow at zero (IDLE, or deploying after a wake) is woken and the request waits for a
   ready replica until its deadline, instead of failing with "not ready".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

from atoll.core.errors import AtollError, DeadlineExceeded
from atoll.specs.routing import Route

WAKE_POLL_S = 0.1


async def route_waking(wm, name: str, deadline: float) -> Route:
    """The workflow's route; a workflow scaled to zero is woken and this waits for a replica."""
    rec = wm.get(name)
    if rec.state != "IDLE" and not (rec.state == "DEPLOYING" and rec.deployment.autoscale is not None):
        return wm.route(name)
    wm.wake(name)
    while True:
        try:
            return wm.route(name)
        except AtollError as exc:
            if wm.get(name).state == "FAILED":
                raise
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"workflow {name} was scaled to zero and no replica was ready "
                                       f"before the deadline ({exc.message})") from None
        await asyncio.sleep(WAKE_POLL_S)


@contextlib.asynccontextmanager
async def entering(wm, name: str, deadline: float,
                   tokens: dict[str, int] | None = None) -> AsyncIterator[Route]:
    """``async with entering(wm, name, deadline, tokens) as route:`` run the request on ``route``;
    it is counted from here until the block ends. ``tokens``: a dict the caller fills with the
    tokens each task generated once the request succeeded (the autoscaler's work per request)."""
    wm.get(name)
    wm.request_started(name)
    try:
        yield await route_waking(wm, name, deadline)
    finally:
        wm.request_finished(name, tokens or None)
