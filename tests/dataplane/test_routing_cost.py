"""The agent router's per-request work does not grow with the replica count
(agent/dataplane/table.py): a backlogged pick finds the least loaded replica of its location
without scanning the location, and picks the same replica the plain rule
(atoll.specs.routing.least_loaded over every usable replica of the location) picks."""

from __future__ import annotations

import random

from atoll.agent.dataplane.table import CompiledRoute, Exclusions, InFlight, _least_loaded
from atoll.specs.routing import backlogged, least_loaded

from .helpers import endpoint, route


def reference_pick(cr: CompiledRoute, avoid: set[str], excluded: Exclusions, in_flight: InFlight, probe: CompiledRoute):
    """The pick as the rule states it: ``probe`` (a twin of ``cr`` at the same cycle position)
    proposes a replica by weight; when it is backlogged, the least loaded usable replica of the
    location, scanning all of them."""
    cs = probe.stages[0]
    chosen = probe.pick(cs, "eu/edge", avoid, excluded, None)
    loc = chosen.location
    if not backlogged(in_flight.replicas.get(chosen.replica_id, 0), chosen.weight, in_flight.locations.get(loc, 0),
                      cs.loc_weight[loc]):
        return chosen
    usable = [e for e in dict.fromkeys(cs.replicas_in[loc].seq)
              if e.replica_id not in avoid and not excluded.has(e.replica_id)]
    return least_loaded(usable, in_flight.replicas, chosen)


def test_backlogged_picks_match_the_rule_scanning_every_replica():
    rng = random.Random(7)
    for trial in range(60):
        n = rng.choice([2, 3, 5, 17, 64])
        eps = [endpoint(f"r{i}", weight=rng.choice([0.0, 0.5, 1.0, 2.0, 3.0])) for i in range(n)]
        cr, probe = CompiledRoute(route(endpoints=eps)), CompiledRoute(route(endpoints=eps))
        f = InFlight()
        for e in eps:                                   # some replicas hold many calls, most a few or none
            for _ in range(rng.choice([0, 0, 0, 1, 2, 9, 30])):
                f.add(e)
        avoid = {e.replica_id for e in eps if rng.random() < 0.15}
        excluded = Exclusions(clock=lambda: 0.0)
        for e in eps:
            if rng.random() < 0.1:
                excluded.add(e.replica_id)
        if len(avoid | set(excluded.active())) >= n:
            continue
        for _ in range(40):
            want = reference_pick(cr, avoid, excluded, f, probe)
            got = cr.pick(cr.stages[0], "eu/edge", avoid, excluded, f)
            assert got == want, (trial, got.replica_id, want.replica_id)
            f.add(got)                                  # the call stays in flight, as concurrent requests do


def test_the_least_loaded_search_stops_at_the_first_idle_replica():
    eps = [endpoint(f"r{i}") for i in range(10_000)]
    held = {"r0": 30, "r1": 2, "r3": 5}                 # this agent's calls in flight
    looked = []

    def usable(e):
        looked.append(e.replica_id)
        return e.replica_id != "r2"                     # tried already by this request

    assert _least_loaded(eps, usable, held, eps[0]).replica_id == "r4"
    assert looked == ["r0", "r1", "r2", "r3", "r4"]     # not 10,000
    # every usable replica busy: the fewest calls per unit of weight, as the rule says
    small = eps[:4]
    assert _least_loaded(small, usable, {"r0": 30, "r1": 2, "r2": 1, "r3": 5}, small[0]).replica_id == "r1"
    # a proposed replica holding nothing wins the tie with other idle ones
    assert _least_loaded(small, usable, {"r0": 3}, small[3]).replica_id == "r3"
