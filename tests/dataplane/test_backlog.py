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
