"""Autoscaling: the pass that measures each workflow's load, asks :func:`~atoll.coordinator.
scaling.decide` what rate to plan for, and carries the decision out through the workflow manager.

Measured per workflow (not per node):

- arrivals, counted by whoever starts a request (gRPC ``Invoke`` and the OpenAI door call
  :meth:`Autoscaler.request_started` / :meth:`~Autoscaler.request_finished`): λ over the last
  ``STABLE_ARRIVALS`` arrivals, or the last ``STABLE_REACTIONS`` reaction times when fewer came
  (a short window when the load is high, a long one when it is low, so every estimate rests on
  about as many arrivals), and the arrivals in the last two reaction times, one by one;
- work per request: an exponentially weighted mean, per task, of each finished request's
  completion tokens over the task's declared ``completion_tokens`` (or, when it declares none,
  its ``max_tokens``, counted only above 1: answers shorter than the budget never plan below the
  declared profile); the workflow's is its largest task's;
- requests queued at the workflow's replicas: the agents report waiting requests per replica
  (``replica_queue_depth``); a node that does not is counted by its whole queue;
- reaction time ρ: the median of the last ``REACTION_SAMPLES`` replica starts, each from the
  replica first appearing in the plan to it serving, plus one decision interval.

Carrying a decision out: re-plan (in a planning worker process: :meth:`Workflows.place` is a
coroutine, so the coordinator's event loop answers RPCs while a large workflow is planned; one
placement at a time, :meth:`Workflows.placing`, so each plans on a fleet no other is about to
take) with the churn penalty, so replicas that serve well stay and the
extra capacity goes where the planner finds it cheapest; back off to 75% of the rate when no plan
fits the fleet, and proportionally when a stage would exceed ``max_replicas``. Every decision
that changes something is logged with its inputs and reason and kept (the last
``KEEP_DECISIONS`` per workflow) for ``atoll status``; every decision, kept or not, updates the
``atoll_autoscaler_*`` metrics. Cold starts are timed from a scale-up decision to each new
replica serving.
"""

from __future__ import annotations

import collections
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import AsyncContextManager, Collection, Mapping, Optional, Protocol, Sequence

from atoll.coordinator.placement import Placement
from atoll.coordinator.records import Autoscale, NodeRecord, WorkflowRecord
from atoll.coordinator.scaling import PASS_S, REACTION_DEFAULT_S, Decision, Sample, State, decide, policy_of
from atoll.core.errors import PlanInfeasible
from atoll.core.logs import kv
from atoll.specs.workflow import WorkflowSpec

log = logging.getLogger("atoll.coordinator")

STABLE_ARRIVALS = 128         # λ over the last 128 arrivals ...
STABLE_REACTIONS = 4.0        # ... or the last 4ρ when fewer came
WORK_WEIGHT = 1.0 / 16        # weight of one finished request in the work per request
REACTION_SAMPLES = 8          # ρ: the median of the last 8 replica starts
KEEP_DECISIONS = 32           # decisions kept per workflow
KEEP_COLD_STARTS = 50         # cold starts kept per workflow
REPLAN_TRIES = 4
MAX_ARRIVALS = 4096           # arrival times kept per workflow


@dataclass(frozen=True)
class DecisionRecord:
    """One decision as ``atoll status`` and the metrics show it."""

    unix: float
    action: str                       # up | down | to_zero | from_zero | keep
    rate: float                       # the rate planned for after it
    previous_rate: float
    reason: str
    signals: Mapping[str, float]      # scaling.Signals, as numbers
    outcome: str = ""                 # what carrying it out did


@dataclass
class _Tracked:
    """What the pass keeps per workflow."""

    arrivals: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_ARRIVALS))
    in_flight: int = 0
    last_request: Optional[float] = None
    ready_since: Optional[float] = None          # when it last became ready to serve
    work: dict = field(default_factory=dict)     # task -> work per request
    state: State = field(default_factory=State)
    first_seen: dict = field(default_factory=dict)       # replica id -> when it appeared in the plan
    starts: collections.deque = field(default_factory=lambda: collections.deque(maxlen=REACTION_SAMPLES))
    cold: Optional[tuple[float, set]] = None     # (scale-up decided at, its new replica ids)
    cold_starts: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEEP_COLD_STARTS))
    decisions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=KEEP_DECISIONS))
    latest: Optional[DecisionRecord] = None


