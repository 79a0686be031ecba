"""Builders for data-plane tests: routes with endpoints in locations, and plan flows."""

from __future__ import annotations

from types import MappingProxyType

from atoll.specs.routing import Endpoint, Route, Stage


def endpoint(rid: str, task: str = "gen", *, region: str = "eu", tier: str = "datacenter", weight: float = 1.0,
             node: str = "", address: str = "", adapter: str = "", base: str = "/m/base") -> Endpoint:
    return Endpoint(replica_id=rid, task=task, variant="v", adapter=adapter, base_model=base, weight=weight,
                    node_id=node or f"node-{rid}", node_name=node or f"node-{rid}", address=address or f"{rid}:1",
                    region=region, tier=tier, location=f"{region}/{tier}")


def route(name: str = "wf", *, stages=None, endpoints=(), flows=None, tenant: str = "", state: str = "READY",
          trusted_only: bool = False, source: str = "eu/edge", wakeable: bool = False) -> Route:
    stages = stages or (Stage("gen", "llm", "{input}", ("users",), max_tokens=4),)
    eps: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        eps.setdefault(e.task, []).append(e)
    return Route(name, tuple(stages), MappingProxyType({t: tuple(v) for t, v in eps.items()}), source.split("/")[0],
                 stages[-1].task, source, MappingProxyType({k: tuple(v) for k, v in (flows or {}).items()}),
                 tenant, state, trusted_only, wakeable)
