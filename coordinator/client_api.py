"""ClientService servicer: what people and programs call (nodes, workflows, invocations)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from atoll.coordinator import auth, convert
from atoll.coordinator.entry import admit
from atoll.coordinator.profiler import profile_variant
from atoll.coordinator.registry import Registry
from atoll.coordinator.tenancy import node_view, scope_of
from atoll.core.errors import AtollError, InvalidArgument
from atoll.core.logs import kv
from atoll.core.openai_api import MAX_TIMEOUT_S, MAX_TOKENS
from atoll.core.rpc import handle_errors
from atoll.proto.v1 import control_pb2_grpc
from atoll.specs.node import TIERS
from atoll.wire.dataplane import entries_response, invocation_from_pb

MAX_TOKENS_LIMIT = MAX_TOKENS   # the entries' bound (they serve what the coordinator forwards), the OpenAI door's too

log = logging.getLogger("atoll.coordinator")
DEFAULT_TIMEOUT = 60.0
# ListEntries walks every node and mints a caller token per entry for the caller, on the event
# loop: about 20 ms per call with 1,000 entry hosts (80 ms the first time), so one user key
# calling it in a loop kept the loop busy for every tenant. An answer is kept this long per API
# key and kind of workflow (trusted_only or not), for at most MAX_ENTRY_LISTS of them; within it a
# call costs a lookup (a node that left is listed up to this long, which clients survive anyway).
ENTRY_LIST_FRESH_S = 1.0
MAX_ENTRY_LISTS = 4096


@dataclass
class _EntryList:
    """One caller's entries (by node name, each with its caller token), and the answers built from
    them so far, by region (a region no entry is in orders as no region)."""

    until: float
    entries: list
    regions: frozenset
    answers: dict = field(default_factory=dict)

    def answer(self, region: str):
        region = region if region in self.regions else ""
        out = self.answers.get(region)
        if out is None:     # publish.entries' order: the region's entries first, then by node name
            found = sorted(self.entries, key=lambda e: e.region != region) if region else self.entries
            out = self.answers[region] = entries_response(found)
        return out


@dataclass(eq=False)
class ClientApi(control_pb2_grpc.ClientServiceServicer):
    """``forwarder``: :class:`~atoll.coordinator.forward.EntryForwarder` (Invoke goes to an
    agent's entry); ``workers``: the WorkerClient the profiler calls agents with;
    ``entries(region, workflow)``: the entries the SDK may use; ``mint(identity, node id)``: the
    caller token an API key's holder presents at that node's entry (never the key itself)."""

    registry: Registry
    workflows: Any = None
    forwarder: Any = None
    metrics: Any = None
    keys: Any = None
    workers: Any = None
    entries: Any = None
    mint: Any = None
    clock: Any = time.monotonic
    _entry_lists: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ nodes
    @handle_errors
    async def ListNodes(self, request, context):
        if request.tier and request.tier not in TIERS:
            raise InvalidArgument(f"unknown tier {request.tier[:40]!r}", hint="one of " + ", ".join(TIERS))
        if request.state not in convert.PB_TO_STATE and request.state != convert.UNSPECIFIED_STATE:
            raise InvalidArgument(f"unknown node state {request.state}")
        state = convert.PB_TO_STATE.get(request.state, "")
        recs = self._views(self.registry.list(tier=request.tier, region=request.region, state=state))
        return convert.nodes_response(recs, self.registry.age)

    def _views(self, recs: list) -> list:
        """What the caller may see of these nodes: all of it (an admin), or what its tenant's
        workflows put there (a user: ``tenancy.node_view``)."""
        if auth.caller_is_admin():
            return recs
        scope = scope_of(self.workflows.records.values(), auth.caller_tenant())
        return [node_view(r, scope) for r in recs]

    @handle_errors
    async def GetNode(self, request, context):
        rec = self._views([self.registry.resolve(request.node)])[0]
        return convert.node_to_pb(rec, self.registry.age(rec))

    @handle_errors
    async def DrainNode(self, request, context):
        self._entry_lists.clear()                       # an operator's decision shows at once
        rec = self.registry.drain(request.node)
        log.info("node drained by operator", extra=kv(node=rec.name, id=rec.id))
        return convert.node_to_pb(rec, self.registry.age(rec))

    @handle_errors
    async def SetNodeTrust(self, request, context):
        self._entry_lists.clear()                       # an operator's decision shows at once
        rec = self.registry.set_trusted(request.node, request.trusted)
        self.workflows.trust_changed(rec.id, rec.trusted)
        log.info("node trust set by operator", extra=kv(node=rec.name, id=rec.id, trusted=rec.trusted))
        return convert.node_to_pb(rec, self.registry.age(rec))

    @handle_errors
    async def RemoveNode(self, request, context):
        self._entry_lists.clear()                       # an operator's decision shows at once
        rec = self.registry.remove(request.node)
        log.warning("node removed by operator: its tokens are revoked and its key refused",
                    extra=kv(node=rec.name, id=rec.id))
        return convert.node_to_pb(rec, self.registry.age(rec))

    # ------------------------------------------------------------------ workflows
    def _status(self, rec):
        wm = self.workflows
        try:
            profiles = wm.profiles_view(rec)
        except AtollError:
            profiles = []
        return convert.workflow_status(rec, wm.replica_views(rec), profiles, wm.autoscaler.cold_starts_of(rec.name),
                                       wm.autoscaler.decisions_of(rec.name))

    @handle_errors
    async def SubmitWorkflow(self, request, context):
        rec = await self.workflows.submit(request.spec_yaml, request.filename, request.dry_run,
                                    tenant=auth.caller_tenant())
        return self._status(rec) if not request.dry_run else convert.planned_status(rec)

    @handle_errors
    async def ListWorkflows(self, request, context):
        recs = sorted(self.workflows.records.values(), key=lambda r: r.name)
        return convert.workflow_list([(rec, self.workflows.replica_views(rec)) for rec in recs
                                      if auth.visible(rec.tenant)])

    @handle_errors
    async def GetWorkflow(self, request, context):
        return self._status(self.workflows.get(request.name))

    @handle_errors
    async def DeleteWorkflow(self, request, context):
        self.workflows.delete(request.name)
        return convert.deleted()

    @handle_errors
    async def Invoke(self, request, context):
        """Forwarded to an agent's entry in the workflow's source region (the data plane runs it);
        the caller must see the workflow, and a workflow at zero is woken here at once."""
        if request.timeout_seconds > MAX_TIMEOUT_S:
            raise InvalidArgument(f"timeout_seconds must be at most {MAX_TIMEOUT_S:g}, got {request.timeout_seconds:g}")
        timeout = request.timeout_seconds if request.timeout_seconds > 0 else DEFAULT_TIMEOUT
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        if timeout <= 0 or timeout != timeout:
            raise InvalidArgument("timeout_seconds must be > 0")
        if not 0 <= request.max_tokens <= MAX_TOKENS_LIMIT:
            raise InvalidArgument(f"max_tokens must be in 0..{MAX_TOKENS_LIMIT} (0: the spec's), "
                                  f"got {request.max_tokens}")
        there = admit(self.workflows, request.workflow)
        t0 = time.monotonic()
        outcome = "error"
        try:
            caller = auth.current.get()
            async for msg in self.forwarder.invoke(invocation_from_pb(request), region=there.region, timeout=timeout,
                                                   metadata=context.invocation_metadata() or (),
                                                   caller=caller if isinstance(caller, auth.Identity) else None):
                yield msg
            outcome = "ok"
        finally:
            if self.metrics is not None:
                self.metrics.forwarded.labels(request.workflow[:64], outcome).inc()
                self.metrics.forward_seconds.labels(request.workflow[:64]).observe(time.monotonic() - t0)

    @handle_errors
    async def ListEntries(self, request, context):
        trusted = False
        if request.workflow:
            self.workflows.get(request.workflow)       # NOT_FOUND unless the caller sees it
            trusted = self.workflows.spec(request.workflow).placement.trusted_only
        caller = auth.current.get()
        ident = caller if isinstance(caller, auth.Identity) and self.mint is not None else None
        now = self.clock()
        key = (ident, trusted)
        got = self._entry_lists.get(key)
        if got is None or got.until <= now:
            found = self.entries("", request.workflow)
            if ident is not None:
                found = [dataclasses.replace(e, token=self.mint(ident, e.node_id)) for e in found]
            if len(self._entry_lists) >= MAX_ENTRY_LISTS:
                self._entry_lists = {k: v for k, v in self._entry_lists.items() if v.until > now}
                if len(self._entry_lists) >= MAX_ENTRY_LISTS:
                    self._entry_lists.clear()
            got = self._entry_lists[key] = _EntryList(now + ENTRY_LIST_FRESH_S, found,
                                                      frozenset(e.region for e in found))
        return got.answer(request.region)

    # ------------------------------------------------------------------ API keys
    @handle_errors
    async def CreateKey(self, request, context):
        info, key = self.keys.create(request.tenant, request.role or "user", auth.current.get())
        log.info("api key created", extra=kv(id=info["id"], tenant=info["tenant"], role=info["role"]))
        return convert.created_key(info, key)

    @handle_errors
    async def ListKeys(self, request, context):
        return convert.key_list(self.keys.list(auth.current.get()))

    @handle_errors
    async def RevokeKey(self, request, context):
        info = self.keys.revoke(request.id, auth.current.get())
        log.info("api key revoked", extra=kv(id=info["id"], tenant=info["tenant"]))
        return convert.key_info(info)

    # ------------------------------------------------------------------ join tokens
    @handle_errors
    async def CreateJoinToken(self, request, context):
        info, token = self.registry.tokens.create(list(request.tiers), list(request.regions), request.trusted,
                                                  request.ttl_seconds, request.uses)
        log.info("join token created", extra=kv(id=info["id"], tiers=",".join(info["tiers"]) or "any",
                                                 regions=",".join(info["regions"]) or "any",
                                                 trusted=info["trusted"]))
        return convert.created_join_token(info, token)

    @handle_errors
    async def ListJoinTokens(self, request, context):
        return convert.join_token_list(self.registry.tokens.list())

    @handle_errors
    async def RevokeJoinToken(self, request, context):
        self._entry_lists.clear()
        info = self.registry.tokens.revoke(request.id)
        log.info("join token revoked", extra=kv(id=info["id"]))
        return convert.join_token_info(info)

    @handle_errors
    async def Profile(self, request, context):
        res = await profile_variant(self.workflows, self.workers, request.workflow, request.task,
                                    request.variant, request.node, request.requests or 16, request.concurrency or 8,
                                    tenant=auth.caller_tenant())
        return convert.profile_response(res)