def rate_over(times: Sequence[float], now: float, count: int, longest: float) -> tuple[float, float]:
    """(arrivals/s, window s) over the last ``count`` arrival times, or over the last ``longest``
    seconds when fewer than ``count`` fall in them."""
    n = 0
    oldest = now
    for t in reversed(times):
        if now - t > longest or n == count:
            break
        n += 1
        oldest = t
    window = now - oldest if n == count and now > oldest else longest
    return n / window, window


def count_between(times: Sequence[float], start: float, end: float) -> int:
    """How many of the (sorted) ``times`` fall in (start, end]."""
    n = 0
    for t in reversed(times):
        if t <= start:
            break
        if t <= end:
            n += 1
    return n


def arrival_signals(arrivals: Sequence[float], now: float, rho: float) -> dict[str, float]:
    """The arrival fields of a :class:`Sample`: the stable rate (over the last
    ``STABLE_ARRIVALS`` arrivals, or the last ``STABLE_REACTIONS`` ρ when fewer came) and the
    counts in the last ρ, the ρ before it and the last pass."""
    lam, _ = rate_over(arrivals, now, STABLE_ARRIVALS, STABLE_REACTIONS * rho)
    return dict(arrivals_per_s=lam, recent=count_between(arrivals, now - rho, now),
                previous=count_between(arrivals, now - 2 * rho, now - rho),
                last_pass=count_between(arrivals, now - PASS_S, now))


def work_ratio(spec: WorkflowSpec, tokens: Mapping[str, float]) -> float:
    """Work per request of a workflow: the largest task's, where a task's is its mean completion
    tokens (``tokens[task]``) over its declared completion tokens (at least 1 when it declares
    only ``max_tokens``); 1 for a workflow with no such measurement."""
    out = []
    for t in spec.tasks:
        if t.name not in tokens or t.kind != "llm":
            continue
        declared = t.completion_tokens or t.max_tokens
        r = tokens[t.name] / max(declared, 1e-9)
        out.append(r if t.completion_tokens else max(1.0, r))
    return max(out, default=1.0)


class Workflows(Protocol):
    """What the autoscaling pass needs of the workflow manager."""

    records: dict[str, WorkflowRecord]

    def spec(self, name: str) -> WorkflowSpec: ...
    def replica_views(self, rec: WorkflowRecord) -> list[dict]: ...
    def placing(self, tenant: str | None = None) -> AsyncContextManager: ...
    async def place(self, rec: WorkflowRecord, scale: float, unavailable: Collection[str] = ()) -> Placement: ...
    def deploy(self, rec: WorkflowRecord, placement: Placement, autoscale: Autoscale) -> None: ...
    def idle(self, rec: WorkflowRecord, autoscale: Autoscale, message: str) -> None: ...


def base_rate(spec: WorkflowSpec) -> float:
    return sum(src.rate for src in spec.sources)


def current_scale(rec: WorkflowRecord) -> float:
    a = rec.deployment.autoscale
    return a.scale if a is not None else 1.0


class PassTimer:
    """When the next autoscaling pass is due: PASS_S after the last one started, or at once when
    a heartbeat stream ended since (``closed``: the registry's count of ended streams), so the
    replicas of an agent that died are replaced without waiting out the second."""

    def __init__(self, closed: int = 0):
        self.last = float("-inf")
        self.closed = closed

    def due(self, now: float, closed: int) -> bool:
        return now - self.last >= PASS_S or closed != self.closed

    def started(self, now: float, closed: int) -> None:
        self.last, self.closed = now, closed


