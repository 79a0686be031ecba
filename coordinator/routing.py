"""The routing table: for every deployed workflow, what the router needs to run a request. Pure.

A :class:`Route` names a workflow's stages in order, the ready replicas of each stage as
:class:`Endpoint` values (Worker address, location, routing weight, adapter), where requests
enter, which stage answers, and the plan's location-level flows per edge. A
:class:`RoutingTable` holds the routes of every workflow. Both are immutable values that refer
to nothing inside the coordinator: the coordinator builds a table once per plan generation or
change of replica state (:func:`build_table`) and hands it to the router, and the same value
can be sent to agents.

A replica is an endpoint when it reports ready on a READY node that advertises a Worker
address.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from atoll.coordinator.records import Assignment
from atoll.coordinator.stages import Stage, WorkflowServing
from atoll.core.errors import InvalidArgument
from atoll.planner.plan import Plan


@dataclass(frozen=True)
class Endpoint:
    replica_id: str
    task: str
    variant: str
    node_id: str
    node_name: str
    region: str
    address: str
    weight: float
    adapter: str
    location: str = ""             # "region/tier", as the plan names locations
    base_model: str = ""


Flow = tuple[str, str, float]      # (from location, to location, rate)


@dataclass(frozen=True)
class Route:
    """What the router needs of one deployed workflow."""

    workflow: str
    stages: Sequence[Stage]        # topological order
    endpoints: Mapping[str, Sequence[Endpoint]]
    source_region: str
    sink: str
    source_location: str = ""
    # (from task or source, to task) -> [(from location, to location, rate)] from the plan
    flows: Mapping[tuple[str, str], Sequence[Flow]] = field(default_factory=dict)


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=dict)

    def get(self, workflow: str) -> Route | None:
        return self.routes.get(workflow)


def with_sink(route: Route, **changes) -> Route:
    """The route with fields of its sink stage replaced for one request (``max_tokens``,
    ``temperature``); the route itself is left untouched."""
    sink = next(s for s in route.stages if s.task == route.sink)
    if sink.kind != "llm":
        raise InvalidArgument(f"{', '.join(sorted(changes))} given, but workflow {route.workflow!r} ends in "
                              f"an {sink.kind} stage, which generates no tokens")
    return dataclasses.replace(route, stages=tuple(dataclasses.replace(s, **changes) if s.task == route.sink else s
                                                   for s in route.stages))


def build_route(workflow: str, serving: WorkflowServing, plan: Plan | None, assignments: Sequence[Assignment],
                views: Sequence[dict]) -> Route:
    """The route of one workflow; ``views`` are its replicas' status views, one per assignment
    in the same order (``atoll.coordinator.status.replica_views``)."""
    eps: dict[str, list[Endpoint]] = {}
    for a, v in zip(assignments, views):
        if v["state"] == "ready" and v["node_state"] == "READY" and v["worker_address"]:
            eps.setdefault(a.task, []).append(Endpoint(
                a.replica_id, a.task, a.variant, a.node_id, v["node_name"], v["region"], v["worker_address"],
                a.weight, a.adapter, f"{v['region']}/{v['tier']}", a.base_model))
    flows: dict[tuple[str, str], list[Flow]] = {}
    for f in (plan.routes if plan is not None else ()):
        flows.setdefault((f.src, f.dst), []).append((f.from_location, f.to_location, float(f.rate)))
    return Route(workflow, serving.stages, MappingProxyType({t: tuple(e) for t, e in eps.items()}),
                 serving.source_region, serving.sink, serving.source_location,
                 MappingProxyType({k: tuple(v) for k, v in flows.items()}))


def build_table(routes: Iterable[Route]) -> RoutingTable:
    return RoutingTable(MappingProxyType({r.workflow: r for r in routes}))
