"""The routing table's values: what it takes to run a request through a deployed workflow.

A :class:`Route` names a workflow's stages in order (:class:`Stage`: prompt template and
sampling settings), the ready replicas of each stage (:class:`Endpoint`: Worker address,
location, routing weight, adapter), where requests enter, which stage answers, and the plan's
location-level flows per edge. A :class:`RoutingTable` holds the routes of every workflow.
They are immutable plain values: the coordinator builds them (``atoll.coordinator.routing``)
and whoever runs requests reads them, whichever side of the wire it is on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from atoll.core.errors import InvalidArgument


@dataclass(frozen=True)
class Stage:
    """One stage of a route: its prompt template and sampling settings. The spec sets
    ``max_tokens``, ``temperature``, ``stop`` and ``chat``; one request may change the sink's
    settings (:func:`with_sink`), the OpenAI door all of the others too."""

    task: str
    kind: str                      # llm | embedding
    prompt: str                    # template; "{input}" is replaced by the stage's input text
    parents: tuple[str, ...]       # tasks (or sources) feeding it
    max_tokens: int | None = 32    # None: up to a stop token or the context
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    chat: bool = False             # send the prompt as a user message, through the model's chat template
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1                     # choices (the sink only)
    logprobs: bool = False
    top_logprobs: int = 0


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
    ``temperature``, ...); the route itself is left untouched."""
    sink = next(s for s in route.stages if s.task == route.sink)
    if sink.kind != "llm":
        raise InvalidArgument(f"{', '.join(sorted(changes))} given, but workflow {route.workflow!r} ends in "
                              f"an {sink.kind} stage, which generates no tokens")
    return dataclasses.replace(route, stages=tuple(dataclasses.replace(s, **changes) if s.task == route.sink else s
                                                   for s in route.stages))
