"""The routing table, built: every deployed workflow's :class:`~atoll.specs.routing.Route`
from its serving view, plan, assignments and replica views. Pure.

The coordinator builds a table once per plan generation or change of replica state
(``WorkflowManager.routing_table``); :mod:`atoll.coordinator.publish` sends each agent the routes
it may serve, and the agents' data plane (``atoll.agent.dataplane``) runs requests on them. The
table is an immutable value (``atoll.specs.routing``) that refers to nothing inside the coordinator.

A replica is an endpoint when it reports ready on a READY node that advertises a Worker
address.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Sequence

from atoll.coordinator.records import Assignment
from atoll.coordinator.stages import WorkflowServing
from atoll.planner.plan import Plan
from atoll.specs.routing import Endpoint, Flow, Route, RoutingTable


def build_route(workflow: str, serving: WorkflowServing, plan: Plan | None, assignments: Sequence[Assignment],
                views: Sequence[dict], *, tenant: str = "", state: str = "READY", trusted_only: bool = False,
                wakeable: bool = False) -> Route:
    """The route of one workflow; ``views`` are its replicas' status views, one per assignment
    in the same order (``atoll.coordinator.status.replica_views``). ``tenant``, ``state``,
    ``trusted_only`` and ``wakeable`` are what entries need to admit a request."""
    eps: dict[str, list[Endpoint]] = {}
    for a, v in zip(assignments, views):
        if v["state"] == "ready" and v["node_state"] == "READY" and v["worker_address"]:
            eps.setdefault(a.task, []).append(Endpoint(
                replica_id=a.replica_id, task=a.task, variant=a.variant, adapter=a.adapter, base_model=a.base_model,
                weight=a.weight, node_id=a.node_id, node_name=v["node_name"], address=v["worker_address"],
                region=v["region"], tier=v["tier"], location=f"{v['region']}/{v['tier']}"))
    flows: dict[tuple[str, str], list[Flow]] = {}
    for f in (plan.routes if plan is not None else ()):
        flows.setdefault((f.src, f.dst), []).append((f.from_location, f.to_location, float(f.rate)))
    return Route(workflow, serving.stages, MappingProxyType({t: tuple(e) for t, e in eps.items()}),
                 serving.source_region, serving.sink, serving.source_location,
                 MappingProxyType({k: tuple(v) for k, v in flows.items()}), tenant, state, trusted_only, wakeable)


def build_table(routes: Iterable[Route]) -> RoutingTable:
    return RoutingTable(MappingProxyType({r.workflow: r for r in routes}))
