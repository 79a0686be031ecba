"""Workflows: the coordinator's records of submitted workflows, and the thin loop that runs each
step on them. Each step lives in its own module; :class:`WorkflowManager` keeps the records,
writes them to the store before anything is acknowledged, and calls the steps in order:

1. admission (:mod:`~atoll.coordinator.admission`): is the spec one we can serve?
2. placement (:mod:`~atoll.coordinator.placement` over a :mod:`~atoll.coordinator.fleet`
   snapshot): the typed plan and the replicas on concrete nodes;
3. reconcile (:mod:`~atoll.coordinator.deploy`): send each node its desired set when it reports
   another generation;
4. status (:mod:`~atoll.coordinator.status`): replica views and the workflow's state;
5. routing (:mod:`~atoll.coordinator.routing`): the routing table, rebuilt when a plan or a
   replica's state changes, never per request;
6. autoscaling (:mod:`~atoll.coordinator.autoscaler`): re-plan for the measured load;
7. failures: a node LOST or DRAINING re-plans the workflows it served (retried every 5 s while
   no plan fits), a new READY node retries them, a price change re-plans every deployed one.

Everything runs on the coordinator's event loop thread, except the work that takes CPU time:
a submit's parsing and validation, and a submit's or a re-plan's placement, run in a planning
worker process (``planning.PlanWorkers``, with a time and memory budget), so the loop keeps
answering RPCs meanwhile; so do the autoscaler's re-plans (:meth:`WorkflowManager.place`).
Placements that commit (submits, re-plans, the autoscaler's) take turns (``_placing``, a
:class:`~atoll.coordinator.fairness.FairLock`): each plans on a snapshot no other placement is
about to change, and the turns go round the tenants (the coordinator's own re-plans and
autoscaling count as one more), so one tenant's many deploying submits delay another tenant's by
at most the placement under way. A wake (a request for a workflow at zero) places in its
workflow's tenant's turn, at most ``WAITING_PER_TENANT`` of one tenant's at once; the re-plans of
workflows that lost a node (:data:`~atoll.coordinator.fairness.REPLAN`) go before every waiting
placement. Dry runs plan without waiting their turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import AsyncContextManager, Collection, Mapping

from atoll.coordinator.admission import admit, check_serving, parse_and_dump, source_name
from atoll.coordinator.auth import visible
from atoll.coordinator.autoscaler import Autoscaler, current_scale
from atoll.coordinator.deploy import Deployer
from atoll.coordinator.fairness import REPLAN, SYSTEM, FairLock
from atoll.coordinator.fleet import FleetSnapshot, measured_profiles, snapshot
from atoll.coordinator.placement import Placement, place
from atoll.coordinator.planning import WAITING_PER_TENANT, PlanWorkers
from atoll.coordinator.records import Autoscale, WorkflowRecord
from atoll.coordinator.routing import build_route, build_table
from atoll.coordinator.stages import WorkflowServing, serving_of
from atoll.coordinator.status import profiles_view, replica_views, workflow_state
from atoll.core.errors import (AlreadyExists, AtollError, FailedPrecondition, InvalidArgument, NotFound,
                               ResourceExhausted)
from atoll.core.logs import kv
from atoll.specs.routing import Route, RoutingTable
from atoll.specs.workflow import WorkflowSpec

log = logging.getLogger("atoll.coordinator")

RETRY_REPLAN_S = 5.0
# Every host holds the route of every workflow it may run, prompt templates and stop strings
# included, in one routing state sent down its heartbeat stream, and gRPC refuses a message past
# 16 MiB: a tenant's ordinary workflows (45 tasks with 20,000-character templates each) broke
# every node's stream at once when their sum passed it. What one tenant and all tenants together
# add to it is bounded at submit (RESOURCE_EXHAUSTED past either), and so is the number of
# workflows of one tenant (scaled to zero, a workflow holds no node but keeps its route).
MAX_WORKFLOWS_PER_TENANT = 64
MAX_ROUTE_TEXT_PER_TENANT = 1 << 20
MAX_ROUTE_TEXT = 8 << 20


def route_text(spec: WorkflowSpec) -> int:
    """Bytes of text ``spec``'s route carries to every host: its tasks' prompt templates, stop
    strings and names (and a few hundred bytes of settings a stage)."""
    return sum(len(t.prompt.encode()) + sum(len(x.encode()) for x in t.stop) + len(t.name) + 256 for t in spec.tasks)
# Price changes start a round of re-plans of every deployed workflow at most this often (any
# number of nodes re-pricing themselves meanwhile: one round).
PRICE_REPLAN_S = 5.0


class WorkflowManager:
    def __init__(self, store, registry, metrics=None, blobs=None, planner: PlanWorkers | None = None):
        """``planner``: the worker processes placements run in (None: inline, for tests)."""
        self.store = store
        self.planner = planner
        self._placing = FairLock(WAITING_PER_TENANT)
        self.registry = registry
        self.metrics = metrics
        self.blobs = blobs
        self.records: dict[str, WorkflowRecord] = {r.name: r for r in store.list_workflows()}
        self.deployer = Deployer(registry)
        self.autoscaler = Autoscaler(metrics)
        self._specs: dict[str, tuple[WorkflowSpec, WorkflowServing]] = {}
        self._replan: set[str] = set()
        self._price_changed = False                        # a node's price changed since the last price re-plan
        self._price_replanned = -math.inf                  # when (monotonic) price changes last started re-plans
        self._retry_at: dict[str, float] = {}              # workflow -> next re-plan attempt
        self._waking: dict[str, asyncio.Task] = {}         # workflow -> its wake (scale from zero) under way
        self._changes = 0                                  # bumps on every change of a record
        self._table: tuple[tuple[int, int], RoutingTable] | None = None
        registry.add_listener(self._on_transition)
        registry.add_price_listener(self._on_price)

    # ------------------------------------------------------------------ specs
    def parse(self, spec_yaml: str, filename: str, tenant: str | None = None) -> WorkflowSpec:
        return admit(spec_yaml, filename, tenant, self.blobs.info if self.blobs is not None else None)

    def _loaded(self, rec: WorkflowRecord) -> tuple[WorkflowSpec, WorkflowServing]:
        if rec.name not in self._specs:
            spec = self.parse(rec.spec_yaml, rec.name)
            self._specs[rec.name] = (spec, serving_of(spec))
        return self._specs[rec.name]

    def spec(self, name: str) -> WorkflowSpec:
        return self._loaded(self.get(name))[0]

    def serving(self, name: str) -> WorkflowServing:
        return self._loaded(self.get(name))[1]

    # ------------------------------------------------------------------ placement
    def fleet(self, name: str, unavailable: Collection[str] = ()) -> FleetSnapshot:
        """The READY nodes that no workflow other than ``name`` holds, less ``unavailable``, with
        ``name``'s measured profiles."""
        taken = {a.node_id for other, r in self.records.items() if other != name for a in r.assignments}
        return snapshot(self.registry.nodes.values(), taken | set(unavailable),
                        measured_profiles(self.store.list_profiles(), name))

    def placing(self, tenant: str | None = None) -> AsyncContextManager[None]:
        """Held while a placement that will commit is planned and committed (one at a time; the
        waiters take turns by tenant, ``tenant`` this one's; by default the coordinator's own).
        The autoscaler's placements, wakes included, take their workflow's tenant's turn: a wake
        is a placement a user key starts with one request, and counted as the coordinator's, one
        tenant's wakes all queued in that one turn, ahead of the re-plans after a node loss."""
        return self._placing.hold(SYSTEM if tenant is None else tenant)

    async def place(self, rec: WorkflowRecord, scale: float, unavailable: Collection[str] = ()) -> Placement:
        """A new placement of a deployed workflow for its declared rate times ``scale``, on the
        fleet less the ``unavailable`` nodes (replicas at risk), in a planning worker: the
        autoscaler's call (it holds :meth:`placing`, so it goes first in its planning turn)."""
        spec, serving = self._loaded(rec)
        return await self._off_loop(place, rec.name, spec, serving, self.fleet(rec.name, unavailable),
                                    on_behalf_of=rec.tenant, first=True, previous=rec.assignments, scale=scale)

    async def _off_loop(self, fn, *args, on_behalf_of: str = SYSTEM, first: bool = False, **kw):
        """``fn(*args, **kw)`` in a planning worker when there is one (else here), in
        ``on_behalf_of``'s turn (a tenant; by default the coordinator's own; ``first``: ahead of
        that tenant's other planning calls)."""
        if self.planner is None:
            return fn(*args, **kw)
        return await self.planner.run(fn, *args, on_behalf_of=on_behalf_of, first=first, **kw)

    async def _place(self, name: str, spec: WorkflowSpec, serving: WorkflowServing, on_behalf_of: str = SYSTEM,
                     first: bool = False, **kw) -> Placement:
        """``place`` on the fleet as it is now, in a planning worker when there is one. A
        placement that holds the placement lock goes ``first`` in its tenant's planning queue, so
        the lock never waits behind that tenant's own dry runs."""
        return await self._off_loop(place, name, spec, serving, self.fleet(name), on_behalf_of=on_behalf_of,
                                    first=first, **kw)

    def _commit(self, rec: WorkflowRecord, p: Placement, autoscale: Autoscale | None) -> None:
        rec.plan, rec.assignments = p.plan, p.assignments
        rec.deployment = dataclasses.replace(p.deployment, autoscale=autoscale)
        rec.generation += 1
        rec.updated = time.time()
        self._save(rec)
        self._export_plan(rec)

    def deploy(self, rec: WorkflowRecord, p: Placement, autoscale: Autoscale) -> None:
        """Apply an autoscaling decision's placement (a workflow at zero starts deploying)."""
        if rec.state == "IDLE":
            rec.state = "DEPLOYING"
        self._commit(rec, p, autoscale)
        self.reconcile()

    def idle(self, rec: WorkflowRecord, autoscale: Autoscale, message: str) -> None:
        """Scale to zero: no replica anywhere; the plan stays for the wake-up."""
        rec.deployment = dataclasses.replace(rec.deployment, autoscale=autoscale)
        rec.assignments = ()
        rec.generation += 1
        rec.state, rec.message, rec.updated = "IDLE", message, time.time()
        self._save(rec)
        self.reconcile()

    def _save(self, rec: WorkflowRecord) -> None:
        self.store.put_workflow(rec)
        self._changes += 1

    # ------------------------------------------------------------------ client calls
    async def submit(self, spec_yaml: str, filename: str, dry_run: bool = False, tenant: str = "") -> WorkflowRecord:
        spec, text = await self._off_loop(parse_and_dump, spec_yaml, filename, on_behalf_of=tenant)
        check_serving(spec, source_name(filename), tenant, self.blobs.info if self.blobs is not None else None)
        self._check_free(spec.name, dry_run)
        self._check_room(spec, tenant)
        serving = serving_of(spec)
        if dry_run:
            return self._record(spec, text, await self._place(spec.name, spec, serving, tenant), tenant, "PLANNED")
        async with self.placing(tenant):
            p = await self._place(spec.name, spec, serving, tenant, first=True)
            self._check_free(spec.name, dry_run)           # another submit may have taken the name meanwhile
            self._check_room(spec, tenant)                 # ... or the room
            return self._deploy_new(spec, text, serving, p, tenant)

    def _check_room(self, spec: WorkflowSpec, tenant: str) -> None:
        """The tenant's workflows and the text every host's routing state carries stay within
        their bounds (above) with this one added."""
        mine = [r for r in self.records.values() if r.tenant == tenant]
        if len(mine) >= MAX_WORKFLOWS_PER_TENANT:
            raise ResourceExhausted(f"tenant {tenant or '(none)'!r} has {len(mine)} workflows, the most one tenant may "
                                    "have", hint="delete workflows you no longer use")
        new = route_text(spec)
        own = sum(self._route_text(r) for r in mine) + new
        if own > MAX_ROUTE_TEXT_PER_TENANT:
            raise ResourceExhausted(f"tenant {tenant or '(none)'!r}'s workflows would carry {own} bytes of prompt templates "
                                    f"and stop strings to every host, more than {MAX_ROUTE_TEXT_PER_TENANT}",
                                    hint="shorten the templates, or delete workflows you no longer use")
        total = sum(self._route_text(r) for r in self.records.values()) + new
        if total > MAX_ROUTE_TEXT:
            raise ResourceExhausted(f"the fleet's workflows would carry {total} bytes of prompt templates and stop "
                                    f"strings to every host, more than {MAX_ROUTE_TEXT}",
                                    hint="ask an admin to delete workflows no longer used")

    def _route_text(self, rec: WorkflowRecord) -> int:
        """``route_text`` of a record's spec (parsed once: the routing table parses every one)."""
        try:
            return route_text(self._loaded(rec)[0])
        except AtollError:              # a spec that no longer loads has no route either
            return 0

    def _check_free(self, name: str, dry_run: bool) -> None:
        """Workflow names are one namespace for every tenant. A workflow the caller may see holds
        its name against a new submit (a dry run plans its replacement: that workflow's nodes and
        measured profiles count). One the caller may not see (another tenant's) holds it against
        a dry run too, before any planning, and the answer says only that the name is not
        available: never whose it is, nor anything of that workflow."""
        rec = self.records.get(name)
        if rec is None:
            return
        if not visible(rec.tenant):
            raise AlreadyExists(f"workflow name {name!r} is not available",
                                hint="workflow names are shared by all tenants: pick another name")
        if not dry_run:
            raise AlreadyExists(f"workflow name {name!r} is taken", hint="pick another name, or delete yours first")

    @staticmethod
    def _record(spec: WorkflowSpec, text: str, p: Placement, tenant: str, state: str) -> WorkflowRecord:
        now = time.time()
        return WorkflowRecord(name=spec.name, spec_yaml=text, state=state,
                              message="waiting for replicas", plan=p.plan, assignments=p.assignments,
                              generation=1, created=now, updated=now, tenant=tenant, deployment=p.deployment)

    def _deploy_new(self, spec: WorkflowSpec, text: str, serving: WorkflowServing, p: Placement,
                    tenant: str) -> WorkflowRecord:
        rec = self._record(spec, text, p, tenant, "DEPLOYING")
        self.store.put_workflow(rec)            # durable before we acknowledge
        self.records[rec.name] = rec
        self._specs[rec.name] = (spec, serving)
        self._changes += 1
        self._export_plan(rec)
        log.info("workflow submitted", extra=kv(workflow=rec.name, cost=round(p.plan.total_cost_per_hour, 6),
                                                 replicas=len(p.assignments)))
        self.reconcile()
        return rec

    def get(self, name: str) -> WorkflowRecord:
        if not name:
            raise InvalidArgument("workflow name is required")
        rec = self.records.get(name)
        if rec is None or not visible(rec.tenant):
            raise NotFound(f"no workflow named {name[:80]!r}", hint="see `atoll workflows`")
        return rec

    def delete(self, name: str) -> None:
        self.get(name)
        self._retry_at.pop(name, None)
        self._replan.discard(name)
        self.store.delete_workflow(name)
        self.records.pop(name, None)
        self._specs.pop(name, None)
        self._changes += 1
        self.reconcile()

    def references(self, node_id: str) -> set[str]:
        """The ``sha256:`` blobs that ``node_id``'s assignments name: what it may fetch."""
        return {src for rec in self.records.values() for a in rec.assignments if a.node_id == node_id
                for src in (a.base_model, a.adapter_source) if src.startswith("sha256:")}

    # ------------------------------------------------------------------ status
    def replica_views(self, rec: WorkflowRecord) -> list[dict]:
        return replica_views(rec, self.registry.nodes)

    def profiles_view(self, rec: WorkflowRecord) -> list[dict]:
        return profiles_view(rec, self.spec(rec.name), self.registry.nodes, self.store.list_profiles())

    # ------------------------------------------------------------------ routing
    def routing_table(self) -> RoutingTable:
        """Every workflow's route; rebuilt only after a record or a node's serving state changed."""
        key = (self._changes, self.registry.serving_changes)
        if self._table is None or self._table[0] != key:
            routes = []
            for rec in self.records.values():
                try:
                    routes.append(self._route_of(rec))
                except AtollError:      # its spec cannot be loaded now: route() says why
                    continue
            self._table = (key, build_table(routes))
        return self._table[1]

    def _route_of(self, rec: WorkflowRecord) -> Route:
        spec, serving = self._loaded(rec)
        wakeable = rec.state == "IDLE" or (rec.state == "DEPLOYING" and rec.deployment.autoscale is not None)
        return build_route(rec.name, serving, rec.plan, rec.assignments, self.replica_views(rec), tenant=rec.tenant,
                           state=rec.state, trusted_only=spec.placement.trusted_only, wakeable=wakeable)

    def route(self, name: str) -> Route:
        rec = self.get(name)
        if rec.state not in ("READY", "DEGRADED"):
            raise FailedPrecondition(f"workflow {name!r} is {rec.state}: {rec.message}",
                                     hint="wait until `atoll status` says READY")
        return self.routing_table().get(name) or self._route_of(rec)

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, now: float | None = None) -> int:
        """Send each live node its desired set if it reports another generation. Returns sends."""
        now = time.monotonic() if now is None else now
        sent = self.deployer.reconcile((a for r in self.records.values() for a in r.assignments), now)
        self._update_states()
        return sent

    def _update_states(self) -> None:
        for rec in self.records.values():
            if rec.state == "IDLE" and not rec.assignments:
                continue
            views = self.replica_views(rec)
            state, msg = workflow_state(rec, views)
            self.autoscaler.observe(rec, views, state)
            if (state, msg) != (rec.state, rec.message):
                if state != rec.state:
                    log.info("workflow state", extra=kv(workflow=rec.name, old=rec.state, new=state, why=msg))
                rec.state, rec.message, rec.updated = state, msg, time.time()
                self._save(rec)

    # ------------------------------------------------------------------ autoscaling
    def request_started(self, name: str) -> None:
        """A request for workflow ``name`` starts (counted for autoscaling)."""
        self.autoscaler.request_started(name)

    def request_finished(self, name: str, completion_tokens: Mapping[str, int] | None = None) -> None:
        """A request started with :meth:`request_started` ended; ``completion_tokens`` (task ->
        tokens generated, e.g. ``{s.task: s.completion_tokens for s in result.stages}``) when it
        succeeded. Every door that runs requests calls both, so the autoscaler sees all traffic;
        entries' reports arrive here too (``coordinator/entry_load.py``)."""
        self.autoscaler.request_finished(name, completion_tokens)

    async def autoscale(self, now: float | None = None) -> list[tuple[str, str]]:
        """One pass of the autoscaler over every workflow that has a policy. Returns actions taken.
        Its re-plans run in the planning workers, each in its turn with submits and re-plans."""
        return await self.autoscaler.run(self, self.registry.nodes, time.monotonic() if now is None else now,
                                         connected=self.registry.sessions.keys())

    def wake(self, name: str) -> asyncio.Task | None:
        """A request arrived for a workflow at zero: scale up now, in a task of the running loop
        (the callers are request handlers; the request waits for a replica meanwhile). One wake
        per workflow at a time, and at most ``WAITING_PER_TENANT`` of one tenant's: the others
        wait for a later request (or the entries' report of it) to wake them. Returns the task
        (None: nothing to wake, one is under way, or the tenant has its share under way)."""
        rec = self.records.get(name)
        if rec is None or rec.state != "IDLE" or name in self._waking:
            return None
        if sum(1 for n in self._waking if (r := self.records.get(n)) is not None and r.tenant == rec.tenant) \
                >= WAITING_PER_TENANT:
            return None
        task = asyncio.get_running_loop().create_task(self._wake(rec))
        self._waking[name] = task
        return task

    async def _wake(self, rec: WorkflowRecord) -> None:
        try:
            await self.autoscaler.wake(self, rec)
        except ResourceExhausted as exc:      # the tenant's placements fill its share: a later request retries
            log.debug("wake deferred", extra=kv(workflow=rec.name, error=str(exc)[:300]))
        except Exception as exc:  # noqa: BLE001 - the next request (or pass) wakes it again; say why
            log.warning("wake failed", extra=kv(workflow=rec.name, error=str(exc)[:300]))
        finally:
            self._waking.pop(rec.name, None)

    # ------------------------------------------------------------------ failures
    def _on_transition(self, t) -> None:
        if t.new in ("LOST", "DRAINING"):
            for rec in self.records.values():
                if any(a.node_id == t.node_id for a in rec.assignments):
                    self._replan.add(rec.name)
        elif t.new == "READY":      # new capacity: retry workflows whose re-plan failed
            for name in self._retry_at:
                self._replan.add(name)

    def trust_changed(self, node_id: str, trusted: bool) -> None:
        """An admin trusted or untrusted a node: trusted_only workflows on it move off it; a
        newly trusted node may let a waiting re-plan succeed."""
        for rec in self.records.values():
            if trusted and rec.name in self._retry_at:
                self._replan.add(rec.name)
            elif not trusted and any(a.node_id == node_id for a in rec.assignments) \
                    and rec.deployment.constraints is not None and rec.deployment.constraints.trusted_only:
                self._replan.add(rec.name)

    def _on_price(self, node_id: str, old: float, new: float) -> None:
        """A price change can make another placement cheaper: re-plan every workflow (sticky
        placement and the planner's own choice keep what still pays)."""
        log.info("node price changed; re-planning", extra=kv(node=node_id[:12], old=old, new=new))
        self._price_changed = True          # coalesced: see replan_pending

    def _price_replans_due(self, now: float) -> None:
        """Price changes (of any number of nodes) start one round of re-plans at most every
        :data:`PRICE_REPLAN_S`; a change within that time waits for the next round."""
        if not self._price_changed or now - self._price_replanned < PRICE_REPLAN_S:
            return
        self._price_changed, self._price_replanned = False, now
        for rec in self.records.values():
            if rec.state != "IDLE":
                self._replan.add(rec.name)

    async def replan_pending(self) -> list[str]:
        done = []
        now = time.monotonic()
        self._price_replans_due(now)
        for name, when in list(self._retry_at.items()):
            if now >= when:
                self._replan.add(name)
        for name in sorted(self._replan):
            self._replan.discard(name)
            rec = self.records.get(name)
            if rec is None:
                continue
            try:
                async with self.placing(REPLAN):          # before every waiting placement (fairness.py)
                    spec, serving = self._loaded(rec)
                    p = await self._place(rec.name, spec, serving, on_behalf_of=REPLAN, first=True,
                                          previous=rec.assignments, scale=current_scale(rec) or 1.0)
                    if self.records.get(name) is not rec:      # deleted (or replaced) meanwhile
                        continue
                    self._retry_at.pop(name, None)
                    self._commit(rec, p, rec.deployment.autoscale)
            except Exception as exc:  # noqa: BLE001 - keep serving what is left; retry; report why
                rec.message = f"re-plan failed (retrying): {exc}"
                rec.updated = time.time()
                self._save(rec)
                self._retry_at[name] = time.monotonic() + RETRY_REPLAN_S
                log.warning("re-plan failed", extra=kv(workflow=name, error=str(exc)[:300]))
                continue
            log.info("workflow re-planned", extra=kv(workflow=name, generation=rec.generation,
                                                      cost=round(p.plan.total_cost_per_hour, 6)))
            done.append(name)
        if done:
            self.reconcile()
        return done

    def _export_plan(self, rec: WorkflowRecord) -> None:
        if self.metrics is not None and rec.plan is not None:
            self.metrics.plan_cost.labels(rec.name, "compute").set(rec.plan.compute_cost_per_hour)
            self.metrics.plan_cost.labels(rec.name, "transfer").set(rec.plan.transfer_cost_per_hour)
            self.metrics.plan_accuracy.labels(rec.name).set(rec.plan.accuracy)
