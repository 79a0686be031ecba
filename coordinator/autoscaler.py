"""Autoscaling: from measured load to the request rate a workflow is planned for.

The planner sizes a workflow for a request rate. The autoscaler watches what the fleet measures
— requests in flight per replica (or queueing delay), the arrival rate, and idle time — and
decides when the workflow should be re-planned for another rate. :func:`decide` is pure: it
returns a decision value. :class:`Autoscaler` is the pass around it: it counts the requests the
router sees, builds one :class:`Sample` per workflow, and carries the decision out through the
workflow manager (re-plan with the churn penalty, so replicas that serve well stay; back off to
a smaller rate when the fleet cannot take the new one or ``max_replicas`` would be exceeded);
it also times cold starts, from a scale-up decision to each new replica serving.

Policy (per workflow, from the spec's ``autoscaling:`` block)::

    metric: in_flight | queue_delay   the per-replica signal (not only the request rate)
    target: 4                         its target value per ready replica
    min_replicas / max_replicas       bounds on replicas per stage
    scale_up_delay: 5                 seconds above the band before scaling out
    scale_down_delay: 60              seconds below the band before scaling in
    scale_to_zero: false              allow zero replicas after idle_seconds without requests
    idle_seconds: 120

Let ``U`` be the utilisation signal: mean in-flight requests per ready replica divided by
``target`` (or the mean queue delay over ``target``). The plan's rate ``R`` is kept while
``0.5 <= U <= 1``. Above the band for ``scale_up_delay`` seconds the new rate is
``max(R * U, arrivals) * headroom``; below it for ``scale_down_delay`` seconds it is
``max(arrivals * headroom, R * U * headroom)`` (never below the declared ``min_rate``). The
``rate_only`` policy (a baseline) ignores ``U`` and follows the arrival rate alone, the way a
reactive autoscaler keyed on requests/s does.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Protocol, Sequence

from atoll.coordinator.placement import Placement
from atoll.coordinator.records import Autoscale, NodeRecord, WorkflowRecord
from atoll.core.errors import PlanInfeasible
from atoll.core.logs import kv
from atoll.specs.autoscaling import AutoscalingSpec
from atoll.specs.workflow import WorkflowSpec

log = logging.getLogger("atoll.coordinator")

HEADROOM = 1.25
WINDOW_S = 10.0             # arrivals are counted over this window
REPLAN_TRIES = 4


@dataclass(frozen=True)
class Policy:
    metric: Literal["in_flight", "queue_delay", "rate_only"] = "in_flight"
    target: float = 4.0
    min_replicas: int = 1
    max_replicas: int = 64
    scale_up_delay: float = 5.0
    scale_down_delay: float = 60.0
    scale_to_zero: bool = False
    idle_seconds: float = 120.0


@dataclass(frozen=True)
class Sample:
    """One observation of a workflow (every reconcile pass)."""

    now: float
    arrivals_per_s: float          # requests/s over the last window
    in_flight: float               # requests in flight in the workflow now
    queue_delay_s: float           # mean queueing delay at the replicas (agents' reports)
    ready_replicas: int            # ready replicas of the busiest stage
    last_request_at: float         # monotonic time of the last request, or when the workflow became
                                   # ready to serve if that came later (idle time counts from there)


@dataclass
class State:
    """What the autoscaler remembers between samples (mutated only by ``decide``'s caller)."""

    above_since: Optional[float] = None
    below_since: Optional[float] = None
    last_change: float = float("-inf")


@dataclass(frozen=True)
class Decision:
    action: Literal["keep", "scale", "to_zero", "from_zero"]
    rate: float = 0.0
    reason: str = ""
    state: State = field(default_factory=State)


def utilisation(policy: Policy, s: Sample) -> float:
    if s.ready_replicas <= 0:
        return float("inf") if s.in_flight > 0 else 0.0
    if policy.metric == "queue_delay":
        return s.queue_delay_s / policy.target
    return (s.in_flight / s.ready_replicas) / policy.target


def decide(policy: Policy, s: Sample, plan_rate: float, min_rate: float, state: State,
           scaled_to_zero: bool = False) -> Decision:
    """Pure: the decision for this sample, and the autoscaler state to keep."""
    st = State(state.above_since, state.below_since, state.last_change)
    if scaled_to_zero:
        if s.in_flight > 0 or s.arrivals_per_s > 0:
            return Decision("from_zero", max(min_rate, s.arrivals_per_s * HEADROOM), "a request arrived", st)
        return Decision("keep", 0.0, "idle at zero", st)
    if policy.scale_to_zero and s.in_flight == 0 and s.now - s.last_request_at >= policy.idle_seconds:
        return Decision("to_zero", 0.0, f"no request for {policy.idle_seconds:.0f} s", State(last_change=s.now))
    if policy.metric == "rate_only":
        u = s.arrivals_per_s / plan_rate if plan_rate > 0 else float("inf")
    else:
        u = utilisation(policy, s)
    if u > 1.0:
        st.below_since = None
        st.above_since = st.above_since if st.above_since is not None else s.now
        if s.now - st.above_since >= policy.scale_up_delay:
            base = max(plan_rate * min(u, 4.0), s.arrivals_per_s) if policy.metric != "rate_only" else s.arrivals_per_s
            new = max(min_rate, base * HEADROOM)
            if new > plan_rate * 1.05:
                return Decision("scale", new, f"utilisation {u:.2f} above 1 for {s.now - st.above_since:.0f} s",
                                State(last_change=s.now))
        return Decision("keep", plan_rate, f"utilisation {u:.2f}", st)
    if u < 0.5:
        st.above_since = None
        st.below_since = st.below_since if st.below_since is not None else s.now
        if s.now - st.below_since >= policy.scale_down_delay:
            want = s.arrivals_per_s * HEADROOM if policy.metric == "rate_only" else max(
                s.arrivals_per_s * HEADROOM, plan_rate * u * HEADROOM)
            new = max(min_rate, want)
            if new < plan_rate * 0.8:
                return Decision("scale", new, f"utilisation {u:.2f} below 0.5 for {s.now - st.below_since:.0f} s",
                                State(last_change=s.now))
        return Decision("keep", plan_rate, f"utilisation {u:.2f}", st)
    return Decision("keep", plan_rate, f"utilisation {u:.2f} in band", State(last_change=st.last_change))


# ---------------------------------------------------------------------- the pass
class Workflows(Protocol):
    """What the autoscaling pass needs of the workflow manager."""

    records: dict[str, WorkflowRecord]

    def spec(self, name: str) -> WorkflowSpec: ...
    def replica_views(self, rec: WorkflowRecord) -> list[dict]: ...
    def place(self, rec: WorkflowRecord, scale: float) -> Placement: ...
    def deploy(self, rec: WorkflowRecord, placement: Placement, autoscale: Autoscale) -> None: ...
    def idle(self, rec: WorkflowRecord, autoscale: Autoscale, message: str) -> None: ...


def policy_of(a: AutoscalingSpec) -> Policy:
    return Policy(metric=a.metric, target=a.target, min_replicas=a.min_replicas, max_replicas=a.max_replicas,
                  scale_up_delay=a.scale_up_delay, scale_down_delay=a.scale_down_delay,
                  scale_to_zero=a.scale_to_zero, idle_seconds=a.idle_seconds)


def base_rate(spec: WorkflowSpec) -> float:
    return sum(src.rate for src in spec.sources)


def current_scale(rec: WorkflowRecord) -> float:
    a = rec.deployment.autoscale
    return a.scale if a is not None else 1.0


class Autoscaler:
    def __init__(self, metrics=None, clock=time.monotonic, wall=time.time):
        self.metrics = metrics
        self._clock, self._wall = clock, wall
        self.arrivals: dict[str, collections.deque] = {}
        self.in_flight: dict[str, int] = {}
        self.last_request: dict[str, float] = {}
        self._state: dict[str, State] = {}
        self._cold: dict[str, tuple[float, set[str]]] = {}   # workflow -> (decided at, new replica ids)
        self.cold_starts: list[dict] = []
        self.ready_since: dict[str, float] = {}              # workflow -> when it last became ready

    # -- load, as the router sees it ------------------------------------------------------
    def request_started(self, name: str) -> None:
        now = self._clock()
        self.arrivals.setdefault(name, collections.deque()).append(now)
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.last_request[name] = now

    def request_finished(self, name: str) -> None:
        self.in_flight[name] = max(0, self.in_flight.get(name, 0) - 1)

    def arrival_rate(self, name: str, now: float) -> float:
        q = self.arrivals.get(name)
        if not q:
            return 0.0
        while q and now - q[0] > WINDOW_S:
            q.popleft()
        return len(q) / WINDOW_S

    # -- one pass over every workflow with a policy -----------------------------------------
    def sample(self, rec: WorkflowRecord, views: Sequence[dict], nodes: Mapping[str, NodeRecord],
               now: float) -> Sample:
        tasks = {v["task"] for v in views} or set(rec.plan.variants if rec.plan is not None else ())
        ready = min([sum(1 for v in views if v["task"] == t and v["state"] == "ready") for t in tasks] or [0])
        qd = 0.0
        used = {v["node_id"] for v in views}
        if used:
            # Little's law over the workflow's nodes: queued requests / arrival rate. (An
            # agent reports one queue per node; a node shared by workflows over-counts.)
            depths = [nodes[n].status.get("queue_depth", 0) for n in used if n in nodes]
            qd = sum(depths) / max(self.arrival_rate(rec.name, now), 1e-3)
        # Idle time counts from the last request, or from when the workflow became ready to serve
        # if that came later: a workflow still deploying (and not asked for anything) is not idle.
        seen = [t for t in (self.last_request.get(rec.name), self.ready_since.get(rec.name)) if t is not None]
        return Sample(now=now, arrivals_per_s=self.arrival_rate(rec.name, now),
                      in_flight=float(self.in_flight.get(rec.name, 0)), queue_delay_s=qd, ready_replicas=ready,
                      last_request_at=max(seen) if seen else now)

    def run(self, wm: Workflows, nodes: Mapping[str, NodeRecord], now: float) -> list[tuple[str, str]]:
        """Decide for every workflow that has a policy, and carry the decisions out. Returns the
        actions taken, as (workflow, action)."""
        done = []
        for name, rec in list(wm.records.items()):
            spec = wm.spec(name)
            if spec.autoscaling is None:
                continue
            base = base_rate(spec)
            d = decide(policy_of(spec.autoscaling), self.sample(rec, wm.replica_views(rec), nodes, now),
                       base * current_scale(rec), base * 0.05, self._state.get(name, State()), rec.state == "IDLE")
            self._state[name] = d.state
            if d.action in ("scale", "from_zero"):
                if self.rescale(wm, rec, spec, d.rate / base, d.reason):
                    done.append((name, d.action))
            elif d.action == "to_zero":
                self.to_zero(wm, rec, d.reason)
                done.append((name, d.action))
        return done

    def wake(self, wm: Workflows, rec: WorkflowRecord) -> None:
        """A request arrived for a workflow at zero: scale up now (the request waits)."""
        if rec.state == "IDLE":
            before = rec.deployment.autoscale.scale_before_zero if rec.deployment.autoscale else None
            self.rescale(wm, rec, wm.spec(rec.name), max(before if before is not None else 1.0, 0.05),
                         "a request arrived")

    def rescale(self, wm: Workflows, rec: WorkflowRecord, spec: WorkflowSpec, scale: float, reason: str) -> bool:
        """Re-plan ``rec`` for its declared rate times ``scale``, backing off (x0.75 when no plan
        fits the fleet, proportionally when a stage would exceed ``max_replicas``)."""
        cap = spec.autoscaling.max_replicas
        old_ids = {x.replica_id for x in rec.assignments}
        last = ""
        for _ in range(REPLAN_TRIES):
            try:
                placement = wm.place(rec, scale)
            except PlanInfeasible as exc:
                scale *= 0.75
                last = str(exc)
                continue
            worst = max(collections.Counter(a.task for a in placement.assignments).values() or [0])
            if worst > cap:
                scale *= cap / worst
                continue
            break
        else:
            log.warning("autoscale: no plan", extra=kv(workflow=rec.name, error=last[:200]))
            return False
        rate = base_rate(spec) * scale
        new_ids = {x.replica_id for x in placement.assignments} - old_ids
        if new_ids:
            self._cold[rec.name] = (self._clock(), new_ids)
        wm.deploy(rec, placement, Autoscale(scale=scale, rate=rate, reason=reason, decided_unix=self._wall()))
        log.info("autoscaled", extra=kv(workflow=rec.name, rate=round(rate, 3), replicas=len(placement.assignments),
                                         why=reason))
        return True

    def to_zero(self, wm: Workflows, rec: WorkflowRecord, reason: str) -> None:
        before = current_scale(rec) or 1.0
        wm.idle(rec, Autoscale(scale=0.0, rate=0.0, reason=reason, decided_unix=self._wall(),
                               scale_before_zero=before), f"scaled to zero: {reason}")
        log.info("scaled to zero", extra=kv(workflow=rec.name, why=reason))

    # -- what the status pass sees -----------------------------------------------------------
    def observe(self, rec: WorkflowRecord, views: Sequence[dict], state: str) -> None:
        """The workflow's replica views and state, every reconcile pass: when it became ready to
        serve (READY, and DEGRADED after it), and the cold starts of replicas a scale-up added."""
        if state in ("READY", "DEGRADED"):
            self.ready_since.setdefault(rec.name, self._clock())
        else:
            self.ready_since.pop(rec.name, None)
        self._track_cold_starts(rec, views)

    def _track_cold_starts(self, rec: WorkflowRecord, views: Sequence[dict]) -> None:
        """Record each replica added by a scale-up when its view first says ready."""
        pending = self._cold.get(rec.name)
        if not pending:
            return
        t0, ids = pending
        for v in views:
            if v["replica_id"] in ids and v["state"] == "ready":
                seconds = self._clock() - t0
                self.cold_starts.append({"workflow": rec.name, "replica": v["replica_id"], "node": v["node_name"],
                                         "seconds": seconds, "fetch": v["fetch_seconds"],
                                         "load": v["load_seconds"], "warmup": v["warmup_seconds"]})
                if self.metrics is not None:
                    self.metrics.cold_start.labels(rec.name).observe(seconds)
                ids.discard(v["replica_id"])
        if not ids:
            self._cold.pop(rec.name, None)

    def cold_starts_of(self, name: str, last: int = 50) -> list[dict]:
        return [c for c in self.cold_starts if c["workflow"] == name][-last:]
