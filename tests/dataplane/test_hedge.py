"""Hedged last-stage calls (agent/dataplane/hedge.py): a call with no first token after a while
goes to an idle replica too; the first to answer serves, the other is cancelled and closed."""

from __future__ import annotations

import asyncio
import time

import pytest

from atoll.agent.dataplane import hedge
from atoll.agent.dataplane.chain import DataPlane, NodeSelf, Request
from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.table import CompiledRoute
from atoll.agent.dataplane.trace import start_span
from atoll.wire.worker import Delta

from .helpers import endpoint, route


class Call:
    """A stream that waits ``wait`` s before its first delta (or fails), and notes being closed."""

    def __init__(self, name: str, wait: float, fail: bool = False, log: list | None = None):
        self.name, self.wait, self.fail = name, wait, fail
        self.log = log if log is not None else []

    async def stream(self):
        try:
            await asyncio.sleep(self.wait)
            if self.fail:
                raise RuntimeError(f"{self.name} failed")
            yield Delta(self.name, 1, 1, False)
            yield Delta("!", 1, 2, True)
        finally:
            self.log.append(f"{self.name} closed")


async def _read(first, stream) -> str:
    return "".join([d.text async for d in hedge.stream_from(first, stream)])


def run_race(primary: Call, after: float, offers: list):
    """race() with ``offers``: what successive hedge() calls return (Call or None)."""
    asked = []

    def second():
        asked.append(time.monotonic())
        nxt = offers.pop(0) if offers else None
        return None if nxt is None else (nxt.name, nxt.stream())

    async def go():
        won, first, stream = await hedge.race(primary.stream(), after, second)
        return won, await _read(first, stream)
    return asyncio.run(go()), asked


def test_a_prompt_first_token_is_never_hedged():
    (won, text), asked = run_race(Call("a", 0.0), 0.2, [Call("b", 0.0)])
    assert (won, text, asked) == (None, "a!", [])


def test_a_queued_call_is_hedged_and_the_first_answer_wins_the_other_closed():
    log = []
    (won, text), asked = run_race(Call("a", 5.0, log=log), 0.05, [Call("b", 0.0, log=log)])
    assert (won, text) == ("b", "b!") and len(asked) == 1
    assert "a closed" in log            # the queued call was cancelled, not left waiting


def test_with_no_idle_replica_it_asks_again_every_interval():
    log = []
    t0 = time.monotonic()
    (won, text), asked = run_race(Call("a", 5.0, log=log), 0.05, [None, None, Call("c", 0.0, log=log)])
    assert (won, text) == ("c", "c!") and len(asked) == 3
    assert asked[2] - t0 >= 0.14        # the third offer came after three intervals


def test_one_failed_call_leaves_the_other_and_two_raise_the_first_ones_error():
    (won, text), _ = run_race(Call("a", 0.2, fail=True), 0.05, [Call("b", 0.4)])
    assert (won, text) == ("b", "b!")
    (won, text), _ = run_race(Call("a", 0.4), 0.05, [Call("b", 0.1, fail=True)])
    assert (won, text) == (None, "a!")
    with pytest.raises(RuntimeError, match="a failed"):
        run_race(Call("a", 0.2, fail=True), 0.05, [Call("b", 0.1, fail=True)])


def test_a_caller_that_gives_up_leaves_neither_call_running():
    log = []

    async def go():
        a, b = Call("a", 5.0, log=log), Call("b", 5.0, log=log)
        task = asyncio.ensure_future(hedge.race(a.stream(), 0.02, lambda: ("b", b.stream())))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    assert sorted(log) == ["a closed", "b closed"]


def test_hedge_timing_follows_a_low_quantile_and_the_budget_bounds_the_share():
    times = hedge.FirstDeltaTimes()
    assert times.after("s") == hedge.HEDGE_DEFAULT_S
    for t in [0.1] * 12 + [3.0] * 12:          # half the calls queued for seconds: the bar stays low
        times.add("s", t)
    assert times.after("s") == pytest.approx(0.4)
    for _ in range(40):
        times.add("fast", 0.01)
    assert times.after("fast") == hedge.HEDGE_MIN_S
    b = hedge.Budget()
    assert sum(b.spend() for _ in range(50)) == 10      # a burst of ten
    for _ in range(55):
        b.earn()
    assert sum(b.spend() for _ in range(50)) == 5       # then one per ten calls
    for _ in range(200):
        b.earn()
    assert b.tokens == 10                               # up to the cap


