"""PlanProblem: the immutable snapshot the planner works on.

A problem is assembled from specs (:func:`atoll.planner.build.problem_from_specs`) or built
directly from the dataclasses below (the coordinator builds one pool per group of identical
live nodes and maps the plan's pool ids back to nodes through ``Pool.node_ids``). Every
container is a tuple or a read-only mapping; nothing here is mutated after construction.

Units: rates in requests (messages) per second, sizes in KB (10^3 bytes), prices in USD per
hour and USD per GB (10^9 bytes), memory in GB, bandwidth in megabits per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping, Optional

from atoll.specs.node import TIER_RANK

Location = tuple[str, str]  # (region, tier)


def loc_str(loc: Location) -> str:
    return f"{loc[0]}/{loc[1]}"


def _ro(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Variant:
    """One candidate for a task. ``group`` is the sharing key (base model and precision):
    variants of one group co-located on a host load the base weights once and time-share it."""

    name: str
    accuracy: float
    rps: Mapping[str, float]                      # hardware class -> requests/s per replica
    group: str = ""
    adapter: Optional[str] = None
    memory_gb: float = 0.0
    adapter_memory_gb: float = 0.0
    profile: Optional[tuple[tuple[float, float], ...]] = None

    def __post_init__(self):
        object.__setattr__(self, "rps", _ro(self.rps))
        if not self.group:
            object.__setattr__(self, "group", self.name)

    def out_accuracy(self, in_acc: float) -> float:
        """Output accuracy for an input of accuracy ``in_acc`` (piecewise-linear profile)."""
        if not self.profile:
            return self.accuracy * in_acc
        pts = self.profile
        if in_acc <= pts[0][0]:
            (x0, y0), (x1, y1) = pts[0], pts[1]
        elif in_acc >= pts[-1][0]:
            (x0, y0), (x1, y1) = pts[-2], pts[-1]
        else:
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                if x0 <= in_acc <= x1:
                    break
        return min(1.0, max(0.0, y0 + (y1 - y0) * (in_acc - x0) / (x1 - x0)))

    def segments(self) -> list[tuple[float, float]]:
        """(slope, intercept) lines whose minimum is the profile (concave)."""
        if not self.profile:
            return [(self.accuracy, 0.0)]
        out = []
        for (x0, y0), (x1, y1) in zip(self.profile, self.profile[1:]):
            s = (y1 - y0) / (x1 - x0)
            out.append((s, y0 - s * x0))
        return out


@dataclass(frozen=True)
class Task:
    name: str
    rate: float                                   # req/s it must sustain (derived from sources)
    variants: tuple[Variant, ...]
    parents: tuple[str, ...]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclass(frozen=True)
class Source:
    name: str
    rate: float
    location: Location


@dataclass(frozen=True)
class Edge:
    """Messages from ``src`` to ``dst``: ``rate`` messages/s in total (the consumer's rate)."""

    src: str
    dst: str
    rate: float
    size_kb: float = 1.0
    sizes: tuple[tuple[Optional[str], Optional[str], float], ...] = ()

    @property
    def by_src(self) -> bool:
        return any(a is not None for a, _, _ in self.sizes)

    @property
    def by_dst(self) -> bool:
        return any(b is not None for _, b, _ in self.sizes)

    def size(self, a: Optional[str], b: Optional[str]) -> float:
        best, score = self.size_kb, -1
        for fa, fb, kb in self.sizes:
            if (fa is None or fa == a) and (fb is None or fb == b):
                s = (fa is not None) + (fb is not None)
                if s > score:
                    best, score = kb, s
        return best


@dataclass(frozen=True)
class Pool:
    id: str
    hardware: str
    tier: str
    region: str
    price_per_hour: float
    count: int
    preemptible: bool = False
    gpu_memory_gb: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    node_ids: tuple[str, ...] = ()
    trusted: bool = False          # the operator trusts these nodes (trusted_only uses only these)

    def __post_init__(self):
        object.__setattr__(self, "labels", _ro(self.labels))

    @property
    def location(self) -> Location:
        return (self.region, self.tier)


@dataclass(frozen=True)
class Network:
    """$/GB per ordered location pair: explicit links first (most specific wins), else defaults."""

    same_location_per_gb: float = 0.0
    intra_region_per_gb: float = 0.01
    inter_region_per_gb: float = 0.02
    # ((from_region, from_tier|None), (to_region, to_tier|None), $/GB, Mbps cap|None)
    links: tuple[tuple[tuple[str, Optional[str]], tuple[str, Optional[str]], float, Optional[float]], ...] = ()

    def _link(self, a: Location, b: Location):
        best, score = None, -1
        for fa, fb, price, cap in self.links:
            if fa[0] == a[0] and fb[0] == b[0] and fa[1] in (None, a[1]) and fb[1] in (None, b[1]):
                s = (fa[1] is not None) + (fb[1] is not None)
                if s > score:
                    best, score = (price, cap), s
        return best

    def price(self, a: Location, b: Location) -> float:
        link = self._link(a, b)
        if link is not None:
            return link[0]
        if a == b:
            return self.same_location_per_gb
        return self.intra_region_per_gb if a[0] == b[0] else self.inter_region_per_gb

    def bandwidth(self, a: Location, b: Location) -> Optional[float]:
        link = self._link(a, b)
        return None if link is None else link[1]


@dataclass(frozen=True)
class PlanProblem:
    """Everything the planner needs, immutable. ``tasks`` are in topological order."""

    name: str
    sources: tuple[Source, ...]
    tasks: tuple[Task, ...]
    edges: tuple[Edge, ...]
    pools: tuple[Pool, ...]
    network: Network = Network()
    accuracy_model: str = "profile"               # profile | additive | table
    min_accuracy: Optional[float] = None
    max_accuracy_loss: Optional[float] = None
    accuracy_table: tuple[tuple[tuple[tuple[str, str], ...], float], ...] = ()
    forbid_tiers: tuple[str, ...] = ()
    forbid_regions: tuple[str, ...] = ()
    forbid_locations: tuple[tuple[str, Optional[str]], ...] = ()  # (region, tier|None)
    data_up_only: bool = False
    trusted_only: bool = False                    # only pools the operator trusts

    # ------------------------------------------------------------------ lookups
    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def source(self, name: str) -> Optional[Source]:
        for s in self.sources:
            if s.name == name:
                return s
        return None

    def pool(self, pid: str) -> Pool:
        for p in self.pools:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def pool_allowed(self, p: Pool) -> bool:
        return (p.tier not in self.forbid_tiers and p.region not in self.forbid_regions
                and p.location not in self.forbid_locations
                and (p.region, None) not in self.forbid_locations and p.count > 0
                and (p.trusted or not self.trusted_only))

    def fits(self, v: Variant, p: Pool) -> bool:
        return p.gpu_memory_gb <= 0 or v.memory_gb + v.adapter_memory_gb <= p.gpu_memory_gb + 1e-9

    def mu(self, v: Variant, p: Pool) -> float:
        """Requests/s of one replica of ``v`` on a node of ``p``; 0 if it cannot run there."""
        if not self.pool_allowed(p) or not self.fits(v, p):
            return 0.0
        return float(v.rps.get(p.hardware, 0.0))

    def flow_allowed(self, a: Location, b: Location, up_only: bool = False) -> bool:
        if up_only or self.data_up_only:
            return TIER_RANK[b[1]] >= TIER_RANK[a[1]]
        return True

    def scaled(self, factor: float) -> "PlanProblem":
        """A copy with every source rate (and so every task and edge rate) times ``factor``."""
        return replace(
            self,
            sources=tuple(replace(s, rate=s.rate * factor) for s in self.sources),
            tasks=tuple(replace(t, rate=t.rate * factor) for t in self.tasks),
            edges=tuple(replace(e, rate=e.rate * factor) for e in self.edges))

    @property
    def total_source_rate(self) -> float:
        return sum(s.rate for s in self.sources)

    def sinks(self) -> list[str]:
        has_child = {e.src for e in self.edges}
        return [t.name for t in self.tasks if t.name not in has_child]

    # ------------------------------------------------------------------ accuracy
    def accuracy_of(self, choice: Mapping[str, str]) -> float:
        """Predicted end-to-end accuracy of a variant choice (task -> variant name)."""
        if self.accuracy_model == "table":
            key = tuple(sorted(choice.items()))
            for combo, acc in self.accuracy_table:
                if tuple(sorted(combo)) == key:
                    return acc
            return 0.0
        if self.accuracy_model == "additive":
            return 1.0 - sum(1.0 - t.variant(choice[t.name]).accuracy for t in self.tasks)
        out: dict[str, float] = {s.name: 1.0 for s in self.sources}
        for t in self.tasks:
            x = min(out[p] for p in t.parents)
            out[t.name] = t.variant(choice[t.name]).out_accuracy(x)
        return min(out[s] for s in self.sinks())

    def accuracy_loss(self, choice: Mapping[str, str]) -> float:
        return sum(max(v.accuracy for v in t.variants) - t.variant(choice[t.name]).accuracy
                   for t in self.tasks)

    def accuracy_ok(self, choice: Mapping[str, str], tol: float = 1e-7) -> bool:
        if self.accuracy_model == "table" and not any(
                tuple(sorted(c)) == tuple(sorted(choice.items())) for c, _ in self.accuracy_table):
            return False
        if self.min_accuracy is not None and self.accuracy_of(choice) < self.min_accuracy - tol:
            return False
        if self.max_accuracy_loss is not None and self.accuracy_loss(choice) > self.max_accuracy_loss + tol:
            return False
        return True
