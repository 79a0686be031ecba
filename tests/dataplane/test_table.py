"""Picking replicas from a compiled route: the plan's location shares, then replica weights,
in constant time; failed replicas skipped for a while, and tried again when nothing else is left."""

from __future__ import annotations

import random
from collections import Counter

from atoll.agent.dataplane.table import CYCLE_MIN, REPORT_TTL_S, CompiledRoute, Exclusions, InFlight, cycle
from atoll.specs.routing import Stage

from .helpers import endpoint, route


def test_cycle_shares_follow_weights_and_spread_evenly():
    seq = cycle([("a", 3.0), ("b", 1.0), ("c", 0.5)], 450)
    n = Counter(seq)
    assert len(seq) == 450 and n["a"] == 300 and n["b"] == 100 and n["c"] == 50
    # spread: in every window of 9 picks, 'a' appears 5 to 7 times (never in long runs)
    for i in range(0, 450 - 9):
        assert 5 <= seq[i:i + 9].count("a") <= 7
    assert Counter(cycle([("x", 0.0), ("y", 0.0)], 10)) == {"x": 5, "y": 5}      # no weight: equal shares
    assert "z" in cycle([("y", 1000.0), ("z", 0.0)], CYCLE_MIN)                  # reachable even at weight 0


def test_pick_follows_the_plans_location_flows_then_replica_weights():
    eps = [endpoint("a1", region="eu", weight=2.0), endpoint("a2", region="eu", weight=1.0),
           endpoint("b1", region="us", weight=5.0)]
    flows = {("users", "gen"): [("eu/edge", "eu/datacenter", 3.0), ("eu/edge", "us/datacenter", 1.0)]}
    cr = CompiledRoute(route(endpoints=eps, flows=flows))
    ex = Exclusions()
    got = Counter(cr.pick(cr.stages[0], "eu/edge", set(), ex).replica_id for _ in range(1200))
    # 3:1 by location, then 2:1 inside eu (within the cycle's rounding: 1 pick in CYCLE_MIN)
    assert all(abs(got[k] - want) <= 1200 / CYCLE_MIN for k, want in {"a1": 600, "a2": 300, "b1": 300}.items()), got
    # from a location the plan has no flow for: by replica weights (eu 3, us 5)
    got = Counter(cr.pick(cr.stages[0], "ap/edge", set(), ex).region for _ in range(800))
    assert abs(got["eu"] - 300) <= 800 / CYCLE_MIN and abs(got["us"] - 500) <= 800 / CYCLE_MIN, got


def test_each_new_cycle_starts_at_its_own_place():
    # Every agent compiles the same routing state into the same cycle, again on every change (a
    # replica ready, a re-plan). Started at its head, each agent's first picks after a change would
    # all go to one replica; the elasticity bench's entries piled 40 requests onto one replica that
    # way while six others idled. The first picks of 400 fresh compilations spread over all four.
    eps = [endpoint(f"r{i}") for i in range(4)]
    rng = random.Random(5)
    firsts = Counter(_first_pick(CompiledRoute(route(endpoints=eps), rng)) for _ in range(400))
    assert set(firsts) == {"r0", "r1", "r2", "r3"} and min(firsts.values()) >= 50, firsts
    # without a generator (tests): at the cycle's head, every time
    assert {_first_pick(CompiledRoute(route(endpoints=eps))) for _ in range(20)} == {"r0"}


def _first_pick(cr: CompiledRoute) -> str:
    return cr.pick(cr.stages[0], "", set(), Exclusions()).replica_id


def test_a_replica_others_queued_up_sheds_its_share_while_its_report_is_fresh():
    # After a storm the surviving replica holds the queue every entry sent it, and new replicas
    # hold nothing. An entry with none of its own calls there sees that only in what the replicas
    # report: the queued one then gets a small share of the picks (a second draw from the same
    # weighted cycle replaces it unless that draw is busier), back to the plan's share once its
    # report is stale.
    now = [100.0]
    inf = InFlight(clock=lambda: now[0])
    cr = CompiledRoute(route(endpoints=[endpoint(f"r{i}") for i in range(4)]), random.Random(3))

    def shares(n=800):
        got = Counter(cr.pick(cr.stages[0], "", set(), Exclusions(), inf).replica_id for _ in range(n))
        return {r: got[r] / n for r in ("r0", "r1", "r2", "r3")}

    assert all(0.2 <= v <= 0.3 for v in shares().values())          # nothing reported: the plan's shares
    inf.report("r0", 40)
    inf.report("r1", 2)                                                # within LOAD_SLACK of idle ones
    got = shares()
    assert got["r0"] < 0.1, got                                        # 1/4 x 1/4 expected
    assert all(got[r] > 0.25 for r in ("r1", "r2", "r3")), got
    now[0] += REPORT_TTL_S + 0.01                                      # stale: the plan's shares again
    assert all(0.2 <= v <= 0.3 for v in shares().values())


def test_loads_within_the_slack_keep_the_plans_weighted_shares():
    # a replica with three times the weight carries three times the load without giving way
    now = [0.0]
    inf = InFlight(clock=lambda: now[0])
    cr = CompiledRoute(route(endpoints=[endpoint("big", weight=3.0), endpoint("small")]), random.Random(1))
    inf.report("big", 9)
    inf.report("small", 3)
    got = Counter(cr.pick(cr.stages[0], "", set(), Exclusions(), inf).replica_id for _ in range(400))
    assert 0.7 <= got["big"] / 400 <= 0.8, got
    inf.report("big", 16)                                              # beyond 3 x 3 + LOAD_SLACK
    got = Counter(cr.pick(cr.stages[0], "", set(), Exclusions(), inf).replica_id for _ in range(400))
    assert got["big"] / 400 < 0.65, got


def test_excluded_replicas_are_skipped_until_nothing_else_is_left():
    now = [0.0]
    ex = Exclusions(seconds=10, clock=lambda: now[0])
    cr = CompiledRoute(route(endpoints=[endpoint("a"), endpoint("b"), endpoint("c", region="us")]))
    ex.add("a")
    assert {cr.pick(cr.stages[0], "", set(), ex).replica_id for _ in range(50)} == {"b", "c"}
    # tried by this request, and the rest excluded: the excluded one is tried again, not failed
    assert cr.pick(cr.stages[0], "", {"b", "c"}, ex).replica_id == "a"
    assert cr.pick(cr.stages[0], "", {"a", "b", "c"}, ex) is None
    now[0] = 11.0
    assert not ex.has("a") and ex.active() == []


def test_what_later_stages_read_is_known_per_stage():
    stages = (Stage("a", "llm", "{input}", ("users",)), Stage("b", "llm", "{input}", ("a",)),
              Stage("c", "llm", "{input}", ("a", "b")))
    cr = CompiledRoute(route(stages=stages, endpoints=[endpoint("1", "a"), endpoint("2", "b"), endpoint("3", "c")]))
    assert cr.needs[0] == (frozenset({"a", "b"}), True)       # stage a reads the request's text
    assert cr.needs[1] == (frozenset({"a", "b"}), False)      # from b on: a's output (for c), no text
    assert cr.needs[2] == (frozenset({"a", "b"}), False)