def test_the_data_plane_sends_a_queued_last_stage_to_an_idle_replica(monkeypatch):
    """Replica a (the pick) has queued the call; b is idle. The answer comes from b, the stage's
    record names b, a's call is cancelled, the hedge is counted, and nothing stays in flight."""
    monkeypatch.setattr(hedge, "HEDGE_DEFAULT_S", 0.05)
    log = []

    class Workers:
        async def generate(self, address, prompt, on_load=None, **kw):
            name = address.split(":")[0]
            async for d in Call(name, 5.0 if name == "a" else 0.01, log=log).stream():
                yield d

        async def close(self):
            pass

    metrics = DataPlaneMetrics()
    plane = DataPlane(lambda: NodeSelf("entry-node", "entry", "eu", "datacenter"), None, Workers(), metrics)
    cr = CompiledRoute(route(endpoints=(endpoint("a"), endpoint("b"))))     # no generator: the first pick is a
    req = Request("wf", "hi", time.monotonic() + 10, start_span((), "test"))
    out = asyncio.run(plane.run(cr, 0, req, {}, "eu/edge", None))
    assert out.output == "b!" and out.stages[0].node_name == "node-b"
    assert "a closed" in log
    sample = metrics.registry.get_sample_value
    assert sample("atoll_stage_hedges_total", {"workflow": "wf", "task": "gen", "outcome": "sent"}) == 1
    assert sample("atoll_stage_hedges_total", {"workflow": "wf", "task": "gen", "outcome": "won"}) == 1
    assert plane.in_flight.replicas == {}
    # the input went to both replicas (region eu), and both sends are counted
    assert sample("atoll_bytes_sent_total", {"workflow": "wf", "from_region": "eu", "to_region": "eu"}) == 2 * len("hi")
    # a busy second replica (by its report) is not hedged to: the call waits for a
    plane2 = DataPlane(lambda: NodeSelf("entry-node", "entry", "eu", "datacenter"), None, Workers(), DataPlaneMetrics())
    plane2.in_flight.report("b", 6)

    async def short():
        req = Request("wf", "hi", time.monotonic() + 10, start_span((), "test"))
        return await asyncio.wait_for(plane2.run(CompiledRoute(route(endpoints=(endpoint("a"), endpoint("b")))), 0,
                                                 req, {}, "eu/edge", None), 0.3)
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(short())


def _plane_with_queued_a(log: list) -> DataPlane:
    class Workers:
        async def generate(self, address, prompt, on_load=None, on_waiting=None, **kw):
            name = address.split(":")[0]
            async for d in Call(name, 5.0 if name == "a" else 0.01, log=log).stream():
                yield d

        async def close(self):
            pass
    plane = DataPlane(lambda: NodeSelf("entry-node", "entry", "eu", "datacenter"), None, Workers(), DataPlaneMetrics())
    plane.in_flight.clock = lambda: 0.0        # b's reports stand for the whole test
    return plane


def _run_within(plane: DataPlane, seconds: float):
    async def go():
        req = Request("wf", "hi", time.monotonic() + 10, start_span((), "test"))
        return await asyncio.wait_for(plane.run(CompiledRoute(route(endpoints=(endpoint("a"), endpoint("b")))), 0,
                                                req, {}, "eu/edge", None), seconds)
    return asyncio.run(go())


def test_a_hedge_goes_to_a_busy_replica_whose_batch_has_room(monkeypatch):
    """b serves six requests but reported none waiting for a first token: room in its batch, so
    the call queued on a goes there too. With one waiting at b, or with this agent's hedges
    already at the bound on b, it does not. (The reports' clock stands still: no report lapses.)"""
    monkeypatch.setattr(hedge, "HEDGE_DEFAULT_S", 0.05)
    log: list = []
    plane = _plane_with_queued_a(log)
    plane.in_flight.report("b", 6)
    plane.in_flight.report_waiting("b", 0)
    out = _run_within(plane, 3.0)
    assert out.output == "b!" and out.stages[0].node_name == "node-b" and "a closed" in log
    assert plane.hedged == {} and plane.in_flight.replicas == {}

    queued = _plane_with_queued_a([])
    queued.in_flight.report("b", 6)
    queued.in_flight.report_waiting("b", 1)
    with pytest.raises(asyncio.TimeoutError):
        _run_within(queued, 0.3)

    full = _plane_with_queued_a([])
    full.in_flight.report("b", 6)
    full.in_flight.report_waiting("b", 0)
    full.hedged["b"] = hedge.HEDGES_PER_REPLICA
    with pytest.raises(asyncio.TimeoutError):
        _run_within(full, 0.3)


def test_a_waiting_report_stands_only_as_long_as_a_load_report():
    from atoll.agent.dataplane import table
    from atoll.agent.dataplane.table import InFlight

    now = [0.0]
    f = InFlight(clock=lambda: now[0])
    assert f.waiting("b") is None
    f.report_waiting("b", 0)
    assert f.waiting("b") == 0
    now[0] = table.REPORT_TTL_S + 0.01
    assert f.waiting("b") is None
