"""The cluster spec: pools of identical nodes, single nodes, and network prices.

A *location* is a ``(region, tier)`` pair, written ``region/tier`` (``us-east/edge``). A link
may also name a bare region (``us-east``), meaning every tier of that region; the most specific
link wins. Prices are USD per GB (10^9 bytes) sent from ``from`` to ``to``; direction matters.

Example::

    pools:
      - {name: aws-g5, hardware: a10g, tier: datacenter, region: us-east,
         price_per_hour: 1.006, count: 8, gpu_memory_gb: 24}
      - {name: vast-4090, hardware: rtx4090, tier: renter, region: us-east,
         price_per_hour: 0.35, count: 20, gpu_memory_gb: 24, preemptible: true}
    nodes:
      - {name: cam-box-1, hardware: jetson-orin, tier: edge, region: us-east,
         price_per_hour: 0.05, gpu_memory_gb: 32}
    network:
      intra_region_per_gb: 0.01    # between tiers of one region, unless a link says otherwise
      inter_region_per_gb: 0.02    # between regions, unless a link says otherwise
    links:
      - {from: us-east/datacenter, to: us-east/edge, price_per_gb: 0.09}
      - {from: us-east/edge, to: us-east/datacenter, price_per_gb: 0.0, bandwidth_mbps: 500}

A single node is a pool of one (its pool id is its name).
"""

from __future__ import annotations

import difflib
from typing import Optional

from pydantic import Field, field_validator, model_validator

from atoll.core.errors import SpecError
from atoll.specs.catalog import check_name
from atoll.specs.common import Spec, load_yaml
from atoll.specs.node import TIERS, Tier


def parse_location(text: str) -> tuple[str, Optional[str]]:
    """'us-east/edge' -> ('us-east', 'edge'); 'us-east' -> ('us-east', None)."""
    if "/" in text:
        region, tier = text.split("/", 1)
        if tier not in TIERS:
            raise ValueError(f"tier {tier!r} is not one of {', '.join(TIERS)}")
        if not region:
            raise ValueError("empty region")
        return region, tier
    if not text:
        raise ValueError("empty location")
    return text, None


class NodeSpec(Spec):
    """One node (or, as PoolSpec, ``count`` identical nodes)."""

    name: str
    hardware: str = Field(min_length=1, max_length=64, description="hardware class, e.g. a100-80g")
    tier: Tier
    region: str = Field(min_length=1, max_length=64)
    price_per_hour: float = Field(ge=0, le=10_000, description="USD per node-hour")
    preemptible: bool = False
    gpu_memory_gb: float = Field(default=0.0, ge=0, le=4096,
                                 description="GPU memory per node; 0 means unknown (no check)")
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    trusted: Optional[bool] = Field(default=None, description="the operator trusts these nodes (trusted_only "
                                    "workflows run only on trusted nodes); unset: every tier but renter")

    @property
    def is_trusted(self) -> bool:
        return self.trusted if self.trusted is not None else self.tier != "renter"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class PoolSpec(NodeSpec):
    count: int = Field(ge=1, le=1_000_000, description="how many identical nodes")
    node_ids: list[str] = Field(default_factory=list,
                                description="optional names of the nodes (live fleets)")


class LinkSpec(Spec):
    from_: str = Field(alias="from", description="region/tier or region")
    to: str = Field(description="region/tier or region")
    price_per_gb: float = Field(ge=0, le=100)
    bandwidth_mbps: Optional[float] = Field(default=None, gt=0, le=1e9, description="cap, megabits/s")

    model_config = {**Spec.model_config, "populate_by_name": True}

    @field_validator("from_", "to")
    @classmethod
    def _loc(cls, v: str) -> str:
        parse_location(v)
        return v


class NetworkDefaults(Spec):
    same_location_per_gb: float = Field(default=0.0, ge=0, le=100)
    intra_region_per_gb: float = Field(default=0.01, ge=0, le=100)
    inter_region_per_gb: float = Field(default=0.02, ge=0, le=100)


class ClusterSpec(Spec):
    name: str = "cluster"
    pools: list[PoolSpec] = Field(default_factory=list, max_length=10_000)
    nodes: list[NodeSpec] = Field(default_factory=list, max_length=10_000)
    network: NetworkDefaults = Field(default_factory=NetworkDefaults)
    links: list[LinkSpec] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _check(self):
        if not self.pools and not self.nodes:
            raise ValueError("no pools and no nodes: list at least one under `pools` or `nodes`")
        seen: set[str] = set()
        for kind, items in (("pools", self.pools), ("nodes", self.nodes)):
            for i, p in enumerate(items):
                if p.name in seen:
                    raise ValueError(f"{kind}[{i}].name: duplicate name {p.name!r}; names of pools "
                                     f"and nodes must be unique")
                seen.add(p.name)
        return self


def load_cluster(path) -> ClusterSpec:
    return load_yaml(ClusterSpec, path)


def check_hardware(cluster: ClusterSpec, profiled: set[str], source: str | None = None) -> list[str]:
    """Pools and nodes whose hardware class no variant has a profile for. A class within a typo
    of a profiled one is an error naming the likely class; the others are returned as notes
    (the planner cannot use those nodes)."""
    notes = []
    for kind, items in (("pools", cluster.pools), ("nodes", cluster.nodes)):
        for i, p in enumerate(items):
            if p.hardware in profiled:
                continue
            close = difflib.get_close_matches(p.hardware, sorted(profiled), n=1, cutoff=0.6)
            if close:
                raise SpecError(f"unknown hardware class {p.hardware!r}: no variant has a profile for it",
                                source=source, path=f"{kind}[{i}].hardware",
                                hint=f"did you mean {close[0]!r}? profiled classes: {', '.join(sorted(profiled))}")
            notes.append(f"{kind[:-1]} {p.name!r}: no variant has a throughput profile for hardware "
                         f"{p.hardware!r}, so the planner cannot use it")
    return notes
