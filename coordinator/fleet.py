"""The fleet as placement sees it: an immutable snapshot of the nodes a workflow may use. Pure.

:class:`FleetSnapshot` holds the READY nodes no other workflow holds (as :class:`FleetNode`
values: hardware class, tier, region, price, GPU memory, the base models each already holds),
the node ids other workflows hold, and the throughput measured on the fleet for this workflow.

Pools: :func:`fleet_pools` groups nodes by (hardware class, tier, region, price, preemptible,
GPU memory, trusted); each group is one planner pool whose ``node_ids`` name its members. A
node is trusted only when the operator said so (``NodeRecord.trusted``), never by its tier. A node's
hardware class is its ``hardware`` label when node.yaml sets one, otherwise a slug of its GPU
model ("NVIDIA A100-SXM4-80GB" -> "a100-sxm4-80gb"), or "cpu" without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from atoll.coordinator.records import NodeRecord

GIB = 1024 ** 3


def hardware_class(rec: NodeRecord) -> str:
    labels = rec.spec.get("labels") or {}
    if labels.get("hardware"):
        return labels["hardware"]
    gpus = rec.capacity.get("gpus") or []
    if not gpus:
        return "cpu"
    name = gpus[0].get("name", "gpu").lower()
    for word in ("nvidia ", "geforce ", "tesla "):
        name = name.replace(word, "")
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-") or "gpu"


def resident_models(status: dict) -> frozenset[str]:
    """Base models a node holds already, from its reported status: loaded, or fetched."""
    return frozenset({m["base_model"] for m in status.get("loaded", []) if m.get("base_model")}
                     | set(status.get("cached_models", [])))


@dataclass(frozen=True)
class FleetNode:
    id: str
    name: str
    region: str
    tier: str
    price_per_hour: float
    preemptible: bool
    hardware: str
    gpu_memory_gb: float           # the largest GPU's memory, GiB, 2 decimals
    labels: Mapping[str, str] = field(default_factory=dict)
    resident: frozenset[str] = frozenset()
    trusted: bool = False          # the operator's decision (a trusted join token, `atoll nodes trust`)

    @classmethod
    def of(cls, rec: NodeRecord) -> "FleetNode":
        gpus = rec.capacity.get("gpus") or []
        mem = round(max([g.get("memory_total_bytes", 0) for g in gpus] or [0]) / GIB, 2)
        return cls(id=rec.id, name=rec.name, region=rec.region, tier=rec.tier,
                   price_per_hour=float(rec.spec.get("price_per_hour", 0.0)),
                   preemptible=bool(rec.spec.get("preemptible", False)), hardware=hardware_class(rec),
                   gpu_memory_gb=mem, labels=dict(rec.spec.get("labels") or {}),
                   resident=resident_models(rec.status), trusted=rec.trusted)

    def domain(self, label: str) -> str:
        """The node's failure domain by ``label`` ("region": its region; a node without the
        label is a domain of its own)."""
        if label == "region":
            return self.region
        return self.labels.get(label, "") or f"node:{self.name}"


@dataclass(frozen=True)
class FleetSnapshot:
    nodes: tuple[FleetNode, ...]                  # READY nodes no other workflow holds
    taken: frozenset[str] = frozenset()           # node ids other workflows hold
    measured: Mapping[tuple[str, str, str], float] = field(default_factory=dict)  # (task, variant, hw) -> req/s


def snapshot(nodes: Iterable[NodeRecord], taken: Iterable[str],
             measured: Mapping[tuple[str, str, str], float]) -> FleetSnapshot:
    """The snapshot of ``nodes`` (the registry's, in its order): READY ones not in ``taken``."""
    held = frozenset(taken)
    return FleetSnapshot(tuple(FleetNode.of(n) for n in nodes if n.state == "READY" and n.id not in held),
                         held, dict(measured))


def measured_profiles(rows: Iterable[Sequence], workflow: str) -> dict[tuple[str, str, str], float]:
    """(task, variant, hardware) -> req/s for ``workflow``, from the store's profile rows
    (``"workflow/task/variant"``, hardware, rps, ...)."""
    out: dict[tuple[str, str, str], float] = {}
    for vkey, hw, rps, *_ in rows:
        wf, _, rest = vkey.partition("/")
        task, _, variant = rest.partition("/")
        if wf == workflow:
            out[(task, variant, hw)] = rps
    return out


def fleet_pools(nodes: Sequence[FleetNode]) -> list[dict]:
    """Group nodes into pool dicts (the fields of ``atoll.specs.cluster.PoolSpec``)."""
    groups: dict[tuple, list[FleetNode]] = {}
    for n in sorted(nodes, key=lambda n: n.name):
        key = (n.hardware, n.tier, n.region, n.price_per_hour, n.preemptible, n.gpu_memory_gb, n.trusted)
        groups.setdefault(key, []).append(n)
    pools = []
    for (hw, tier, region, price, pre, mem, trusted), members in sorted(groups.items()):
        pools.append({"name": f"{hw}.{region}.{tier}.{len(pools)}", "hardware": hw, "tier": tier,
                      "region": region, "price_per_hour": price, "preemptible": pre,
                      "gpu_memory_gb": mem, "count": len(members), "node_ids": [m.id for m in members],
                      "trusted": trusted})
    return pools
