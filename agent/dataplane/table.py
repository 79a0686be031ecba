"""A route compiled for picking replicas in constant time, whatever the replica count.

For every stage the router first picks a location, by the plan's flow rates from the location
the stage's input comes from (the source's, or the previous stage's replica's), then a replica
inside that location, by its weight. Both choices follow a precomputed cycle
(:func:`cycle`): each item appears ``round(L * share)`` times in a cycle of length ``L``, spread
evenly (the i-th occurrence of an item sits at virtual time ``(i + 0.5) / count``), so over any
run of picks every share is within one cycle's rounding of its weight, and a pick is one index
step. The cycles are built when a routing state arrives, never per request. An agent starts
each new cycle at a random place (``CompiledRoute(route, rng)``, the data plane's generator):
every agent builds the same cycles from the same routing state, and cycles started at their head
would send every agent's first picks after each new routing state (a replica ready, a re-plan)
to the same replica, piling them onto it while the others idle. Without ``rng`` a cycle starts
at its head (deterministic, for tests).

Replicas that failed are excluded for a while (:class:`Exclusions`) and skipped; a location
whose replicas are all excluded or tried gives way to the others (by their weights); when none
is left, a replica excluded earlier is tried again rather than failing the request.

A replica this agent has backed up is passed over (the rule every router shares,
:func:`atoll.specs.routing.backlogged`): :class:`InFlight` counts this agent's calls in flight per
replica and per location, so the check costs two lookups; only a backlogged pick looks for the
least loaded replica of its location, and that search stops at the first usable replica holding
none of this agent's calls (:func:`_least_loaded`: bounded by the calls in flight, not by the
replica count).

Otherwise, when the pick's replica reported its load lately, a second replica of the same
location is drawn from its cycle (so by weight) and taken when the plan's pick is the busier of the two by more than LOAD_SLACK requests per unit
of weight (:func:`lighter`), by the loads the two reported with their last answers to this agent
(all callers' requests, fresh for REPORT_TTL_S) or else this agent's own calls: other entries'
queues show there, which the backlog rule cannot see.

A replica on this agent's own host, in the location picked, is taken instead of the plan's pick
while it is not the busier of the two (:func:`prefer_local`, called by the data plane, which
knows its host): its engine's requests in flight against what the picked replica reported with
its last answer to this agent (``InFlight.report``). The location, and so the plan's flows and
the bytes between regions, stay as the plan has them.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from atoll.specs.routing import Endpoint, Route, Stage, backlogged, least_loaded

CYCLE_MIN = 256          # picks per cycle at least (shares follow weights within 1/CYCLE_MIN)
EXCLUDE_S = 10.0         # how long a failed replica is skipped
REPORT_TTL_S = 0.5       # how long a replica's reported load stands (short: a replica not called since drains unseen)
REPORTS_KEPT = 1024      # reports kept before the stale ones are dropped
LOCAL_SLACK = 2          # calls a replica on the entry's own host may hold beyond the plan's pick
LOAD_SLACK = 2           # calls (per unit of weight) the plan's pick may hold beyond a second draw before it gives way


def prefer_local(picked: Endpoint, local: Endpoint | None, local_load: int, in_flight: "InFlight") -> Endpoint:
    """The replica to call for ``picked`` (the plan's pick): the replica on this host in the same
    location, ``local`` (holding ``local_load`` requests, all callers'), unless it is busier per
    unit of weight than ``picked`` by more than LOCAL_SLACK calls. A call to a replica on this
    host costs no network hop and no second server's work; two choices, one of them the plan's,
    keep the replicas' loads close where entries see uneven traffic (an idle or instant replica
    here takes everything, a queued one passes the surplus on), and the location, which the
    plan's flows fix, is the same."""
    if local is None or picked.replica_id == local.replica_id or picked.location != local.location:
        return picked
    ratio = max(local.weight, 1e-9) / max(picked.weight, 1e-9)
    return local if local_load <= ratio * in_flight.load(picked.replica_id) + LOCAL_SLACK else picked


def cycle(items: Sequence[tuple[object, float]], length: int) -> tuple:
    """A cycle of ``length`` picks in which each item's share follows its weight, evenly spread.
    Items with weight <= 0 get the smallest share (they stay reachable)."""
    weights = [max(w, 0.0) for _, w in items]
    total = sum(weights)
    if total <= 0:
        weights, total = [1.0] * len(items), float(len(items))
    exact = [w / total * length for w in weights]
    counts = [max(1, int(x)) for x in exact]
    rest = length - sum(counts)
    for i in sorted(range(len(items)), key=lambda i: exact[i] - int(exact[i]), reverse=True)[:max(rest, 0)]:
        counts[i] += 1
    slots = sorted(((j + 0.5) / c, i) for i, c in enumerate(counts) for j in range(c))
    return tuple(items[i][0] for _, i in slots)


class Picker:
    """A cycle and its position."""

    __slots__ = ("seq", "distinct", "_n")

    def __init__(self, items: Sequence[tuple[object, float]], rng: random.Random | None = None):
        self.seq = cycle(items, max(CYCLE_MIN, 4 * len(items))) if items else ()
        self.distinct = tuple(dict.fromkeys(self.seq))     # each item once, in order of first appearance
        self._n = itertools.count(rng.randrange(len(self.seq)) if rng is not None and self.seq else 0)

    def next(self, ok) -> object | None:
        """The next item of the cycle that ``ok(item)`` accepts (None when none does)."""
        n = len(self.seq)
        start = next(self._n)
        for k in range(n):
            item = self.seq[(start + k) % n]
            if ok(item):
                return item
            if k >= 2 * CYCLE_MIN and k >= 8:      # many refused in a row: decide from the distinct items
                distinct = [x for x in self.distinct if ok(x)]
                return distinct[start % len(distinct)] if distinct else None
        return None


@dataclass
class CompiledStage:
    stage: Stage
    index: int
    endpoints: tuple[Endpoint, ...]
    by_replica: Mapping[str, Endpoint]
    replicas_in: Mapping[str, Picker]                 # location -> replica picker
    locations: Mapping[str, Picker]                   # from location -> location picker (plan's flows)
    fallback: Picker                                  # location picker by summed replica weights
    loc_weight: Mapping[str, float]                   # location -> its replicas' summed weights
    parent: str                                       # the parent whose replica's location routes it
    edge_src: str                                     # the plan edge's source (parent task or a source)
    mine: tuple | None = None                         # (this node, {location: its replica there}), set on use


class CompiledRoute:
    """A :class:`~atoll.specs.routing.Route` with its pickers, and what each stage still needs."""

    def __init__(self, route: Route, rng: random.Random | None = None):
        """``rng``: where each cycle starts (module docstring); None: at its head, and the second
        draws of :meth:`pick` come from a generator seeded alike every time (deterministic)."""
        self.route = route
        self.rng = rng if rng is not None else random.Random(0)
        self.stages: list[CompiledStage] = []
        tasks = {s.task for s in route.stages}
        for i, st in enumerate(route.stages):
            eps = tuple(route.endpoints.get(st.task, ()))
            by_loc: dict[str, list[Endpoint]] = {}
            for e in eps:
                by_loc.setdefault(e.location, []).append(e)
            parent = next((p for p in st.parents if p in tasks), "")
            edge_src = parent or next(iter(st.parents), "")
            froms: dict[str, dict[str, float]] = {}
            for a, b, rate in route.flows.get((edge_src, st.task), ()):
                if b in by_loc and rate > 0:
                    froms.setdefault(a, {})
                    froms[a][b] = froms[a].get(b, 0.0) + rate
            self.stages.append(CompiledStage(
                st, i, eps, {e.replica_id: e for e in eps},
                {loc: Picker(sorted(((e, max(e.weight, 1e-9)) for e in es), key=lambda x: x[0].replica_id), rng)
                 for loc, es in by_loc.items()},
                {a: Picker(sorted(ws.items()), rng) for a, ws in froms.items()},
                Picker(sorted((loc, sum(max(e.weight, 1e-9) for e in es)) for loc, es in by_loc.items()), rng),
                {loc: sum(max(e.weight, 1e-9) for e in es) for loc, es in by_loc.items()},
                parent, edge_src))
        self.index = {c.stage.task: c.index for c in self.stages}
        # the outputs (and whether the request's text) stages from index k on still read
        self.needs: list[tuple[frozenset[str], bool]] = []
        for k in range(len(self.stages)):
            later = route.stages[k:]
            reads = frozenset(p for s in later for p in s.parents if p in tasks)
            text = any(not any(p in tasks for p in s.parents) for s in later)
            self.needs.append((reads, text))

    def pick(self, cs: CompiledStage, from_location: str, avoid: set[str], excluded: "Exclusions",
             in_flight: "InFlight | None" = None) -> Endpoint | None:
        """A replica of stage ``cs``: the plan's location from ``from_location``, then a replica by
        weight; skipping ``avoid`` (tried by this request) and, while others remain, excluded ones;
        a replica backlogged with this agent's calls (``in_flight``) gives way to the least loaded."""
        if not avoid and not excluded:       # nothing to skip: every location and replica is usable
            plan = cs.locations.get(from_location)
            loc = (plan if plan is not None else cs.fallback).next(_any)
            return None if loc is None else self._unless_loaded(cs, loc, cs.replicas_in[loc].next(_any), _any,
                                                                 in_flight)
        for strict in (True, False):
            def usable(e: Endpoint) -> bool:
                return e.replica_id not in avoid and not (strict and excluded.has(e.replica_id))

            def has_usable(loc: str) -> bool:
                return any(usable(e) for e in cs.replicas_in[loc].distinct)

            loc = None
            plan = cs.locations.get(from_location)
            if plan is not None:
                loc = plan.next(has_usable)
            if loc is None:
                loc = cs.fallback.next(has_usable)
            if loc is not None:
                return self._unless_loaded(cs, loc, cs.replicas_in[loc].next(usable), usable, in_flight)
        return None

    def _unless_loaded(self, cs: CompiledStage, loc: str, chosen: Endpoint | None, usable: Callable[[Endpoint], bool],
                       in_flight: "InFlight | None") -> Endpoint | None:
        """``chosen`` (of location ``loc``); or the least loaded usable replica there when this
        agent has backed ``chosen`` up; or a second draw from the location's cycle when
        ``chosen`` is the busier of the two by what they reported (:func:`lighter`)."""
        if chosen is None or in_flight is None:
            return chosen
        if backlogged(in_flight.replicas.get(chosen.replica_id, 0), chosen.weight,
                      in_flight.locations.get(loc, 0), cs.loc_weight[loc]):
            return _least_loaded(cs.replicas_in[loc].distinct, usable, in_flight.replicas, chosen)
        picker = cs.replicas_in[loc]
        if len(picker.distinct) < 2 or not in_flight.fresh(chosen.replica_id):
            return chosen       # no word from the pick's replica: this agent's own calls are the backlog rule's
        other = picker.seq[self.rng.randrange(len(picker.seq))]
        return lighter(chosen, other, in_flight) if usable(other) else chosen


def lighter(chosen: Endpoint, other: Endpoint, in_flight: "InFlight") -> Endpoint:
    """``other`` when ``chosen`` (the plan's pick) holds more than LOAD_SLACK requests per unit
    of weight beyond it, by the loads the replicas last reported to this agent (all callers'
    requests, :meth:`InFlight.load`; the caller draws ``other`` only while ``chosen``'s report is
    fresh); else ``chosen``. ``other`` is a second draw from the same weighted cycle, so the
    plan's shares hold while loads stay close, and a replica that other entries have queued up
    (after a storm took its peers, while new ones start) sheds its share to an idle one instead
    of growing its queue: the power of two choices, on every pick, for two lookups."""
    if other.replica_id == chosen.replica_id:
        return chosen
    ratio = max(chosen.weight, 1e-9) / max(other.weight, 1e-9)
    return other if in_flight.load(chosen.replica_id) > ratio * in_flight.load(other.replica_id) + LOAD_SLACK else chosen


def _any(item) -> bool:
    return True


def _least_loaded(order: Sequence[Endpoint], usable: Callable[[Endpoint], bool], held: Mapping[str, int],
                  chosen: Endpoint) -> Endpoint:
    """:func:`~atoll.specs.routing.least_loaded` of the usable replicas of ``order`` (the pool in
    its order), for a backlogged ``chosen``, without scanning the whole location: ``chosen`` holds
    at least BACKLOG_SLACK calls, so a usable replica holding none is the least loaded, and the
    first one in order wins the tie. Replicas passed on the way hold a call of this agent or are
    unusable, so the scan costs at most this agent's calls in flight plus the replicas it may not
    use, whatever the replica count; only when every usable replica holds calls is the minimum
    taken over all of them."""
    if not held.get(chosen.replica_id, 0):       # never so under the rule's slack; were it, it would win the tie
        return chosen
    pool = []
    for e in order:
        if usable(e):
            if not held.get(e.replica_id, 0):
                return e
            pool.append(e)
    return least_loaded(pool, held, chosen)


class InFlight:
    """This agent's calls in flight, per replica id and per location; and the load each replica
    reported with its last answer to this agent (its requests in flight, all callers', and how
    many of them had no first token yet)."""

    def __init__(self, clock=time.monotonic):
        self.replicas: dict[str, int] = {}
        self.locations: dict[str, int] = {}
        self.reported: dict[str, tuple[int, float]] = {}     # replica id -> (in flight, when)
        self.reported_waiting: dict[str, tuple[int, float]] = {}     # replica id -> (no first token yet, when)
        self.clock = clock

    def report(self, replica_id: str, n: int) -> None:
        self._keep(self.reported, replica_id, n)

    def report_waiting(self, replica_id: str, n: int) -> None:
        self._keep(self.reported_waiting, replica_id, n)

    def _keep(self, reports: dict[str, tuple[int, float]], replica_id: str, n: int) -> None:
        now = self.clock()
        reports[replica_id] = (n, now)
        if len(reports) > REPORTS_KEPT:          # replicas come and go: stale reports are dropped
            for r in [r for r, v in reports.items() if now - v[1] > REPORT_TTL_S]:
                del reports[r]

    def _current(self, reports: dict[str, tuple[int, float]], replica_id: str) -> int | None:
        """A report of the replica's, if made within REPORT_TTL_S."""
        got = reports.get(replica_id)
        return got[0] if got is not None and self.clock() - got[1] <= REPORT_TTL_S else None

    def waiting(self, replica_id: str) -> int | None:
        """How many of a replica's requests had no first token yet, as it last reported, if within
        REPORT_TTL_S; None when unknown."""
        return self._current(self.reported_waiting, replica_id)

    def fresh(self, replica_id: str) -> bool:
        """Whether the replica reported its load within REPORT_TTL_S."""
        return self._current(self.reported, replica_id) is not None

    def load(self, replica_id: str) -> int:
        """A replica's load as it last reported it, if within REPORT_TTL_S; else this agent's own
        calls to it (a lower bound)."""
        got = self._current(self.reported, replica_id)
        mine = self.replicas.get(replica_id, 0)
        return mine if got is None else max(got, mine)

    def add(self, ep: Endpoint) -> None:
        self.replicas[ep.replica_id] = self.replicas.get(ep.replica_id, 0) + 1
        self.locations[ep.location] = self.locations.get(ep.location, 0) + 1

    def done(self, ep: Endpoint) -> None:
        for d, key in ((self.replicas, ep.replica_id), (self.locations, ep.location)):
            if d.get(key, 0) > 1:
                d[key] -= 1
            else:
                d.pop(key, None)


class Exclusions:
    """Replicas that failed, skipped until a deadline (monotonic seconds)."""

    def __init__(self, seconds: float = EXCLUDE_S, clock=time.monotonic):
        self.seconds, self.clock = seconds, clock
        self._until: dict[str, float] = {}

    def add(self, replica_id: str) -> None:
        self._until[replica_id] = self.clock() + self.seconds

    def has(self, replica_id: str) -> bool:
        until = self._until.get(replica_id)
        if until is None:
            return False
        if self.clock() >= until:
            del self._until[replica_id]
            return False
        return True

    def __bool__(self) -> bool:
        """Whether any replica is (or was until lately) excluded; False: none to skip."""
        return bool(self._until)

    def clear(self, replica_id: str) -> None:
        self._until.pop(replica_id, None)

    def active(self) -> list[str]:
        now = self.clock()
        for rid in [r for r, t in self._until.items() if now >= t]:
            del self._until[rid]
        return sorted(self._until)
