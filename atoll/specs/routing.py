"""The routing table's values: what it takes to run a request through a deployed workflow.

A :class:`Route` names a workflow's stages in order (:class:`Stage`: prompt template and
sampling settings), the ready replicas of each stage (:class:`Endpoint`: Worker address,
location, routing weight, adapter), where requests enter, which stage answers, and the plan's
location-level flows per edge. A :class:`RoutingTable` holds the routes of every workflow.
They are immutable plain values: the coordinator builds them (``atoll.coordinator.routing``)
and whoever runs requests reads them, whichever side of the wire it is on.

A :class:`RoutingState` is what one agent holds: the routes of every workflow it may serve as an
entry or a hop, with a content digest (:func:`routing_state`), pushed level-triggered down the
heartbeat stream. :func:`may_carry` is the rule, applied by every agent before it accepts or
hands on a request, that keeps a ``trusted_only`` workflow's data off rented hosts; :func:`may_hold`
adds the operator's trust to it: the coordinator gives a node a route, and a node admits
another node's call for a route's data, only when it holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence



@dataclass(frozen=True)
class Stage:
    """One stage of a route: its prompt template and sampling settings, as the spec sets them (one
    request may lay its own over the last stage's: ``atoll.wire.dataplane.Sink``)."""

    task: str
    kind: str                      # llm | embedding
    prompt: str                    # template; "{input}" is replaced by the stage's input text
    parents: tuple[str, ...]       # tasks (or sources) feeding it
    max_tokens: int | None = 32    # None: up to a stop token or the context
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    chat: bool = False             # send the prompt as a user message, through the model's chat template


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One ready replica of a task: what it serves, where, and its share of the task's traffic."""

    replica_id: str
    task: str
    variant: str
    adapter: str
    base_model: str = ""
    weight: float                  # the plan's share of the task's traffic
    # where it runs
    node_id: str
    node_name: str
    address: str
    region: str
    tier: str = ""
    location: str = ""             # "region/tier", as the plan names locations


Flow = tuple[str, str, float]      # (from location, to location, rate)


@dataclass(frozen=True)
class Route:
    """What the data plane needs of one deployed workflow."""

    workflow: str
    stages: Sequence[Stage]        # topological order
    endpoints: Mapping[str, Sequence[Endpoint]]
    source_region: str
    sink: str
    source_location: str = ""
    # (from task or source, to task) -> [(from location, to location, rate)] from the plan
    flows: Mapping[tuple[str, str], Sequence[Flow]] = field(default_factory=dict)
    tenant: str = ""
    state: str = "READY"           # the workflow's state when the route was built
    trusted_only: bool = False     # its data never reaches a renter host
    wakeable: bool = False         # scaled to zero (or waking up): a request wakes it


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=dict)

    def get(self, workflow: str) -> Route | None:
        return self.routes.get(workflow)


# A replica is backlogged when, with the request being placed, it would hold more than
# BACKLOG_RATIO x its weight's share of the caller's calls in flight to its location plus
# BACKLOG_SLACK: replicas merely busier than their weight (a closed loop of clients, a replica a
# little slower than planned) keep the plan's shares; a backlogged one is passed over for the
# replica with the fewest calls per unit of weight (after a replica is lost, or while new ones
# start, the survivors' queues drain instead of growing).
BACKLOG_RATIO = 2.0
BACKLOG_SLACK = 4


def backlogged(held: int, weight: float, total_held: int, total_weight: float) -> bool:
    """Would a replica holding ``held`` of the caller's calls (weight ``weight``, of a location
    whose replicas hold ``total_held`` and weigh ``total_weight``) be backlogged with one more?"""
    share = max(weight, 1e-9) / max(total_weight, 1e-9)
    return held + 1 > BACKLOG_RATIO * share * (total_held + 1) + BACKLOG_SLACK


def least_loaded(pool: Sequence[Endpoint], in_flight: Mapping[str, int], chosen: Endpoint) -> Endpoint:
    """The replica of ``pool`` with the fewest of the caller's calls per unit of weight (``chosen``
    on a tie)."""
    return min(pool, key=lambda e: (in_flight.get(e.replica_id, 0) / max(e.weight, 1e-9), e is not chosen))


UNTRUSTED_TIERS = frozenset({"renter"})


def may_carry(route: Route, tier: str) -> bool:
    """May a host of ``tier`` see this workflow's requests (as an entry, a hop or a replica)?
    Not a renter when the workflow asks for trusted hosts only."""
    return not (route.trusted_only and tier in UNTRUSTED_TIERS)


def may_hold(route: Route, tier: str, trusted: bool) -> bool:
    """May a node of ``tier``, trusted by the operator or not, hold this route (be an entry or a
    hop for it, or call one of its replicas)? :func:`may_carry`'s rule, and for a ``trusted_only``
    workflow only a node the operator trusts, as placement decides
    (``atoll.planner.problem.PlanProblem.pool_allowed``)."""
    return may_carry(route, tier) and (trusted or not route.trusted_only)


@dataclass(frozen=True)
class RoutingState:
    """The routes one agent holds, and their digest (0: no state yet)."""

    digest: int = 0
    routes: Mapping[str, Route] = field(default_factory=dict)

    def get(self, workflow: str) -> Route | None:
        return self.routes.get(workflow)


def _route_row(r: Route) -> list:
    return [r.workflow, r.tenant, r.state, r.trusted_only, r.wakeable, r.source_region, r.source_location, r.sink,
            [dataclasses.astuple(s) for s in r.stages],
            sorted([dataclasses.astuple(e) for eps in r.endpoints.values() for e in eps]),
            sorted([[a, b, *f] for (a, b), fs in r.flows.items() for f in fs])]


def routing_digest(routes: Iterable[Route]) -> int:
    """A 63-bit content digest of a set of routes, independent of their order (never 0)."""
    rows = sorted((_route_row(r) for r in routes), key=lambda row: row[0])
    h = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).digest()
    return (int.from_bytes(h[:8], "big") >> 1) or 1


def routing_state(routes: Iterable[Route]) -> RoutingState:
    routes = tuple(routes)
    return RoutingState(routing_digest(routes), {r.workflow: r for r in routes})
