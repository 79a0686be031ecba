"""From the live fleet to a planning problem, and from a plan to per-node assignments. Pure.

Pools: READY nodes are grouped by (hardware class, tier, region, price, preemptible, GPU
memory); each group is one planner pool whose ``node_ids`` name its members. A node's hardware
class is its ``hardware`` label when node.yaml sets one, otherwise a slug of its GPU model
("NVIDIA A100-SXM4-80GB" -> "a100-sxm4-80gb"), or "cpu" without a GPU.

Assignments: each of the plan's host groups (a base-model group on ``count`` hosts of a pool)
takes ``count`` nodes of its pool, preferring nodes that already hold that group (a re-plan
moves as little as it can), then nodes that already hold its base model (loaded, or complete
in their fetch cache: a cold start without the fetch), and every member (task, variant) of the group becomes one replica
on each of those nodes. A replica's routing weight is the request rate the plan gives its
(task, variant, pool) divided by the hosts that share it.
"""

from __future__ import annotations

import collections

import re
from dataclasses import asdict, dataclass

from atoll.coordinator.store import NodeRecord

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


def fleet_pools(nodes: list[NodeRecord]) -> list[dict]:
    """Group nodes into pool dicts (the fields of ``atoll.specs.cluster.PoolSpec``)."""
    groups: dict[tuple, list[NodeRecord]] = {}
    for n in sorted(nodes, key=lambda r: r.name):
        gpus = n.capacity.get("gpus") or []
        mem = round(max([g.get("memory_total_bytes", 0) for g in gpus] or [0]) / GIB, 2)
        key = (hardware_class(n), n.tier, n.region, float(n.spec.get("price_per_hour", 0.0)),
               bool(n.spec.get("preemptible", False)), mem)
        groups.setdefault(key, []).append(n)
    pools = []
    for (hw, tier, region, price, pre, mem), members in sorted(groups.items()):
        pools.append({"name": f"{hw}.{region}.{tier}.{len(pools)}", "hardware": hw, "tier": tier,
                      "region": region, "price_per_hour": price, "preemptible": pre,
                      "gpu_memory_gb": mem, "count": len(members), "node_ids": [m.id for m in members]})
    return pools


@dataclass(frozen=True)
class Assignment:
    replica_id: str
    workflow: str
    task: str
    variant: str
    node_id: str
    base_model: str
    adapter: str
    adapter_source: str
    kind: str
    weight: float          # req/s the plan routes to this replica
    group: str

    def to_dict(self) -> dict:
        return asdict(self)


def resident_models(status: dict) -> set[str]:
    """Base models a node holds already, from its reported status: loaded, or fetched."""
    return {m["base_model"] for m in status.get("loaded", []) if m.get("base_model")} | set(
        status.get("cached_models", []))


def previous_hosts(pools: list[dict], previous: list[dict]) -> dict[tuple[str, str], int]:
    """Nodes per (host group, pool) of a live deployment's assignments, on today's pools (nodes
    gone from the fleet are dropped): the previous placement a re-plan's churn penalty uses."""
    pool_of = {nid: p["name"] for p in pools for nid in p["node_ids"]}
    nodes = {(a["group"], pool_of[a["node_id"]], a["node_id"]) for a in previous if a["node_id"] in pool_of}
    return dict(collections.Counter((g, pool) for g, pool, _ in nodes))


def assign(workflow: str, plan: dict, pools: list[dict], serving: dict[tuple[str, str], dict],
           previous: list[dict] | None = None, taken: set[str] | None = None,
           resident: dict[str, set[str]] | None = None) -> list[Assignment]:
    """Turn ``plan`` (``Plan.to_dict()``) into replicas on concrete nodes.

    ``serving[(task, variant)]`` gives ``base_model``, ``adapter``, ``adapter_source``, ``kind``.
    ``previous`` (earlier assignments of this workflow) makes placement sticky; ``taken`` are
    node ids other workflows hold; ``resident[node_id]`` the base models a node already holds
    (:func:`resident_models`), preferred after stickiness.
    """
    resident = resident or {}
    by_pool = {p["name"]: list(p["node_ids"]) for p in pools}
    held: dict[str, str] = {a["node_id"]: a["group"] for a in (previous or [])}
    used: set[str] = set(taken or ())
    rates: dict[tuple[str, str, str], tuple[float, int]] = {}
    for task, t in plan.get("tasks", {}).items():
        for r in t.get("replicas", []):
            rates[(task, t["variant"], r["pool"])] = (float(r["rate"]), int(r["replicas"]))
    out: list[Assignment] = []
    for h in sorted(plan.get("hosts", []), key=lambda h: (h["group"], h["pool"])):
        candidates = [n for n in by_pool.get(h["pool"], []) if n not in used]
        base = serving[tuple(h["members"][0])]["base_model"] if h["members"] else ""
        candidates.sort(key=lambda n: (held.get(n) != h["group"], base not in resident.get(n, ()), n))
        chosen = candidates[: int(h["count"])]
        for node in chosen:
            used.add(node)
            for task, variant in h["members"]:
                s = serving[(task, variant)]
                rate, hosts = rates.get((task, variant, h["pool"]), (0.0, max(1, int(h["count"]))))
                out.append(Assignment(
                    replica_id=f"{workflow}.{task}.{variant}.{node[:8]}", workflow=workflow, task=task,
                    variant=variant, node_id=node, base_model=s["base_model"], adapter=s.get("adapter") or "",
                    adapter_source=s.get("adapter_source") or "", kind=s.get("kind", "llm"),
                    weight=rate / max(hosts, 1), group=h["group"]))
    return out


def node_items(assignments: list[dict], node_id: str) -> list[dict]:
    """The Assignment proto fields for one node (what goes down its heartbeat stream)."""
    keys = ("replica_id", "workflow", "task", "variant", "base_model", "adapter", "adapter_source", "kind")
    return [{k: a[k] for k in keys} for a in sorted(assignments, key=lambda a: a["replica_id"])
            if a["node_id"] == node_id]
