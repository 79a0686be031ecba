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
from typing import Any, Mapping, Optional, Sequence


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

    # Statuses from best to worst: a merge is only as good as its weakest part.
    STATUS_ORDER = ("optimal", "feasible", "time_limit", "fallback")

    @classmethod
    def merge(cls, parts: Sequence["Plan"], variants: Optional[Mapping[str, str]] = None) -> "Plan":
        """One plan serving the sum of ``parts`` (each planned for a share of the load on its own
        nodes): costs add, accuracy is the lowest, hosts, replicas and routes are concatenated in
        order, and the status and gap are the worst of the parts. ``variants`` (default: the first
        part's) is the task -> variant view the merged plan reports."""
        if not parts:
            raise ValueError("Plan.merge needs at least one plan")
        rank = {s: i for i, s in enumerate(cls.STATUS_ORDER)}
        gaps = [p.gap for p in parts]
        return cls(
            planner=parts[0].planner,
            status=max((p.status for p in parts), key=lambda s: rank.get(s, len(rank))),
            variants=dict(variants if variants is not None else parts[0].variants),
            hosts=tuple(h for p in parts for h in p.hosts),
            replicas=tuple(r for p in parts for r in p.replicas),
            routes=tuple(r for p in parts for r in p.routes),
            compute_cost_per_hour=sum(p.compute_cost_per_hour for p in parts),
            transfer_cost_per_hour=sum(p.transfer_cost_per_hour for p in parts),
            accuracy=min(p.accuracy for p in parts),
            solve_seconds=sum(p.solve_seconds for p in parts),
            gap=None if any(g is None for g in gaps) else max(gaps),
            moved_replicas=sum(p.moved_replicas for p in parts),
            notes=tuple(n for p in parts for n in p.notes),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        """The inverse of :meth:`to_dict` (up to its rounding): a stored plan, typed again."""
        replicas = tuple(Replica(task=t, variant=tv["variant"], **{**r, "shared_with": tuple(r.get("shared_with", ()))})
                         for t, tv in d.get("tasks", {}).items() for r in tv.get("replicas", []))
        hosts = tuple(HostGroup(group=h["group"], pool=h["pool"], count=int(h["count"]),
                                members=tuple(tuple(m) for m in h["members"]), cost_per_hour=h["cost_per_hour"])
                      for h in d.get("hosts", []))
        return cls(planner=d.get("planner", ""), status=d.get("status", ""),
                   variants={t: tv["variant"] for t, tv in d.get("tasks", {}).items()},
                   hosts=hosts, replicas=replicas, routes=tuple(Route(**r) for r in d.get("routes", [])),
                   compute_cost_per_hour=float(d.get("compute_cost_per_hour", 0.0)),
                   transfer_cost_per_hour=float(d.get("transfer_cost_per_hour", 0.0)),
                   accuracy=float(d.get("accuracy", 0.0)), solve_seconds=float(d.get("solve_seconds", 0.0)),
                   gap=d.get("gap"), moved_replicas=int(d.get("moved_replicas", 0)),
                   notes=tuple(d.get("notes", ())), explain=dict(d.get("explain", {})))

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
