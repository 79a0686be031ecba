"""What a tenant may see of the shared fleet. Pure.

``ListNodes`` and ``GetNode`` show every node to every key (capacity, price, state: what a
tenant needs to size its workflows), but a node's status also names what runs there: replica
ids (which contain workflow names), adapter names, cached and loaded models. A user sees of
those only what its own workflows put there (:func:`node_view`); an admin sees everything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from atoll.coordinator.records import NodeRecord, WorkflowRecord


@dataclass(frozen=True)
class TenantScope:
    replicas: frozenset[str]        # replica ids of the tenant's workflows
    adapters: frozenset[str]        # adapter names they use
    sources: frozenset[str]         # base models and adapter sources they name


def scope_of(records: Iterable[WorkflowRecord], tenant: str) -> TenantScope:
    mine = [a for r in records if r.tenant == tenant for a in r.assignments]
    return TenantScope(frozenset(a.replica_id for a in mine), frozenset(a.adapter for a in mine if a.adapter),
                       frozenset(s for a in mine for s in (a.base_model, a.adapter_source) if s))


def node_view(rec: NodeRecord, scope: TenantScope) -> NodeRecord:
    """``rec`` with its status narrowed to what ``scope``'s tenant put there."""
    st = rec.status
    phases = {k: v for k, v in (st.get("replica_load_seconds") or {}).items()
              if k.rsplit("/", 1)[0] in scope.replicas}
    loaded = [{**m, "adapters": [x for x in m.get("adapters", []) if x in scope.adapters]}
              for m in st.get("loaded", []) if m.get("base_model") in scope.sources]
    status = {**st,
              "replica_states": {k: v for k, v in (st.get("replica_states") or {}).items() if k in scope.replicas},
              "replica_messages": {k: v for k, v in (st.get("replica_messages") or {}).items()
                                   if k in scope.replicas},
              "replica_load_seconds": phases,
              "replica_queue_depth": {k: v for k, v in (st.get("replica_queue_depth") or {}).items()
                                      if k in scope.replicas},
              "measured_throughput": {k: v for k, v in (st.get("measured_throughput") or {}).items()
                                      if k in scope.adapters},
              "cached_models": [m for m in st.get("cached_models", []) if m in scope.sources],
              "loaded": loaded}
    return dataclasses.replace(rec, status=status)
