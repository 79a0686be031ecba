"""The Plan: what the planner decided, and what it predicts it costs.

``hosts`` is the source of truth for compute: ``count`` nodes of pool ``pool`` run the base
model ``group`` and serve the listed (task, variant) members. ``replicas`` is the per-task view
of the same hosts with the request rate each (task, variant, pool) serves; a host shared by
several adapters of one base appears once per member, with its cost split by load.
``routes`` are location-level flows per workflow edge, with the weight (fraction of the
producer's messages at ``from_location`` sent to ``to_location``) the router uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class HostGroup:
    group: str
    pool: str
    count: int
    members: tuple[tuple[str, str], ...]          # (task, variant)
    cost_per_hour: float


@dataclass(frozen=True)
class Replica:
    task: str
    variant: str
    pool: str
    location: str
    replicas: int                                 # hosts of the pool holding this variant
    rate: float                                   # req/s served by them
    utilization: float                            # rate / (replicas * capacity)
    cost_per_hour: float                          # share of the hosts' price, split by load
    shared_with: tuple[str, ...] = ()             # other "task:variant" on the same hosts


@dataclass(frozen=True)
class Route:
    src: str
    dst: str
    from_location: str
    to_location: str
    rate: float                                   # messages/s
    size_kb: float
    weight: float
    cost_per_hour: float


@dataclass(frozen=True)
class HostCounts:
    """A previous placement given only as nodes per (host group, pool): what a re-plan's churn
    penalty compares against (``plan(problem, previous=HostCounts(...))``), e.g. rebuilt from a
    live deployment whose pools were regrouped since."""

    counts: dict

    def host_counts(self) -> dict[tuple[str, str], int]:
        return dict(self.counts)


@dataclass(frozen=True)
class Plan:
    planner: str
    status: str                                   # optimal | feasible | time_limit | fallback
    variants: dict[str, str]
    hosts: tuple[HostGroup, ...]
    replicas: tuple[Replica, ...]
    routes: tuple[Route, ...]
    compute_cost_per_hour: float
    transfer_cost_per_hour: float
    accuracy: float
    solve_seconds: float
    gap: Optional[float]
    moved_replicas: int = 0
    notes: tuple[str, ...] = ()
    explain: dict[str, Any] = field(default_factory=dict)

    @property
    def total_cost_per_hour(self) -> float:
        return self.compute_cost_per_hour + self.transfer_cost_per_hour

    def host_counts(self) -> dict[tuple[str, str], int]:
        """(group, pool) -> nodes; what a re-plan compares against."""
        return {(h.group, h.pool): h.count for h in self.hosts}

    def nodes_used(self) -> int:
        return sum(h.count for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {}
        for t, v in self.variants.items():
            tasks[t] = {"variant": v, "replicas": [
                {k: val for k, val in asdict(r).items() if k not in ("task", "variant")}
                for r in self.replicas if r.task == t]}
        return {
            "planner": self.planner,
            "status": self.status,
            "total_cost_per_hour": round(self.total_cost_per_hour, 6),
            "compute_cost_per_hour": round(self.compute_cost_per_hour, 6),
            "transfer_cost_per_hour": round(self.transfer_cost_per_hour, 6),
            "accuracy": round(self.accuracy, 6),
            "solve_seconds": round(self.solve_seconds, 4),
            "gap": None if self.gap is None else round(self.gap, 6),
            "nodes": self.nodes_used(),
            "moved_replicas": self.moved_replicas,
            "tasks": tasks,
            "hosts": [asdict(h) for h in self.hosts],
            "routes": [asdict(r) for r in self.routes],
            "notes": list(self.notes),
            **({"explain": self.explain} if self.explain else {}),
        }


def node_assignments(plan: Plan, problem) -> dict[str, HostGroup]:
    """node id -> the host group it runs, for pools that name their nodes (``Pool.node_ids``).
    Within a pool, host groups take the pool's nodes in the order the pool lists them; nodes
    left over are idle and absent from the result. Pools without node ids are skipped."""
    out: dict[str, HostGroup] = {}
    taken: dict[str, int] = {}
    pools = {p.id: p for p in problem.pools}
    for h in sorted(plan.hosts, key=lambda h: (h.pool, h.group)):
        ids = pools[h.pool].node_ids if h.pool in pools else ()
        if not ids:
            continue
        start = taken.get(h.pool, 0)
        for nid in ids[start:start + h.count]:
            out[nid] = h
        taken[h.pool] = start + h.count
    return out
