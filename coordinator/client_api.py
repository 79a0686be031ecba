"""ClientService servicer: what people and programs call (nodes, workflows, invocations)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from atoll.coordinator import auth, convert
from atoll.coordinator.registry import Registry
from atoll.coordinator.router import parse_input, with_sink
from atoll.core.errors import AtollError, InvalidArgument
from atoll.core.logs import kv
from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc
from atoll.core.rpc import handle_errors
from atoll.specs.node import TIERS

MAX_TOKENS_LIMIT = 8192         # the OpenAI door's bound too

log = logging.getLogger("atoll.coordinator")
DEFAULT_TIMEOUT = 60.0


class ClientApi(control_pb2_grpc.ClientServiceServicer):
    def __init__(self, registry: Registry, workflows=None, router=None, metrics=None, keys=None):
        self.registry = registry
        self.workflows = workflows
        self.router = router
        self.metrics = metrics
        self.keys = keys

    # ------------------------------------------------------------------ nodes
    @handle_errors
    async def ListNodes(self, request, context):
        if request.tier and request.tier not in TIERS:
            raise InvalidArgument(f"unknown tier {request.tier[:40]!r}", hint="one of " + ", ".join(TIERS))
        if request.state not in convert.PB_TO_STATE and request.state != common_pb2.NODE_STATE_UNSPECIFIED:
            raise InvalidArgument(f"unknown node state {request.state}")
        state = convert.PB_TO_STATE.get(request.state, "")
        recs = self.registry.list(tier=request.tier, region=request.region, state=state)
        return control_pb2.ListNodesResponse(
            nodes=[convert.node_to_pb(r, self.registry.age(r)) for r in recs])

    @handle_errors
    async def GetNode(self, request, context):
        rec = self.registry.resolve(request.node)
        return convert.node_to_pb(rec, self.registry.age(rec))

    @handle_errors
    async def DrainNode(self, request, context):
        rec = self.registry.drain(request.node)
        log.info("node drained by operator", extra=kv(node=rec.name, id=rec.id))
        return convert.node_to_pb(rec, self.registry.age(rec))

    # ------------------------------------------------------------------ workflows
    def _status(self, rec) -> control_pb2.WorkflowStatus:
        wm = self.workflows
        try:
            profiles = wm.profiles_view(rec)
        except AtollError:
            profiles = []
        return control_pb2.WorkflowStatus(
            name=rec.name, state=rec.state, message=rec.message, plan_json=json.dumps(rec.plan),
            replicas=[control_pb2.ReplicaStatus(**{k: v for k, v in r.items() if k != "node_state"})
                      for r in wm.replica_views(rec)],
            profiles=[control_pb2.ProfileEntry(**p) for p in profiles], spec_yaml=rec.spec_yaml,
            created_unix=rec.created, updated_unix=rec.updated, generation=rec.generation, tenant=rec.tenant,
            cold_starts_json=json.dumps([c for c in wm.cold_starts if c["workflow"] == rec.name][-50:]))

    @handle_errors
    async def SubmitWorkflow(self, request, context):
        rec = self.workflows.submit(request.spec_yaml, request.filename, request.dry_run,
                                    tenant=auth.caller_tenant())
        return self._status(rec) if not request.dry_run else control_pb2.WorkflowStatus(
            name=rec.name, state=rec.state, plan_json=json.dumps(rec.plan))

    @handle_errors
    async def ListWorkflows(self, request, context):
        out = []
        for rec in sorted(self.workflows.records.values(), key=lambda r: r.name):
            if not auth.visible(rec.tenant):
                continue
            views = self.workflows.replica_views(rec)
            out.append(control_pb2.WorkflowSummary(
                name=rec.name, state=rec.state, cost_per_hour=rec.plan.get("total_cost_per_hour", 0.0),
                accuracy=rec.plan.get("accuracy", 0.0), replicas=len(views),
                ready_replicas=sum(1 for v in views if v["state"] == "ready")))
        return control_pb2.ListWorkflowsResponse(workflows=out)

    @handle_errors
    async def GetWorkflow(self, request, context):
        return self._status(self.workflows.get(request.name))

    @handle_errors
    async def DeleteWorkflow(self, request, context):
        self.workflows.delete(request.name)
        return control_pb2.DeleteWorkflowResponse(deleted=True)

    async def _route_waking(self, name: str, deadline: float):
        """The route; a workflow scaled to zero is woken and the request waits for a replica
        (until its deadline) instead of failing with 'not ready'."""
        wm = self.workflows
        rec = wm.get(name)
        if rec.state != "IDLE" and not (rec.state == "DEPLOYING" and "autoscale" in rec.plan):
            return wm.route(name)
        wm.wake(name)
        while True:
            try:
                return wm.route(name)
            except AtollError as exc:
                if wm.get(name).state == "FAILED":
                    raise
                if time.monotonic() >= deadline:
                    from atoll.core.errors import DeadlineExceeded
                    raise DeadlineExceeded(f"workflow {name} was scaled to zero and no replica was ready "
                                           f"before the deadline ({exc.message})") from None
            await asyncio.sleep(0.1)

    @handle_errors
    async def Invoke(self, request, context):
        text = parse_input(request.input_json)
        timeout = request.timeout_seconds if request.timeout_seconds > 0 else DEFAULT_TIMEOUT
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        if timeout <= 0 or timeout != timeout:
            raise InvalidArgument("timeout_seconds must be > 0")
        if not 0 <= request.max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(f"max_tokens must be in 0..{MAX_TOKENS_LIMIT} (0: the spec's), "
                                  f"got {request.max_tokens}")
        deadline = time.monotonic() + timeout
        self.workflows.get(request.workflow)          # NOT_FOUND before anything is counted
        self.workflows.request_started(request.workflow)
        try:
            route = await self._route_waking(request.workflow, deadline)
            if request.max_tokens:
                route = with_sink(route, max_tokens=request.max_tokens)
        except BaseException:
            self.workflows.request_finished(request.workflow)
            raise
        rid = request.request_id or uuid.uuid4().hex[:16]
        t0 = time.monotonic()
        queue: asyncio.Queue = asyncio.Queue()
        first = [None]

        async def on_delta(delta: str) -> None:
            if first[0] is None:
                first[0] = time.monotonic() - t0
            await queue.put(delta)

        task = asyncio.ensure_future(self.router.invoke(route, text, deadline=deadline,
                                                        on_delta=on_delta if request.stream else None))
        outcome = "error"
        try:
            if request.stream:
                while not (task.done() and queue.empty()):
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        yield control_pb2.InvokeResponse(text=getter.result(), request_id=rid)
                    else:
                        getter.cancel()
            result = await task
            outcome = "ok"
            yield control_pb2.InvokeResponse(
                done=True, request_id=rid, output_json=json.dumps(result.output),
                text=result.output.get("text", "") if not request.stream else "",
                stages=[control_pb2.StageResult(task=s.task, variant=s.variant, node_name=s.node_name,
                                                region=s.region, seconds=s.seconds, attempts=s.attempts,
                                                output_bytes=s.output_bytes, prompt_tokens=s.prompt_tokens,
                                                completion_tokens=s.completion_tokens)
                        for s in result.stages])
        finally:
            self.workflows.request_finished(request.workflow)
            if not task.done():
                task.cancel()
            if self.metrics is not None:
                self.metrics.requests.labels(request.workflow[:64], outcome).inc()
                self.metrics.request_seconds.labels(request.workflow[:64]).observe(time.monotonic() - t0)
                if first[0] is not None:
                    self.metrics.ttft.labels(request.workflow[:64]).observe(first[0])

    # ------------------------------------------------------------------ API keys
    @staticmethod
    def _key_pb(k: dict) -> control_pb2.ApiKeyInfo:
        return control_pb2.ApiKeyInfo(id=k["id"], tenant=k["tenant"], role=k["role"],
                                      created_unix=k["created"], revoked=k["revoked"])

    @handle_errors
    async def CreateKey(self, request, context):
        info, key = self.keys.create(request.tenant, request.role or "user", auth.current.get())
        log.info("api key created", extra=kv(id=info["id"], tenant=info["tenant"], role=info["role"]))
        return control_pb2.CreateKeyResponse(info=self._key_pb(info), key=key)

    @handle_errors
    async def ListKeys(self, request, context):
        return control_pb2.ListKeysResponse(keys=[self._key_pb(k) for k in self.keys.list(auth.current.get())])

    @handle_errors
    async def RevokeKey(self, request, context):
        info = self.keys.revoke(request.id, auth.current.get())
        log.info("api key revoked", extra=kv(id=info["id"], tenant=info["tenant"]))
        return self._key_pb(info)

    @handle_errors
    async def Profile(self, request, context):
        res = await self.workflows_profile(request)
        return control_pb2.ProfileResponse(**res)

    async def workflows_profile(self, request) -> dict:
        from atoll.coordinator.profiler import profile_variant

        return await profile_variant(self.workflows, self.router, request.workflow, request.task,
                                     request.variant, request.node, request.requests or 16,
                                     request.concurrency or 8)
