"""A request entering a workflow through the coordinator, by either of its doors (gRPC ``Invoke``
or the OpenAI-compatible HTTP door): :func:`admit` is the one check both take before the request
is forwarded to an agent's entry (``coordinator/forward.py``), which runs it on the data plane and
counts it for the autoscaler (agents' load reports: arrivals, in-flight requests and each task's
completion tokens), wherever it entered.

1. the workflow must exist for the caller (NOT_FOUND for another tenant's, as ever);
2. it must serve, or be at zero: a workflow at zero (IDLE, or deploying after a wake) is woken
   here at once, and the entry holds the request until a replica is ready or its deadline passes;
3. the request goes to the entries of the workflow's source region first.

A ``base:adapter`` model (:func:`admit_model`) enters through the workflow whose ready replicas
hold that adapter (its placement rules choose the entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atoll.coordinator import auth
from atoll.core.errors import FailedPrecondition, NotFound

SERVING = ("READY", "DEGRADED")


@dataclass(frozen=True)
class Admitted:
    """Where a request goes: the region whose entries come first, and the workflow whose placement
    rules choose them (the workflow itself, or the one carrying a ``base:adapter`` model)."""

    region: str
    carried_by: str


def admit(wm, name: str) -> Admitted:
    """Check that ``name`` may take a request now, waking it when it is at zero."""
    rec = wm.get(name)
    wakeable = rec.state == "IDLE" or (rec.state == "DEPLOYING" and rec.deployment.autoscale is not None)
    if rec.state not in SERVING and not wakeable:
        raise FailedPrecondition(f"workflow {rec.name!r} is {rec.state}: {rec.message}",
                                 hint="wait until `atoll status` says READY")
    if rec.state == "IDLE":
        wm.wake(rec.name)
    return Admitted(wm.serving(rec.name).source_region, rec.name)


def is_model(name: str) -> bool:
    """Does ``name`` name a ``base:adapter`` model rather than a workflow?"""
    return ":" in name and not name.startswith("sha256:")


def admit_model(wm, model: str) -> Admitted:
    """The first serving workflow (that the caller sees) whose replicas hold ``base:adapter``."""
    base, adapter = model.split(":", 1)
    for rec in sorted(wm.records.values(), key=lambda r: r.name):
        if not auth.visible(rec.tenant) or rec.state not in SERVING:
            continue
        if any(a.adapter == adapter and (Path(a.base_model).name == base or a.base_model == base)
               for a in rec.assignments):
            return Admitted(wm.serving(rec.name).source_region, rec.name)
    raise NotFound(f"no ready replica serves adapter {adapter!r} on base {base!r}",
                   hint="GET /v1/models lists what you can call")
