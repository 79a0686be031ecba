"""The agent router's choice of a replica inside a location: the plan's weights, unless the replica
proposed is backlogged with this agent's calls (agent/dataplane/table.py: CompiledRoute.pick with
InFlight; the rule is atoll.specs.routing.backlogged)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from atoll.agent.dataplane.chain import DataPlane, NodeSelf, Request
from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.table import CompiledRoute, Exclusions, InFlight
from atoll.agent.dataplane.trace import start_span
from atoll.wire.worker import Delta

from .helpers import endpoint, route


def compiled(weights: dict[str, float]) -> tuple[CompiledRoute, dict]:
    eps = {rid: endpoint(rid, weight=w) for rid, w in weights.items()}
    return CompiledRoute(route(endpoints=tuple(eps.values()))), eps


def picks(cr: CompiledRoute, n: int, in_flight: InFlight | None, hold: bool = False) -> list[str]:
    """``n`` picks; with ``hold`` each pick's call stays in flight (as concurrent requests do)."""
    out, cs = [], cr.stages[0]
    for _ in range(n):
        ep = cr.pick(cs, "eu/edge", set(), Exclusions(), in_flight)
        if hold:
            in_flight.add(ep)
        out.append(ep.replica_id)
    return out


def holding(eps: dict, counts: dict[str, int]) -> InFlight:
    f = InFlight()
    for rid, k in counts.items():
        for _ in range(k):
            f.add(eps[rid])
    return f


def test_without_backlog_the_picks_are_the_weights_own():
    weights = {"a": 6.0, "b": 3.0, "c": 1.0}
    cr, eps = compiled(weights)
    n = len(cr.stages[0].replicas_in["eu/datacenter"].seq)                 # one whole cycle
    plain = picks(compiled(weights)[0], n, None)
    shares = Counter(plain)
    assert {k: round(v / n, 2) for k, v in shares.items()} == {"a": 0.6, "b": 0.3, "c": 0.1}
    assert picks(cr, n, InFlight()) == plain                               # nothing in flight
    assert picks(compiled(weights)[0], n, holding(eps, {"a": 6, "b": 3, "c": 1})) == plain   # in proportion
    # busier than its share but under twice it plus the slack: the plan's picks still hold
    assert picks(compiled(weights)[0], n, holding(eps, {"a": 12, "b": 1, "c": 1})) == plain  # 13 <= 2 x 9 + 4


def test_a_backlogged_replica_is_passed_over_for_the_least_loaded():
    cr, eps = compiled({"survivor": 6.0, "new-1": 6.0, "new-2": 6.0})
    f = holding(eps, {"survivor": 30, "new-1": 2})                         # the survivor holds the storm's queue
    got = picks(cr, 8, f, hold=True)                                      # > 2 x its share + 4 throughout
    assert "survivor" not in got and Counter(got) == {"new-2": 5, "new-1": 3}    # they even out
    assert f.replicas == {"survivor": 30, "new-1": 5, "new-2": 5} and f.locations == {"eu/datacenter": 40}
    got = picks(cr, 12, f, hold=True)                                     # once the others hold their part
    assert "survivor" in got
    # one call more than the least loaded replica would hold after this one is not a backlog
    weights = {"survivor": 6.0, "new-1": 6.0, "new-2": 6.0}
    plain = picks(compiled(weights)[0], 30, None)
    assert picks(compiled(weights)[0], 30, holding(eps, {"survivor": 1})) == plain
    assert Counter(plain) == {"survivor": 10, "new-1": 10, "new-2": 10}


def test_calls_in_flight_are_counted_per_replica_and_released():
    seen = []

    class Workers:
        async def generate(self, address, prompt, **kw):
            seen.append((dict(plane.in_flight.replicas), dict(plane.in_flight.locations)))
            yield Delta("ok", 1, 1, True)

        async def close(self):
            pass

    plane = DataPlane(lambda: NodeSelf("entry-node", "entry", "eu", "datacenter"), None, Workers(),
                      DataPlaneMetrics())
    cr = CompiledRoute(route(endpoints=(endpoint("a"),)))
    req = Request("wf", "hi", time.monotonic() + 5, start_span((), "test"))
    out = asyncio.run(plane.run(cr, 0, req, {}, "eu/edge", None))
    assert out.output == "ok" and seen == [({"a": 1}, {"eu/datacenter": 1})]
    assert plane.in_flight.replicas == {} and plane.in_flight.locations == {}