class Autoscaler:
    def __init__(self, metrics=None, clock=time.monotonic, wall=time.time):
        self.metrics = metrics
        self._clock, self._wall = clock, wall
        self._wf: dict[str, _Tracked] = {}
        self._streams: set[str] = set()       # nodes whose heartbeat stream this coordinator has seen open

    def _of(self, name: str) -> _Tracked:
        return self._wf.setdefault(name, _Tracked())

    # -- load, as whoever starts a request sees it ----------------------------------------
    def request_started(self, name: str) -> None:
        """A request for workflow ``name`` started (call :meth:`request_finished` when it ends)."""
        w = self._of(name)
        now = self._clock()
        w.arrivals.append(now)
        w.in_flight += 1
        w.last_request = now

    def request_finished(self, name: str, completion_tokens: Optional[Mapping[str, int]] = None) -> None:
        """The request ended; ``completion_tokens`` (task -> tokens generated) when it succeeded."""
        w = self._of(name)
        w.in_flight = max(0, w.in_flight - 1)
        for task, n in (completion_tokens or {}).items():
            if n > 0:
                old = w.work.get(task)
                w.work[task] = float(n) if old is None else old + WORK_WEIGHT * (n - old)

    def reaction_s(self, name: str) -> float:
        """ρ: the median replica start of the workflow, plus one decision interval."""
        starts = self._of(name).starts
        return (statistics.median(starts) if starts else REACTION_DEFAULT_S) + PASS_S

    # -- one pass over every workflow with a policy -----------------------------------------
    def sample(self, rec: WorkflowRecord, spec: WorkflowSpec, views: Sequence[dict],
               nodes: Mapping[str, NodeRecord], now: float) -> Sample:
        w = self._of(rec.name)
        rho = self.reaction_s(rec.name)
        tasks = {v["task"] for v in views} or set(rec.plan.variants if rec.plan is not None else ())
        per_task = [(sum(1 for v in views if v["task"] == t and v["state"] == "ready" and v["node_state"] == "READY"),
                     sum(1 for v in views if v["task"] == t)) for t in sorted(tasks)]
        ready, planned = min(per_task, default=(0, 0))
        # Idle time counts from the last request, or from when the workflow became ready to serve
        # if that came later: a workflow still deploying (and not asked for anything) is not idle.
        seen = [t for t in (w.last_request, w.ready_since) if t is not None]
        return Sample(now=now, **arrival_signals(w.arrivals, now, rho),
                      work_per_request=work_ratio(spec, w.work), queued=float(queued(rec, nodes)),
                      in_flight=float(w.in_flight), ready_replicas=ready, planned_replicas=planned,
                      last_request_at=max(seen) if seen else now, reaction_s=rho)

    async def run(self, wm: Workflows, nodes: Mapping[str, NodeRecord], now: float,
            connected: Optional[Collection[str]] = None) -> list[tuple[str, str]]:
        """Decide for every workflow that has a policy, and carry the decisions out. ``connected``:
        the nodes with an open heartbeat stream. Returns the actions taken, as (workflow, action)."""
        if connected is not None:
            connected = set(connected)
            self._streams = (self._streams | connected) & set(nodes)     # nodes that left are forgotten
        # nodes whose heartbeats stopped, whoever's replicas they hold: no plan of this pass goes
        # there (they stay READY, in the fleet, until SUSPECT; a re-plan for a workflow's own
        # lost node would otherwise put a replica on another workflow's, or on one it lost a
        # pass before, and replace it again on the next pass)
        stopped = at_risk_nodes(nodes, connected, self._streams)
        done = []
        for gone in set(self._wf) - set(wm.records):     # deleted workflows
            del self._wf[gone]
        for name, rec in list(wm.records.items()):
            spec = wm.spec(name)
            if spec.autoscaling is None:
                continue
            w = self._of(name)
            base = base_rate(spec)
            plan_rate = base * current_scale(rec)
            d = decide(policy_of(spec.autoscaling), self.sample(rec, spec, wm.replica_views(rec), nodes, now),
                       plan_rate, base * 0.05, w.state, rec.state == "IDLE")
            w.state = d.state
            risky = holding(rec, stopped)
            if risky and rec.state != "IDLE":
                # replacing never holds a scale-up back: a storm on a rising load gets both at once
                up = d if d.action == "scale" and d.rate > plan_rate else None
                if await self.replace(wm, rec, spec, risky, nodes, up, d.signals.demand, stopped):
                    done.append((name, "replace"))
                continue
            outcome = ""
            if d.action in ("scale", "from_zero"):
                outcome = await self.rescale(wm, rec, spec, d.rate / base, f"{d.direction}: {d.reason}",
                                             unavailable=stopped)
            elif d.action == "to_zero":
                self.to_zero(wm, rec, d.reason)
                outcome = "no replica"
            self._record(name, d, plan_rate, outcome)
            if d.action != "keep" and outcome and not outcome.startswith("no plan"):
                done.append((name, d.action))
        return done

    async def replace(self, wm: Workflows, rec: WorkflowRecord, spec: WorkflowSpec, risky: set[str],
                      nodes: Mapping[str, NodeRecord], up: Optional[Decision] = None, demand: float = 0.0,
                      stopped: Collection[str] = ()) -> bool:
        """Re-plan ``rec`` without the nodes in ``risky`` (their heartbeat stream closed or they
        turned SUSPECT): replacements start now rather than when the nodes are declared LOST. At
        its planned rate plus the surge (:func:`surge`: the backlog the lost replicas' share of
        ``demand`` builds while replacements start, to drain as fast as it came), or at ``up``'s
        rate (a scale-up decided on the same pass) when that is higher; on none of the ``stopped``
        nodes either (every node whose heartbeats stopped). Returns whether a plan was deployed."""
        names = sorted(nodes[n].name if n in nodes else n[:8] for n in risky)
        n = sum(1 for a in rec.assignments if a.node_id in risky)
        reason = (f"replace: {n} replica(s) on {', '.join(names)}, whose heartbeats stopped (stream closed or "
                  "SUSPECT); re-planned without them")
        base = base_rate(spec)
        previous = base * current_scale(rec)
        extra = surge(rec, risky, previous, demand)
        rate = previous + extra
        signals = {"at_risk": float(n), "plan_rate": round(previous, 4), "surge": round(extra, 4)}
        if extra > 0:
            reason += (f", at {rate:.2f} req/s: + {extra:.2f}/s for the backlog that builds on the survivors "
                       "until the replacements serve")
        if up is not None and up.rate > rate:
            rate = up.rate
            reason += f", and {up.direction}: {up.reason}"
            signals = {**up.signals.as_dict(), **signals}
        outcome = await self.rescale(wm, rec, spec, rate / base, reason, unavailable=set(risky) | set(stopped))
        if outcome.startswith("no plan"):
            rate = previous
        r = DecisionRecord(unix=self._wall(), action="replace", rate=rate, previous_rate=previous, reason=reason,
                           signals=signals, outcome=outcome)
        self._keep(rec.name, r)
        return not outcome.startswith("no plan")

    async def wake(self, wm: Workflows, rec: WorkflowRecord) -> None:
        """A request arrived for a workflow at zero: scale up now (the request waits)."""
        if rec.state == "IDLE":
            before = rec.deployment.autoscale.scale_before_zero if rec.deployment.autoscale else None
            await self.rescale(wm, rec, wm.spec(rec.name), max(before if before is not None else 1.0, 0.05),
                         "a request arrived")

    async def rescale(self, wm: Workflows, rec: WorkflowRecord, spec: WorkflowSpec, scale: float, reason: str,
                      unavailable: Collection[str] = ()) -> str:
        """Re-plan ``rec`` for its declared rate times ``scale`` (without the ``unavailable``
        nodes), backing off (x0.75 when no plan fits the fleet, proportionally when a stage would
        exceed ``max_replicas``), and deploy the plan. Placements take turns by tenant
(``wm.placing(tenant)``): this one in the turn of the workflow's tenant, so one tenant's
autoscaled workflows, however slow to plan, delay another tenant's placements by at most one;
        a workflow deleted or changed by someone else after the decision (while this waited its
        turn or was planned) keeps what it has: the next pass decides again. Returns what it did, in words ("no plan: ..." when nothing fitted or it was
        superseded)."""
        cap = spec.autoscaling.max_replicas
        generation = rec.generation          # what the decision saw
        async with wm.placing(rec.tenant):
            old_ids = {x.replica_id for x in rec.assignments}
            last = ""
            for _ in range(REPLAN_TRIES):
                try:
                    placement = await (wm.place(rec, scale, unavailable) if unavailable else wm.place(rec, scale))
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
                return f"no plan: {last[:200] or f'more than max_replicas {cap}'}"
            if wm.records.get(rec.name) is not rec or rec.generation != generation:
                return "no plan: superseded (the workflow changed while it was planned)"
            rate = base_rate(spec) * scale
            new_ids = {x.replica_id for x in placement.assignments} - old_ids
            if new_ids:
                self._of(rec.name).cold = (self._clock(), new_ids)
            wm.deploy(rec, placement, Autoscale(scale=scale, rate=rate, reason=reason, decided_unix=self._wall()))
        return (f"planned {rate:.2f} req/s: {len(placement.assignments)} replica(s), "
                f"${placement.plan.total_cost_per_hour:.3f}/h")

    def to_zero(self, wm: Workflows, rec: WorkflowRecord, reason: str) -> None:
        before = current_scale(rec) or 1.0
        wm.idle(rec, Autoscale(scale=0.0, rate=0.0, reason=reason, decided_unix=self._wall(),
                               scale_before_zero=before), f"scaled to zero: {reason}")

    # -- the decision log ----------------------------------------------------------------------
    def _record(self, name: str, d: Decision, plan_rate: float, outcome: str) -> None:
        action = "keep" if d.action == "keep" else d.direction
        rate = d.rate if d.action != "keep" else plan_rate
        if outcome.startswith("no plan"):
            rate = plan_rate
        r = DecisionRecord(unix=self._wall(), action=action, rate=rate, previous_rate=plan_rate, reason=d.reason,
                           signals=d.signals.as_dict(), outcome=outcome)
        self._keep(name, r)

    def _keep(self, name: str, r: DecisionRecord) -> None:
        """Log, keep and export one decision."""
        w = self._of(name)
        w.latest = r
        if r.action != "keep":
            w.decisions.append(r)
            log.info("autoscale decision", extra=kv(workflow=name, action=r.action, rate=round(r.rate, 3),
                                                    previous=round(r.previous_rate, 3), why=r.reason,
                                                    outcome=r.outcome, **r.signals))
        else:
            log.debug("autoscale decision", extra=kv(workflow=name, action=r.action, why=r.reason))
        if self.metrics is not None:
            self.metrics.autoscale_decisions.labels(name, r.action).inc()
            for k, v in r.signals.items():
                self.metrics.autoscale_signal.labels(name, k).set(v)

    def decisions_of(self, name: str, last: int = 10) -> list[DecisionRecord]:
        """The last decisions that changed something, oldest first, and the latest decision if it
        kept the plan."""
        w = self._wf.get(name)
        if w is None:
            return []
        out = list(w.decisions)[-last:]
        if w.latest is not None and w.latest.action == "keep":
            out.append(w.latest)
        return out

    # -- what the status pass sees -----------------------------------------------------------
    def observe(self, rec: WorkflowRecord, views: Sequence[dict], state: str) -> None:
        """The workflow's replica views and state, every reconcile pass: when it became ready to
        serve (READY, and DEGRADED after it), how long replicas take to start, and the cold
        starts of replicas a scale-up added."""
        w = self._of(rec.name)
        now = self._clock()
        if state in ("READY", "DEGRADED"):
            if w.ready_since is None:
                w.ready_since = now
        else:
            w.ready_since = None
        ids = set()
        for v in views:
            rid = v["replica_id"]
            ids.add(rid)
            if rid not in w.first_seen:
                w.first_seen[rid] = None if v["state"] == "ready" else now     # ready already: not timed
            elif v["state"] == "ready" and w.first_seen[rid] is not None:
                w.starts.append(now - w.first_seen[rid])
                w.first_seen[rid] = None
        for rid in set(w.first_seen) - ids:
            del w.first_seen[rid]
        self._track_cold_starts(rec, views)

    def _track_cold_starts(self, rec: WorkflowRecord, views: Sequence[dict]) -> None:
        """Record each replica added by a scale-up when its view first says ready."""
        w = self._of(rec.name)
        if not w.cold:
            return
        t0, ids = w.cold
        for v in views:
            if v["replica_id"] in ids and v["state"] == "ready":
                seconds = self._clock() - t0
                w.cold_starts.append({"workflow": rec.name, "replica": v["replica_id"], "node": v["node_name"],
                                         "seconds": seconds, "fetch": v["fetch_seconds"],
                                         "load": v["load_seconds"], "warmup": v["warmup_seconds"]})
                if self.metrics is not None:
                    self.metrics.cold_start.labels(rec.name).observe(seconds)
                ids.discard(v["replica_id"])
        if not ids:
            w.cold = None

    def cold_starts_of(self, name: str, last: int = KEEP_COLD_STARTS) -> list[dict]:
        w = self._wf.get(name)
        return list(w.cold_starts)[-last:] if w is not None else []


