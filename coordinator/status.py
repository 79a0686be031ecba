"""Status views of a workflow, read-only: its replicas as agents report them
(:func:`replica_views`), the state that follows (:func:`workflow_state`) and its throughput
profiles, declared, measured by ``atoll profile`` and served (:func:`profiles_view`).

A replica's state is what its node reports for it (pending | loading | ready | failed) while
the node is READY, SUSPECT or DRAINING, and ``lost`` otherwise. A workflow is READY when every
stage has a ready replica on a READY node, FAILED when a replica failed and none is still
pending or loading, and otherwise DEPLOYING (DEGRADED once it was READY).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from atoll.coordinator.fleet import hardware_class
from atoll.coordinator.records import NodeRecord, WorkflowRecord
from atoll.specs.workflow import WorkflowSpec

LOAD_PHASES = ("fetch", "load", "warmup")


def replica_views(rec: WorkflowRecord, nodes: Mapping[str, NodeRecord]) -> list[dict]:
    """One dict per assignment, in order: the ``ReplicaStatus`` fields and ``node_state``."""
    out = []
    total: dict[str, float] = {}
    for a in rec.assignments:
        total[a.task] = total.get(a.task, 0.0) + a.weight
    for a in rec.assignments:
        node = nodes.get(a.node_id)
        st, msg, phases = "lost", "", {}
        if node is not None and node.state in ("READY", "DRAINING", "SUSPECT"):
            st = (node.status.get("replica_states") or {}).get(a.replica_id, "pending")
            msg = (node.status.get("replica_messages") or {}).get(a.replica_id, "")
        if node is not None:
            phases = node.status.get("replica_load_seconds") or {}
        out.append({"replica_id": a.replica_id, "task": a.task, "variant": a.variant,
                    "node_id": a.node_id, "node_name": node.name if node else "?",
                    "state": st, "worker_address": (node.status.get("worker_address", "") if node else ""),
                    "region": node.region if node else "", "tier": node.tier if node else "",
                    "weight": a.weight / total[a.task] if total.get(a.task) else 0.0,
                    "message": msg, "node_state": node.state if node else "GONE",
                    **{f"{ph}_seconds": float(phases.get(f"{a.replica_id}/{ph}", 0.0)) for ph in LOAD_PHASES}})
    return out


def workflow_state(rec: WorkflowRecord, views: Sequence[dict]) -> tuple[str, str]:
    """(state, message) of a deployed workflow from its replica views."""
    tasks = {a.task for a in rec.assignments} | set(rec.plan.variants if rec.plan is not None else ())
    ready = {t: sum(1 for v in views if v["task"] == t and v["state"] == "ready" and v["node_state"] == "READY")
             for t in tasks}
    failed = [v for v in views if v["state"] == "failed"]
    if all(ready.get(t, 0) > 0 for t in tasks):
        return "READY", f"{sum(ready.values())} replica(s) ready"
    if failed and not any(v["state"] in ("pending", "loading") for v in views):
        return "FAILED", f"{failed[0]['replica_id']}: {failed[0]['message'] or 'failed'}"
    waiting = [t for t in sorted(tasks) if not ready.get(t)]
    state = "DEGRADED" if rec.state in ("READY", "DEGRADED") else "DEPLOYING"
    return state, f"{len(tasks) - len(waiting)}/{len(tasks)} stages ready; waiting for {', '.join(waiting)}"


def profiles_view(rec: WorkflowRecord, spec: WorkflowSpec, nodes: Mapping[str, NodeRecord],
                  profile_rows: Iterable[Sequence]) -> list[dict]:
    """Declared and measured req/s per replica, per (task/variant, hardware class): the
    ``ProfileEntry`` fields. ``profile_rows`` are the store's (key, hardware, rps, tps, source, ...)."""
    measured = {(k, hw): (rps, src) for k, hw, rps, _t, src, *_ in profile_rows}
    out = []
    hws = {hardware_class(n) for n in nodes.values()}
    variants = spec.resolved_variants(None)
    for t in spec.tasks:
        for v in variants[t.name]:
            for hw in sorted(hws | set(v.throughput) | set(v.tokens_per_second)):
                declared = v.requests_per_second(hw, t.tokens_per_request) or 0.0
                m = measured.get((f"{rec.name}/{t.name}/{v.name}", hw))
                if declared or m:
                    out.append({"variant": f"{t.name}/{v.name}", "hardware": hw, "declared_rps": declared,
                                "measured_rps": m[0] if m else 0.0, "source": m[1] if m else "declared"})
    # What agents report in heartbeats: requests/s served per replica over the last minute.
    served: dict[tuple[str, str], float] = {}
    for a in rec.assignments:
        node = nodes.get(a.node_id)
        if node is None:
            continue
        rate = (node.status.get("measured_throughput") or {}).get(a.adapter or "base")
        if rate:
            key = (f"{a.task}/{a.variant}", hardware_class(node))
            served[key] = served.get(key, 0.0) + rate
    for (variant, hw), rate in sorted(served.items()):
        out.append({"variant": variant, "hardware": hw, "declared_rps": 0.0, "measured_rps": rate,
                    "source": "heartbeat"})
    return out