def _plane_with_local(local_load: list[int], remote_load: int | None):
    """A data plane on node-a (which holds replica a) beside replica b on another host, in one
    location with equal weights; the local engine's load and b's reported load are the test's."""
    calls = Counter()

    class Local:
        @property
        def in_flight(self):
            return local_load[0]

        async def generate(self, prompt, **kw):
            calls["a"] += 1
            yield Delta("local", 1, 1, True)

    class Workers:
        async def generate(self, address, prompt, on_load=None, **kw):
            calls[address.split(":")[0]] += 1
            yield Delta("remote", 1, 1, True)
            if on_load is not None and remote_load is not None:
                on_load(remote_load)

        async def close(self):
            pass

    plane = DataPlane(lambda: NodeSelf("node-a", "node-a", "eu", "datacenter"), Local(), Workers(),
                      DataPlaneMetrics())
    cr = CompiledRoute(route(endpoints=(endpoint("a"), endpoint("b"))))

    def run(n: int) -> Counter:
        calls.clear()
        for _ in range(n):
            asyncio.run(plane.run(cr, 0, Request("wf", "hi", time.monotonic() + 5, start_span((), "t")), {},
                                  "eu/edge", None))
        return Counter(calls)
    return plane, run


def test_the_replica_on_the_entry_host_serves_while_it_is_not_the_busier_one():
    # idle here: every request stays on this host, although the plan's weights split them 1:1
    plane, run = _plane_with_local([0], remote_load=0)
    assert run(40) == {"a": 40}
    # busy here (a queue of 10), b reported idle: the plan's picks go to b, the rest stay here
    local = [10]
    plane, run = _plane_with_local(local, remote_load=0)
    got = run(40)
    assert got == {"a": 20, "b": 20}, got                   # the plan's own 1:1 split
    # b reports a queue as long as this host's: this host keeps them (within the slack)
    plane, run = _plane_with_local(local, remote_load=9)
    run(2)                                                  # b's report arrives with its first answer
    assert run(40) == {"a": 40}
    # a report goes stale: the entry counts only its own calls to b again
    plane.in_flight.reported = {rid: (n, t - 60) for rid, (n, t) in plane.in_flight.reported.items()}
    assert run(10)["b"] > 0


def test_an_excluded_replica_here_is_not_preferred():
    plane, run = _plane_with_local([0], remote_load=0)
    plane.excluded.add("a")
    assert run(10) == {"b": 10}


def test_a_worker_reports_its_load_when_a_stream_ends():
    from atoll.wire.worker import LOAD_KEY, WAITING_KEY, load_of, waiting_of

    assert load_of(((LOAD_KEY, "7"), ("x", "y"))) == 7
    assert load_of((("x", "y"),)) is None and load_of(None) is None
    assert load_of(((LOAD_KEY, "-1"),)) is None and load_of(((LOAD_KEY, "9" * 12),)) is None
    assert waiting_of(((LOAD_KEY, "7"), (WAITING_KEY, "2"))) == 2 and waiting_of(((LOAD_KEY, "7"),)) is None
    assert waiting_of(((WAITING_KEY, "x"),)) is None


def test_a_worker_server_says_its_load_in_the_streams_trailer():
    """The agent's Worker service (SwitchingWorker) over real gRPC on loopback, called by the
    WorkerClient every data plane uses: ``on_load`` hears the requests still in flight there, and
    ``on_waiting`` how many of them have had no first answer yet."""
    import grpc

    from atoll.agent.serving import SwitchingWorker
    from atoll.proto.v1 import worker_pb2
    from atoll.wire.worker import WorkerClient

    release = asyncio.Event()

    class Service:                                  # a loaded engine's servicer, answering one message
        model_names = ("m",)

        async def Generate(self, request, context):
            if request.adapter == "slow":
                await release.wait()
            yield worker_pb2.GenerateResponse(text="x", finished=True, completion_tokens=1)

    async def go() -> list[int]:
        worker = SwitchingWorker()
        worker.current = Service()
        server = grpc.aio.server()
        worker.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client, heard = WorkerClient(), []
        try:
            async def one(adapter: str) -> None:
                async for _ in client.generate(f"127.0.0.1:{port}", "hi", adapter=adapter, max_tokens=1,
                                               temperature=0.0, timeout=10, on_load=heard.append,
                                               on_waiting=waited.append):
                    pass
            await one("")                                       # alone: none left in flight
            slow = [asyncio.ensure_future(one("slow")) for _ in range(3)]
            while worker.in_flight < 3:
                await asyncio.sleep(0.01)
            await one("")                                       # three still held there
            release.set()
            await asyncio.gather(*slow)
        finally:
            await client.close()
            await server.stop(None)
        return heard

    waited: list[int] = []
    heard = asyncio.run(go())
    assert heard[:2] == [0, 3] and sorted(heard[2:]) == [0, 1, 2]
    # the three slow ones wait for their first answer until released; then none is left waiting
    # for longer than the other two take to send theirs
    assert waited[:2] == [0, 3] and len(waited) == 5 and all(w <= 2 for w in waited[2:])


def test_reports_of_replicas_long_gone_are_dropped():
    from atoll.agent.dataplane import table

    now = [0.0]
    f = InFlight(clock=lambda: now[0])
    for i in range(table.REPORTS_KEPT):
        f.report(f"old-{i}", 3)
    now[0] = table.REPORT_TTL_S + 1
    assert f.load("old-0") == 0                      # stale: only this agent's own calls count
    f.report("new", 5)
    assert f.reported == {"new": (5, now[0])} and f.load("new") == 5