def surge(rec: WorkflowRecord, risky: Collection[str], plan_rate: float, demand: float) -> float:
    """Extra req/s to plan while replacing the replicas on ``risky`` nodes: the demand those
    replicas carried (the largest share of any task's planned rate they held, times the demand
    up to the planned rate). Until the replacements serve (ρ), that share of the arrivals queues
    on the survivors; planning it once more for a while drains that backlog in about another ρ,
    instead of the survivors' queues growing until a later pass sees them. The next passes take
    it back down once the queues are gone (the usual hysteresis)."""
    held: dict[str, float] = {}
    total: dict[str, float] = {}
    for a in rec.assignments:
        total[a.task] = total.get(a.task, 0.0) + max(a.weight, 0.0)
        if a.node_id in risky:
            held[a.task] = held.get(a.task, 0.0) + max(a.weight, 0.0)
    share = max((held[t] / total[t] for t in held if total.get(t, 0.0) > 0), default=0.0)
    return min(share, 1.0) * min(max(demand, 0.0), plan_rate)


def at_risk_nodes(nodes: Mapping[str, NodeRecord], connected: Optional[set[str]], seen_open: set[str]) -> set[str]:
    """Every node whose heartbeats stopped and that is not LOST or draining yet: SUSPECT, or
    (when ``connected`` is known) its stream was seen open and is closed now."""
    return {n for n, node in nodes.items() if node.state not in ("LOST", "DRAINING")
            and (node.state == "SUSPECT" or (connected is not None and n in seen_open and n not in connected))}


