"""Workflows: submit -> plan on the live fleet -> store -> deploy -> serve, and re-plan on loss.

:class:`WorkflowManager` is plain logic on the coordinator's event loop. It calls the pure
planner (``atoll.planner``) with a problem built from the READY nodes (``deploy.fleet_pools``)
and the workflow spec, with throughput profiles measured on the fleet taking precedence over
declared ones; stores the plan and its assignments before acknowledging; and reconciles,
level-triggered: every pass computes each node's desired replica set and its generation (a
content digest), and sends it down the node's heartbeat stream only when the agent reports a
different generation (again after ``RESEND_AFTER`` seconds if it still differs). Running it
twice changes nothing.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from pathlib import Path

import yaml

from atoll.coordinator.autoscaler import Policy, Sample, State, decide
from atoll.coordinator.deploy import (assign, fleet_pools, hardware_class, node_items, previous_hosts,
                                     resident_models)
from atoll.coordinator.router import Endpoint, Route, Stage
from atoll.coordinator.store import WorkflowRecord
from atoll.core.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PlanInfeasible,
                          SpecError)
from atoll.core.logs import kv
from atoll.specs.common import parse_obj

log = logging.getLogger("atoll.coordinator")

RESEND_AFTER = 5.0
MAX_SPEC_BYTES = 1 << 20


def generation_of(items: list[dict]) -> int:
    h = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _is_source_ref(s: str) -> bool:
    return s.startswith("sha256:") or s.startswith("/") or s.startswith(".") or s.startswith("~")


class WorkflowManager:
    def __init__(self, store, registry, metrics=None, blobs=None):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.blobs = blobs
        self.records: dict[str, WorkflowRecord] = {r.name: r for r in store.list_workflows()}
        self._specs: dict[str, object] = {}
        self._sent: dict[str, tuple[int, float]] = {}        # node id -> (generation, when)
        self._sent_session: dict[str, object] = {}            # node id -> the session it went to
        self._replan: set[str] = set()
        self._retry_at: dict[str, float] = {}               # workflow -> next re-plan attempt
        # autoscaling: load seen by the router, the autoscaler's memory, pending cold starts
        self.arrivals: dict[str, collections.deque] = {}
        self.in_flight: dict[str, int] = {}
        self.last_request: dict[str, float] = {}
        self._as_state: dict[str, State] = {}
        self._cold: dict[str, tuple[float, set[str]]] = {}   # workflow -> (decided at, new replica ids)
        self.cold_starts: list[dict] = []
        registry.add_listener(self._on_transition)
        if hasattr(registry, "add_price_listener"):
            registry.add_price_listener(self._on_price)

    # ------------------------------------------------------------------ spec and serving info
    def parse(self, spec_yaml: str, filename: str, tenant: str | None = None):
        from atoll.specs.workflow import WorkflowSpec

        src = filename or "workflow"
        if len(spec_yaml.encode()) > MAX_SPEC_BYTES:
            raise SpecError(f"spec is larger than {MAX_SPEC_BYTES} bytes", source=src)
        try:
            data = yaml.safe_load(spec_yaml)
        except yaml.YAMLError as exc:
            raise SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=src) from None
        spec = parse_obj(WorkflowSpec, data, source=src)
        if spec.catalog:
            raise SpecError("a submitted workflow must carry its variants inline", source=src, path="catalog",
                            hint="`atoll submit` inlines the catalog for you")
        spec.check(source=src)
        self._check_serving(spec, src, tenant)
        return spec

    def _check_serving(self, spec, src: str, tenant: str | None = None) -> None:
        variants = spec.resolved_variants(None)
        sinks = {t.name for t in spec.tasks} - {e.from_ for e in spec.edges}
        for i, e in enumerate(spec.edges):
            if getattr(e, "type", "text") != "text":
                raise SpecError(f"edge {e.from_} -> {e.to} carries a tensor, but every stage takes text",
                                source=src, path=f"edges[{i}].type",
                                hint="tensors (an embedding stage's output) are workflow outputs; use type: text")
        for i, t in enumerate(spec.tasks):
            kind = getattr(t, "kind", "llm")
            if kind == "embedding" and t.name not in sinks:
                raise SpecError(f"task {t.name!r} is an embedding stage: its output is a tensor, which only "
                                "the workflow's output can take", source=src, path=f"tasks[{i}].kind",
                                hint="make it a sink, or use kind: llm")
            for j, v in enumerate(variants[t.name]):
                model = getattr(v, "model", None) or v.base_model
                where = f"tasks[{i}].variants[{j}]"
                if not _is_source_ref(model):
                    raise SpecError(f"variant {v.name!r}: model {model!r} is neither a path nor a sha256 name",
                                    source=src, path=f"{where}.model",
                                    hint="set model: to a local Hugging Face directory or a name from `atoll push`")
                self._check_source(model, "model", src, f"{where}.model", tenant)
                if v.adapter:
                    apath = getattr(v, "adapter_path", None)
                    if not apath:
                        raise SpecError(f"variant {v.name!r} names adapter {v.adapter!r} without adapter_path",
                                        source=src, path=f"{where}.adapter_path",
                                        hint="give the PEFT directory or its sha256 name")
                    self._check_source(apath, "adapter", src, f"{where}.adapter_path", tenant)

    def _check_source(self, ref: str, kind: str, src: str, path: str, tenant: str | None = None) -> None:
        if ref.startswith("sha256:"):
            if self.blobs is None:
                return
            try:
                info = self.blobs.info(ref)
            except (NotFound, InvalidArgument) as exc:
                raise NotFound(f"{src}: {path}: {kind} {ref[:19]}… is not in the model store ({exc.message})",
                               hint="push it with `atoll push DIR`") from None
            owner = info.get("tenant", "")
            if tenant and owner and owner != tenant:     # another tenant's adapter: as if absent
                raise NotFound(f"{src}: {path}: {kind} {ref[:19]}… is not in the model store",
                               hint="push it with `atoll push DIR`")
            return
        p = Path(ref).expanduser()
        marker = "adapter_config.json" if kind == "adapter" else "config.json"
        if not (p / marker).is_file():
            raise NotFound(f"{src}: {path}: {kind} directory {ref!r} does not exist or has no {marker}",
                           hint=f"give an existing {kind} directory (the same path on every host) or push it")

    def _serving(self, spec) -> tuple[list[Stage], dict[tuple[str, str], dict], str, str]:
        variants = spec.resolved_variants(None)
        parents: dict[str, list[str]] = {t.name: [] for t in spec.tasks}
        for e in spec.edges:
            parents[e.to].append(e.from_)
        order, done = [], {s.name for s in spec.sources}
        pending = [t for t in spec.tasks]
        while pending:
            for t in list(pending):
                if all(p in done for p in parents[t.name]):
                    order.append(t)
                    done.add(t.name)
                    pending.remove(t)
        stages = [Stage(task=t.name, kind=getattr(t, "kind", "llm"), prompt=getattr(t, "prompt", "{input}"),
                        parents=tuple(parents[t.name]), max_tokens=int(getattr(t, "max_tokens", 32)),
                        temperature=float(getattr(t, "temperature", 0.0)),
                        stop=tuple(getattr(t, "stop", ()) or ())) for t in order]
        serving = {}
        for t in spec.tasks:
            for v in variants[t.name]:
                serving[(t.name, v.name)] = {"base_model": getattr(v, "model", None) or v.base_model,
                                             "adapter": v.adapter or "",
                                             "adapter_source": getattr(v, "adapter_path", None) or "",
                                             "kind": getattr(t, "kind", "llm")}
        sinks = [t.name for t in order if t.name not in {e.from_ for e in spec.edges}]
        return stages, serving, spec.sources[0].region, sinks[-1]

    # ------------------------------------------------------------------ planning
    def _live_nodes(self, exclude_workflow: str):
        taken = {a["node_id"] for name, r in self.records.items() if name != exclude_workflow
                 for a in r.assignments}
        ready = [n for n in self.registry.nodes.values() if n.state == "READY"]
        return [n for n in ready if n.id not in taken], taken

    def _with_profiles(self, spec, name: str):
        """A copy of the spec where measured throughput replaces the declared figure."""
        measured: dict[tuple[str, str, str], float] = {}
        for vkey, hw, rps, _tps, _src, _ts in self.store.list_profiles():
            wf, _, rest = vkey.partition("/")
            task, _, variant = rest.partition("/")
            if wf == name:
                measured[(task, variant, hw)] = rps
        if not measured:
            return spec
        data = spec.dump()
        for t in data["tasks"]:
            for v in t["variants"]:
                for (task, variant, hw), rps in measured.items():
                    if task == t["name"] and variant == v["name"]:
                        v.setdefault("throughput", {})[hw] = rps
                        (v.get("tokens_per_second") or {}).pop(hw, None)
        from atoll.specs.workflow import WorkflowSpec
        return parse_obj(WorkflowSpec, data, source="profiles")

    def plan_for(self, spec, name: str, previous: list[dict] | None = None, scale: float = 1.0):
        """Plan ``spec`` with its sources' rates times ``scale``. With an on-demand floor, the
        floor's share of the rate is planned first on non-preemptible nodes only, the rest on all
        the nodes left; the two plans are merged (so losing every spot host keeps the floor)."""
        floor = float(getattr(getattr(spec, "autoscaling", None), "on_demand_floor", 0.0) or 0.0)
        if scale != 1.0:
            spec = self._scaled(spec, scale)
        domains = int(getattr(spec.placement, "min_failure_domains", 1) or 1)
        if floor <= 0 and domains > 1:
            return self._plan_spread(spec, name, previous, domains)
        if floor <= 0:
            return self._plan_once(spec, name, previous)
        from atoll.core.errors import PlanInfeasible

        base_plan, base_asg = self._plan_once(self._scaled(spec, floor), name, previous, on_demand_only=True)
        taken = {a["node_id"] for a in base_asg}
        if floor >= 1.0:
            return base_plan, base_asg
        try:
            rest_plan, rest_asg = self._plan_once(self._scaled(spec, 1.0 - floor), name, previous, exclude=taken)
        except PlanInfeasible:
            raise
        merged = dict(rest_plan)
        merged["compute_cost_per_hour"] = base_plan["compute_cost_per_hour"] + rest_plan["compute_cost_per_hour"]
        merged["transfer_cost_per_hour"] = base_plan["transfer_cost_per_hour"] + rest_plan["transfer_cost_per_hour"]
        merged["total_cost_per_hour"] = merged["compute_cost_per_hour"] + merged["transfer_cost_per_hour"]
        merged["accuracy"] = min(base_plan["accuracy"], rest_plan["accuracy"])
        merged["hosts"] = base_plan["hosts"] + rest_plan["hosts"]
        merged["routes"] = base_plan["routes"] + rest_plan["routes"]
        merged["tasks"] = {t: {"variant": rest_plan["tasks"][t]["variant"],
                               "replicas": base_plan["tasks"][t]["replicas"] + rest_plan["tasks"][t]["replicas"]}
                           for t in rest_plan["tasks"]}
        merged["on_demand_floor"] = {"share": floor, "cost_per_hour": base_plan["total_cost_per_hour"]}
        return merged, base_asg + rest_asg

    def domain_of(self, node, label: str) -> str:
        if label == "region":
            return node.region
        return (node.spec.get("labels") or {}).get(label, "") or f"node:{node.name}"

    def _plan_spread(self, spec, name: str, previous, n: int):
        """At least ``n`` failure domains per stage: the rate is split in ``n`` equal shares, each
        planned on one domain's nodes (domains tried cheapest first); the plans are merged."""
        from atoll.core.errors import PlanInfeasible

        label = spec.placement.failure_domain
        nodes, _ = self._live_nodes(name)
        by_dom: dict[str, list] = {}
        for nd in nodes:
            by_dom.setdefault(self.domain_of(nd, label), []).append(nd)
        if len(by_dom) < n:
            raise PlanInfeasible(f"failure domains: {n} asked, {len(by_dom)} available among the READY nodes "
                                 f"(by {label!r})", slo="failure_domains", asked=n, reachable=len(by_dom),
                                 hint=f"label more nodes with {label}=... or lower min_failure_domains")
        order = sorted(by_dom, key=lambda d: min(float(x.spec.get("price_per_hour", 0)) for x in by_dom[d]))
        share = self._scaled(spec, 1.0 / n)
        parts, used = [], set()
        all_ids = {x.id for x in nodes}
        for d in order:
            if len(parts) == n:
                break
            keep = {x.id for x in by_dom[d]}
            try:
                parts.append(self._plan_once(share, name, previous, exclude=(all_ids - keep) | used))
                used |= keep
            except PlanInfeasible:
                continue
        if len(parts) < n:
            raise PlanInfeasible(f"failure domains: only {len(parts)} of the {n} asked can each carry 1/{n} of "
                                 "the load", slo="failure_domains", asked=n, reachable=len(parts),
                                 hint="add capacity in more domains or lower min_failure_domains")
        plan_d = dict(parts[0][0])
        for key in ("compute_cost_per_hour", "transfer_cost_per_hour", "total_cost_per_hour"):
            plan_d[key] = sum(p[key] for p, _ in parts)
        plan_d["accuracy"] = min(p["accuracy"] for p, _ in parts)
        plan_d["hosts"] = [h for p, _ in parts for h in p["hosts"]]
        plan_d["routes"] = [r for p, _ in parts for r in p["routes"]]
        plan_d["tasks"] = {t: {"variant": parts[0][0]["tasks"][t]["variant"],
                               "replicas": [r for p, _ in parts for r in p["tasks"][t]["replicas"]]}
                           for t in plan_d["tasks"]}
        plan_d["failure_domains"] = {"label": label, "domains": n}
        return plan_d, [a for _, asg in parts for a in asg]

    @staticmethod
    def _scaled(spec, factor: float):
        from atoll.specs.workflow import WorkflowSpec

        data = spec.dump()
        for src in data["sources"]:
            src["rate"] = max(src["rate"] * factor, 1e-6)
        return parse_obj(WorkflowSpec, data, source=spec.name)

    def _plan_once(self, spec, name: str, previous: list[dict] | None = None, on_demand_only: bool = False,
                   exclude: set[str] = frozenset()):
        from atoll.planner.api import HostCounts
        from atoll.planner.api import plan as run_planner
        from atoll.planner.build import problem_from_specs
        from atoll.specs.cluster import ClusterSpec

        nodes, taken = self._live_nodes(name)
        nodes = [n for n in nodes if n.id not in exclude
                 and not (on_demand_only and n.spec.get("preemptible"))]
        taken = set(taken) | set(exclude)
        if not nodes:
            raise PlanInfeasible("no READY nodes are free for this workflow", slo="capacity", asked=None,
                                 reachable=0.0, hint="start agents (`atoll agent`) or delete other workflows")
        pools = fleet_pools(nodes)
        cluster = parse_obj(ClusterSpec, {"name": "live-fleet", "pools": pools}, source="live fleet")
        planned = self._with_profiles(spec, name)
        trusted = bool(getattr(spec.placement, "trusted_only", False))
        if trusted:        # a hard constraint: no stage (so none of its data) on a rented host
            data = planned.dump()
            data["placement"]["forbid_tiers"] = sorted(set(data["placement"].get("forbid_tiers", [])) | {"renter"})
            from atoll.specs.workflow import WorkflowSpec
            planned = parse_obj(WorkflowSpec, data, source=name)
        problem = problem_from_specs(planned, cluster, None, workflow_source=name)
        # a re-plan starts from what runs: the planner's churn penalty keeps replicas in place
        # unless moving them pays (placement inside a pool is sticky too, see deploy.assign)
        prev = HostCounts(previous_hosts(pools, previous)) if previous else None
        plan = run_planner(problem, previous=prev)
        stages, serving, _, _ = self._serving(spec)
        plan_d = plan.to_dict()
        plan_d["constraints"] = {"trusted_only": trusted, "on_demand_only": on_demand_only,
                                 "forbid_tiers": list(planned.placement.forbid_tiers),
                                 "forbid_regions": list(planned.placement.forbid_regions)}
        resident = {n.id: resident_models(n.status) for n in nodes}
        assignments = [a.to_dict() for a in assign(name, plan_d, pools, serving, previous, taken, resident)]
        return plan_d, assignments

    # ------------------------------------------------------------------ client calls
    def submit(self, spec_yaml: str, filename: str, dry_run: bool = False, tenant: str = "") -> WorkflowRecord:
        spec = self.parse(spec_yaml, filename, tenant)
        if not dry_run and spec.name in self.records:
            raise AlreadyExists(f"workflow name {spec.name!r} is taken", hint="pick another name, or delete yours first")
        plan_d, assignments = self.plan_for(spec, spec.name)
        now = time.time()
        rec = WorkflowRecord(name=spec.name, spec_yaml=spec.to_yaml(), state="DEPLOYING",
                             message="waiting for replicas", plan=plan_d, assignments=assignments,
                             generation=1, created=now, updated=now, tenant=tenant)
        if dry_run:
            rec.state = "PLANNED"
            return rec
        self.store.put_workflow(rec)            # durable before we acknowledge
        self.records[rec.name] = rec
        self._specs[rec.name] = spec
        self._export_plan(rec)
        log.info("workflow submitted", extra=kv(workflow=rec.name, cost=plan_d["total_cost_per_hour"],
                                                 replicas=len(assignments)))
        self.reconcile()
        return rec

    def get(self, name: str) -> WorkflowRecord:
        from atoll.coordinator.auth import visible

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
        self.reconcile()

    def spec(self, name: str):
        if name not in self._specs:
            self._specs[name] = self.parse(self.get(name).spec_yaml, name)
        return self._specs[name]

    def replica_views(self, rec: WorkflowRecord) -> list[dict]:
        out = []
        total: dict[str, float] = {}
        for a in rec.assignments:
            total[a["task"]] = total.get(a["task"], 0.0) + a["weight"]
        for a in rec.assignments:
            node = self.registry.nodes.get(a["node_id"])
            st = "lost"
            msg = ""
            if node is not None and node.state in ("READY", "DRAINING", "SUSPECT"):
                st = (node.status.get("replica_states") or {}).get(a["replica_id"], "pending")
                msg = (node.status.get("replica_messages") or {}).get(a["replica_id"], "")
            out.append({"replica_id": a["replica_id"], "task": a["task"], "variant": a["variant"],
                        "node_id": a["node_id"], "node_name": node.name if node else "?",
                        "state": st, "worker_address": (node.status.get("worker_address", "") if node else ""),
                        "region": node.region if node else "", "tier": node.tier if node else "",
                        "weight": a["weight"] / total[a["task"]] if total.get(a["task"]) else 0.0,
                        "message": msg, "node_state": node.state if node else "GONE",
                        **{f"{ph}_seconds": float((node.status.get("replica_load_seconds") or {}).get(
                            f"{a['replica_id']}/{ph}", 0.0)) if node else 0.0
                           for ph in ("fetch", "load", "warmup")}})
        return out

    def route(self, name: str) -> Route:
        rec = self.get(name)
        if rec.state not in ("READY", "DEGRADED"):
            raise FailedPrecondition(f"workflow {name!r} is {rec.state}: {rec.message}",
                                     hint="wait until `atoll status` says READY")
        stages, _, source_region, sink = self._serving(self.spec(name))
        eps: dict[str, list[Endpoint]] = {}
        for r in self.replica_views(rec):
            if r["state"] == "ready" and r["node_state"] == "READY" and r["worker_address"]:
                a = next(x for x in rec.assignments if x["replica_id"] == r["replica_id"])
                eps.setdefault(r["task"], []).append(Endpoint(
                    r["replica_id"], r["task"], r["variant"], r["node_id"], r["node_name"], r["region"],
                    r["worker_address"], a["weight"], a["adapter"], f"{r['region']}/{r['tier']}"))
        spec = self.spec(name)
        src = spec.sources[0]
        flows: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
        for f in rec.plan.get("routes", []):
            flows.setdefault((f["src"], f["dst"]), []).append((f["from_location"], f["to_location"], float(f["rate"])))
        return Route(name, stages, eps, source_region, sink, f"{src.region}/{src.tier}", flows)

    # ------------------------------------------------------------------ reconcile
    def desired_by_node(self) -> dict[str, list[dict]]:
        """Desired replica items per node, for nodes that hold or should hold something: the
        nodes named in assignments, and live nodes that report a non-empty applied set (they
        must be told to drop it). Everything else needs nothing and costs nothing per pass."""
        by_node: dict[str, list[dict]] = {}
        for rec in self.records.values():
            for a in rec.assignments:
                by_node.setdefault(a["node_id"], [])
        for node_id, gen in self.registry.applied_generation.items():
            if gen not in (0, -1) and node_id in self.registry.sessions:
                by_node.setdefault(node_id, [])
        for node_id in by_node:
            items: list[dict] = []
            for rec in self.records.values():
                items += node_items(rec.assignments, node_id)
            by_node[node_id] = sorted(items, key=lambda i: i["replica_id"])
        return by_node

    def reconcile(self, now: float | None = None) -> int:
        """Send each live node its desired set if it reports another generation. Returns sends."""
        now = time.monotonic() if now is None else now
        sent = 0
        for node_id, items in self.desired_by_node().items():
            sess = self.registry.sessions.get(node_id)
            if sess is None:
                continue
            gen = generation_of(items)
            applied = self.registry.applied_generation.get(node_id, -1)
            if applied == gen or (not items and applied in (-1, 0)):
                continue
            last_gen, when = self._sent.get(node_id, (None, -1e9))
            if last_gen == gen and now - when < RESEND_AFTER and self._sent_session.get(node_id) is sess:
                continue
            sess.push({"assignments": {"generation": gen, "items": items}})
            self._sent[node_id] = (gen, now)
            self._sent_session[node_id] = sess
            sent += 1
        self._update_states()
        return sent

    def _update_states(self) -> None:
        for rec in self.records.values():
            if rec.state == "IDLE" and not rec.assignments:
                continue
            views = self.replica_views(rec)
            self._track_cold_starts(rec, views)
            tasks = {a["task"] for a in rec.assignments} | set(rec.plan.get("tasks", {}))
            ready = {t: sum(1 for v in views if v["task"] == t and v["state"] == "ready"
                            and v["node_state"] == "READY") for t in tasks}
            failed = [v for v in views if v["state"] == "failed"]
            if all(ready.get(t, 0) > 0 for t in tasks):
                state, msg = "READY", f"{sum(ready.values())} replica(s) ready"
            elif failed and not any(v["state"] in ("pending", "loading") for v in views):
                state, msg = "FAILED", f"{failed[0]['replica_id']}: {failed[0]['message'] or 'failed'}"
            else:
                waiting = [t for t in sorted(tasks) if not ready.get(t)]
                state = "DEGRADED" if rec.state in ("READY", "DEGRADED") else "DEPLOYING"
                msg = f"{len(tasks) - len(waiting)}/{len(tasks)} stages ready; waiting for {', '.join(waiting)}"
            if (state, msg) != (rec.state, rec.message):
                if state != rec.state:
                    log.info("workflow state", extra=kv(workflow=rec.name, old=rec.state, new=state, why=msg))
                rec.state, rec.message, rec.updated = state, msg, time.time()
                self.store.put_workflow(rec)

    # ------------------------------------------------------------------ autoscaling
    WINDOW_S = 10.0

    def request_started(self, name: str) -> None:
        now = time.monotonic()
        q = self.arrivals.setdefault(name, collections.deque())
        q.append(now)
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.last_request[name] = now

    def request_finished(self, name: str) -> None:
        self.in_flight[name] = max(0, self.in_flight.get(name, 0) - 1)

    def arrival_rate(self, name: str, now: float) -> float:
        q = self.arrivals.get(name)
        if not q:
            return 0.0
        while q and now - q[0] > self.WINDOW_S:
            q.popleft()
        return len(q) / self.WINDOW_S

    @staticmethod
    def base_rate(spec) -> float:
        return sum(src.rate for src in spec.sources)

    def autoscale(self, now: float | None = None) -> list[tuple[str, str]]:
        """One pass of the autoscaler over every workflow that has a policy. Returns actions taken."""
        now = time.monotonic() if now is None else now
        done = []
        for name, rec in list(self.records.items()):
            spec = self.spec(name)
            a = getattr(spec, "autoscaling", None)
            if a is None:
                continue
            policy = Policy(metric=a.metric, target=a.target, min_replicas=a.min_replicas,
                            max_replicas=a.max_replicas, scale_up_delay=a.scale_up_delay,
                            scale_down_delay=a.scale_down_delay, scale_to_zero=a.scale_to_zero,
                            idle_seconds=a.idle_seconds)
            base = self.base_rate(spec)
            scale = float(rec.plan.get("autoscale", {}).get("scale", 1.0))
            zero = rec.state == "IDLE"
            views = self.replica_views(rec)
            tasks = {v["task"] for v in views} or set(rec.plan.get("tasks", {}))
            ready = min([sum(1 for v in views if v["task"] == t and v["state"] == "ready") for t in tasks] or [0])
            qd = 0.0
            nodes = {v["node_id"] for v in views}
            if nodes:
                # Little's law over the workflow's nodes: queued requests / arrival rate. (An
                # agent reports one queue per node; a node shared by workflows over-counts.)
                depths = [self.registry.nodes[n].status.get("queue_depth", 0) for n in nodes if n in self.registry.nodes]
                rate = max(self.arrival_rate(name, now), 1e-3)
                qd = sum(depths) / rate
            sample = Sample(now=now, arrivals_per_s=self.arrival_rate(name, now),
                            in_flight=float(self.in_flight.get(name, 0)), queue_delay_s=qd, ready_replicas=ready,
                            last_request_at=self.last_request.get(name, rec.created and now - (time.time() - rec.created)))
            d = decide(policy, sample, base * scale, base * 0.05, self._as_state.get(name, State()), zero)
            self._as_state[name] = d.state
            if d.action in ("scale", "from_zero"):
                if self._rescale(rec, spec, d.rate / base, d.reason):
                    done.append((name, d.action))
            elif d.action == "to_zero":
                self._to_zero(rec, d.reason)
                done.append((name, d.action))
        return done

    def wake(self, name: str) -> None:
        """A request arrived for a workflow at zero: scale up now (the request waits)."""
        rec = self.records.get(name)
        if rec is not None and rec.state == "IDLE":
            spec = self.spec(name)
            self._rescale(rec, spec, max(float(rec.plan.get("autoscale", {}).get("scale_before_zero", 1.0)), 0.05),
                          "a request arrived")

    def _rescale(self, rec, spec, scale: float, reason: str) -> bool:
        a = spec.autoscaling
        old_ids = {x["replica_id"] for x in rec.assignments}
        for _ in range(4):       # back off when the fleet cannot take it or max_replicas is exceeded
            try:
                plan_d, assignments = self.plan_for(spec, rec.name, previous=rec.assignments, scale=scale)
            except PlanInfeasible as exc:
                scale *= 0.75
                last = exc
                continue
            per_task: dict[str, int] = {}
            for x in assignments:
                per_task[x["task"]] = per_task.get(x["task"], 0) + 1
            worst = max(per_task.values() or [0])
            if worst > a.max_replicas:
                scale *= a.max_replicas / worst
                continue
            break
        else:
            log.warning("autoscale: no plan", extra=kv(workflow=rec.name, error=str(locals().get("last", ""))[:200]))
            return False
        plan_d["autoscale"] = {"scale": scale, "rate": self.base_rate(spec) * scale, "reason": reason,
                               "decided_unix": time.time()}
        rec.plan, rec.assignments = plan_d, assignments
        rec.generation += 1
        rec.state = "DEPLOYING" if rec.state == "IDLE" else rec.state
        rec.updated = time.time()
        self.store.put_workflow(rec)
        self._export_plan(rec)
        new_ids = {x["replica_id"] for x in assignments} - old_ids
        if new_ids:
            self._cold[rec.name] = (time.monotonic(), new_ids)
        log.info("autoscaled", extra=kv(workflow=rec.name, rate=round(self.base_rate(spec) * scale, 3),
                                         replicas=len(assignments), why=reason))
        self.reconcile()
        return True

    def _to_zero(self, rec, reason: str) -> None:
        rec.plan["autoscale"] = {"scale": 0.0, "rate": 0.0, "reason": reason, "decided_unix": time.time(),
                                 "scale_before_zero": float(rec.plan.get("autoscale", {}).get("scale", 1.0)) or 1.0}
        rec.assignments = []
        rec.generation += 1
        rec.state, rec.message, rec.updated = "IDLE", f"scaled to zero: {reason}", time.time()
        self.store.put_workflow(rec)
        log.info("scaled to zero", extra=kv(workflow=rec.name, why=reason))
        self.reconcile()

    def _track_cold_starts(self, rec, views) -> None:
        pending = self._cold.get(rec.name)
        if not pending:
            return
        t0, ids = pending
        for v in views:
            if v["replica_id"] in ids and v["state"] == "ready":
                node = self.registry.nodes.get(v["node_id"])
                ph = (node.status.get("replica_load_seconds") or {}) if node else {}
                self.cold_starts.append({"workflow": rec.name, "replica": v["replica_id"], "node": v["node_name"],
                                         "seconds": time.monotonic() - t0,
                                         "fetch": ph.get(f"{v['replica_id']}/fetch", 0.0),
                                         "load": ph.get(f"{v['replica_id']}/load", 0.0),
                                         "warmup": ph.get(f"{v['replica_id']}/warmup", 0.0)})
                if self.metrics is not None:
                    self.metrics.cold_start.labels(rec.name).observe(time.monotonic() - t0)
                ids.discard(v["replica_id"])
        if not ids:
            self._cold.pop(rec.name, None)

    # ------------------------------------------------------------------ failures
    def _on_transition(self, t) -> None:
        if t.new in ("LOST", "DRAINING"):
            for rec in self.records.values():
                if any(a["node_id"] == t.node_id for a in rec.assignments):
                    self._replan.add(rec.name)
        elif t.new == "READY":      # new capacity: retry workflows whose re-plan failed
            for name in self._retry_at:
                self._replan.add(name)

    def _on_price(self, node_id: str, old: float, new: float) -> None:
        """A price change can make another placement cheaper: re-plan every workflow (sticky
        placement and the planner's own choice keep what still pays)."""
        log.info("node price changed; re-planning", extra=kv(node=node_id[:12], old=old, new=new))
        for rec in self.records.values():
            if rec.state != "IDLE":
                self._replan.add(rec.name)

    def replan_pending(self) -> list[str]:
        done = []
        now = time.monotonic()
        for name, when in list(self._retry_at.items()):
            if now >= when:
                self._replan.add(name)
        for name in sorted(self._replan):
            self._replan.discard(name)
            rec = self.records.get(name)
            if rec is None:
                continue
            try:
                plan_d, assignments = self.plan_for(self.spec(name), name, previous=rec.assignments,
                                                    scale=float(rec.plan.get("autoscale", {}).get("scale", 1.0)) or 1.0)
                if "autoscale" in rec.plan:
                    plan_d["autoscale"] = rec.plan["autoscale"]
            except Exception as exc:  # noqa: BLE001 - keep serving what is left; retry; report why
                rec.message = f"re-plan failed (retrying): {exc}"
                rec.updated = time.time()
                self.store.put_workflow(rec)
                self._retry_at[name] = time.monotonic() + 5.0
                log.warning("re-plan failed", extra=kv(workflow=name, error=str(exc)[:300]))
                continue
            self._retry_at.pop(name, None)
            rec.plan, rec.assignments = plan_d, assignments
            rec.generation += 1
            rec.updated = time.time()
            self.store.put_workflow(rec)
            self._export_plan(rec)
            log.info("workflow re-planned", extra=kv(workflow=name, generation=rec.generation,
                                                      cost=plan_d["total_cost_per_hour"]))
            done.append(name)
        if done:
            self.reconcile()
        return done

    def _export_plan(self, rec: WorkflowRecord) -> None:
        if self.metrics is not None:
            self.metrics.plan_cost.labels(rec.name, "compute").set(rec.plan.get("compute_cost_per_hour", 0.0))
            self.metrics.plan_cost.labels(rec.name, "transfer").set(rec.plan.get("transfer_cost_per_hour", 0.0))
            self.metrics.plan_accuracy.labels(rec.name).set(rec.plan.get("accuracy", 0.0))

    # ------------------------------------------------------------------ profiles
    def profiles_view(self, rec: WorkflowRecord) -> list[dict]:
        spec = self.spec(rec.name)
        measured = {(k, hw): (rps, src) for k, hw, rps, _t, src, _u in self.store.list_profiles()}
        out = []
        hws = {hardware_class(n) for n in self.registry.nodes.values()}
        for t in spec.tasks:
            for v in spec.resolved_variants(None)[t.name]:
                for hw in sorted(hws | set(v.throughput) | set(v.tokens_per_second)):
                    declared = v.requests_per_second(hw, t.tokens_per_request) or 0.0
                    m = measured.get((f"{rec.name}/{t.name}/{v.name}", hw))
                    if declared or m:
                        out.append({"variant": f"{t.name}/{v.name}", "hardware": hw, "declared_rps": declared,
                                    "measured_rps": m[0] if m else 0.0,
                                    "source": m[1] if m else "declared"})
        # What agents report in heartbeats: requests/s served per replica over the last minute.
        served: dict[tuple[str, str], float] = {}
        for a in rec.assignments:
            node = self.registry.nodes.get(a["node_id"])
            if node is None:
                continue
            rates = node.status.get("measured_throughput") or {}
            rate = rates.get(a["adapter"] or "base")
            if rate:
                key = (f"{a['task']}/{a['variant']}", hardware_class(node))
                served[key] = served.get(key, 0.0) + rate
        for (variant, hw), rate in sorted(served.items()):
            out.append({"variant": variant, "hardware": hw, "declared_rps": 0.0, "measured_rps": rate,
                        "source": "heartbeat"})
        return out