def at_risk(rec: WorkflowRecord, nodes: Mapping[str, NodeRecord], connected: Optional[set[str]],
            seen_open: set[str]) -> set[str]:
    """The nodes of ``rec``'s replicas whose heartbeats stopped (:func:`at_risk_nodes`), as when an
    agent's process dies. LOST nodes are re-planned by the workflow manager."""
    return holding(rec, at_risk_nodes(nodes, connected, seen_open))


def holding(rec: WorkflowRecord, node_ids: Collection[str]) -> set[str]:
    """Those of ``node_ids`` that hold one of ``rec``'s replicas."""
    return {a.node_id for a in rec.assignments if a.node_id in node_ids}


def queued(rec: WorkflowRecord, nodes: Mapping[str, NodeRecord]) -> int:
    """Requests waiting at the workflow's replicas: each node's per-replica report, or its whole
    queue when it reports none per replica."""
    total = 0
    by_node: dict[str, list[str]] = {}
    for a in rec.assignments:
        by_node.setdefault(a.node_id, []).append(a.replica_id)
    for node_id, rids in by_node.items():
        node = nodes.get(node_id)
        if node is None or node.state not in ("READY", "SUSPECT", "DRAINING"):
            continue
        per = node.status.get("replica_queue_depth")
        if per:
            total += sum(int(per.get(r, 0)) for r in rids)
        else:
            total += int(node.status.get("queue_depth", 0))
    return total
