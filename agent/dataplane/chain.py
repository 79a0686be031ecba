"""Run one request from a stage to the end of its route, handing it from agent to agent.

:meth:`DataPlane.run` takes a compiled route, the index of the stage to run next, the outputs of
the stages before it that later stages read, and the request's text. For each stage in
topological order it picks a replica (:mod:`.table`: the plan's location from where the input
is, then a replica by weight) and:

- the replica is on this host: the stage runs here, on this agent's engine, in process;
- it is the last stage: this agent calls that replica's Worker and streams its answer back;
- otherwise: this agent hands the request on (``DataPlane.Forward`` on the replica's agent,
  which runs the stage and then goes on the same way) and passes the answer back.

So every stage's output goes from the replica that produced it straight to a replica of the
stage that reads it, over the plan's paths; only the last stage's answer travels back to the
entry. A replica that fails before answering (unreachable, lost, overloaded, no longer holding
the model) is excluded for a while and the stage is retried on another one; when none is left
to try (every replica lost, their replacements still starting) the request waits for the
routing state to bring one, up to its deadline, as a request to a workflow woken from zero
does. A stage after the next one failing is that stage's agent's business (it retried
already), so its error passes back unchanged, naming the stage. A stream cut after its first token is not retried.

Settings: every stage runs with its spec's settings, the last one with the request's laid over
them (:func:`sampling`: ``n`` choices, seed, ``top_p``, stop strings added, logprobs, token budget
and temperature); an entry stage of a chat request sends the chat, its last user message through
the stage's template (:func:`stage_chat`), and token ids stand for an entry stage's prompt when
the request sent them. Every choice of the last stage comes back (:class:`Outcome`).

Bytes: each stage's input is counted by the agent that sends it, per (this region, the
replica's region); the answers coming back are counted apart (``atoll_result_bytes_sent``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Mapping, Protocol, Sequence

import grpc

from atoll.agent.dataplane import hedge
from atoll.agent.dataplane.metrics import DataPlaneMetrics
from atoll.agent.dataplane.table import CompiledRoute, CompiledStage, Exclusions, InFlight, prefer_local
from atoll.agent.dataplane.trace import Span
from atoll.core.apikeys import header
from atoll.core.credentials import PROOF_METADATA
from atoll.core.errors import (REQUEST_FAULT, AtollError, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                               Unavailable, request_fault)
from atoll.core.logs import kv
from atoll.core.rpc import CODE_BY_NAME, error_from_rpc
from atoll.specs.routing import Endpoint, RoutingState, Stage, may_carry
from atoll.wire.dataplane import (NO_SINK, Chat, ChoiceDone, Sink, StageDone, answer_from_pb, dataplane_stub,
                                  forward_request)
from atoll.wire.worker import Delta, Embedding, WorkerClient

log = logging.getLogger("atoll.agent")

RETRYABLE = {"UNAVAILABLE", "CANCELLED", "INTERNAL", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "NOT_FOUND",
             "UNKNOWN", "ABORTED", "DEADLINE_EXCEEDED"}
FAILED_STAGE = "atoll-failed-stage"       # trailing metadata: the stage whose failure this is
MAX_TEXT = 200_000
NO_REPLICA_POLL_S = 0.1     # how often a request with no replica to try looks for a new one ...
NO_REPLICA_MARGIN_S = 0.5   # ... until this long before its deadline, so its caller hears why


def parse_input(raw: str) -> str:
    """``{"text": ...}`` / ``{"prompt": ...}`` / a JSON string -> the request's text."""
    try:
        val = json.loads(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"input is not JSON: {exc.msg} at position {exc.pos}",
                              hint='pass --input \'{"text": "..."}\'') from None
    if isinstance(val, str):
        text = val
    elif isinstance(val, dict) and isinstance(val.get("text", val.get("prompt")), str):
        text = val.get("text", val.get("prompt"))
    else:
        raise InvalidArgument("input must be a JSON object with a string field 'text' (or a JSON string)",
                              hint='for example --input \'{"text": "hello"}\'')
    if not text.strip():
        raise InvalidArgument("input text is empty")
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"input text has {len(text)} characters, at most {MAX_TEXT}")
    return text


class LocalWorker(Protocol):
    """This host's engine, called in process (the same work as its Worker service)."""

    def generate(self, prompt: str | Sequence[int], *, adapter: str, max_tokens: int | None, temperature: float,
                 stop: Sequence[str], top_p: float = 1.0, seed: int | None = None, n: int = 1,
                 logprobs: bool = False, top_logprobs: int = 0, timeout: float,
                 messages: Sequence[Mapping[str, str]] | None = None) -> AsyncIterator[Delta]: ...

    async def embed(self, text: str, *, adapter: str, timeout: float) -> Embedding: ...

    # optional: ``in_flight``, the requests the engine serves now from every caller; with it, a
    # replica on this host is preferred to the plan's pick while it is not the busier one


@dataclass(frozen=True)
class NodeSelf:
    """This agent as routes name it."""

    node_id: str = ""
    name: str = ""
    region: str = ""
    tier: str = ""


@dataclass
class Request:
    """One request on its way through a route (the parts every hop shares)."""

    workflow: str
    text: str
    deadline: float                      # monotonic
    span: Span
    stream: bool = False
    sink: Sink = NO_SINK                 # this request's settings for the last stage
    tenant: str = ""
    messages: Chat | None = None         # a chat: the entry stages send it (see stage_chat)
    prompt_ids: tuple[int, ...] = ()     # the input as token ids: the entry stages send them as they are


Usage = tuple[int, int, int]        # one stage run's output bytes, prompt tokens and completion tokens


@dataclass
class Outcome:
    output: object                       # the sink's text (its choice 0's), or its embedding
    stages: list[StageDone] = field(default_factory=list)
    choices: list[ChoiceDone] = field(default_factory=list)     # an llm sink's


def peer_metadata(token: str, proof: str = "") -> tuple[tuple[str, str], ...]:
    """What an agent presents to another agent's Worker and DataPlane services: its node token
    (``token``, from the coordinator over the heartbeat stream) and its node key's proof for
    that callee (``proof``, :func:`atoll.core.credentials.make_call_proof`), which the other
    agent's :class:`~atoll.agent.guard.WorkerGuard` checks against the authorization table, on
    top of the channel's mutual TLS when configured. None held yet: nothing (the call is refused)."""
    if not token:
        return ()
    return (("authorization", "Bearer " + token),) + (((PROOF_METADATA, proof),) if proof else ())


def fail(cls: type[AtollError], message: str, stage: str, hint: str = "") -> AtollError:
    exc = cls(message, hint=hint) if hint else cls(message)
    exc.stage = stage          # which stage failed (a Forward answers it in trailing metadata)
    return exc


def _stage_of(exc: grpc.aio.AioRpcError) -> str:
    return header(exc.trailing_metadata(), FAILED_STAGE)


class DataPlane:
    def __init__(self, node: Callable[[], NodeSelf], local: LocalWorker | None, workers: WorkerClient,
                 metrics: DataPlaneMetrics, exporter=None, local_address: Callable[[], str] = lambda: "",
                 peer_token: Callable[[], str] = lambda: "", peer_proof: Callable[[str], str] = lambda node_id: ""):
        """``peer_token()``: this node's current node token; ``peer_proof(node id)``: its proof
        for that callee (see :func:`peer_metadata`)."""
        self.node, self.local, self.workers = node, local, workers
        self.peer_token, self.peer_proof = peer_token, peer_proof
        self.metrics, self.exporter = metrics, exporter
        self.local_address = local_address
        self.state = RoutingState()
        self.compiled: dict[str, CompiledRoute] = {}
        self.excluded = Exclusions()
        self.in_flight = InFlight()                 # this agent's calls to replicas now (backlog rule)
        self.hedged: dict[str, int] = {}            # replica id -> this agent's hedged calls there now
        self.rng = random.Random()                  # where this agent's pick cycles start (table.py)
        self.first_delta = hedge.FirstDeltaTimes()  # when a last stage's call is hedged (hedge.py)
        self.hedges = hedge.Budget()
        self.updated = time.monotonic()

    # -- routing state ----------------------------------------------------------------------
    def set_routing(self, state: RoutingState) -> None:
        """Take a new routing state (compiled here, off the requests' path)."""
        old = self.compiled
        self.compiled = {name: (old[name] if name in old and old[name].route == r else CompiledRoute(r, self.rng))
                         for name, r in state.routes.items()}
        self.state = state
        self.updated = time.monotonic()
        self.metrics.workflows.set(len(state.routes))

    def _is_local(self, ep: Endpoint, me: NodeSelf | None = None) -> bool:
        """Is ``ep`` on this host? (``me``: this node, when the caller has it at hand.)"""
        me = me if me is not None else self.node()
        return self.local is not None and ((me.node_id and ep.node_id == me.node_id)
                                           or (ep.address and ep.address == self.local_address()))

    # -- running ----------------------------------------------------------------------------
    async def run(self, cr: CompiledRoute, k: int, req: Request, outputs: dict[str, str], from_location: str,
                  on_delta: Callable[[Delta], Awaitable[None]] | None, first: Endpoint | None = None) -> Outcome:
        """Run stages ``k..`` of ``cr`` (``first``: the replica of stage ``k``, already chosen by
        the agent that handed the request here)."""
        me = self.node()
        if not may_carry(cr.route, me.tier):
            raise fail(FailedPrecondition, f"workflow {cr.route.workflow!r} runs on trusted hosts only, and this "
                       "host is a renter", cr.stages[k].stage.task)
        runs: list[StageDone] = []
        while True:
            cs = cr.stages[k]
            last = k == len(cr.stages) - 1
            text, entry_stage = self._input(cs, req.text, outputs)
            chat = req.messages if entry_stage else None
            ids = req.prompt_ids if entry_stage else ()
            size = 4 * len(ids) if ids else len(text.encode())
            tried: set[str] = set()
            refused: set[str] = set()            # replicas on hosts that may not carry this route
            attempts = 0
            t0 = time.monotonic()
            last_err = ""
            fault: tuple[str, str] | None = None  # (code, details) of the request's own fault on a replica
            while True:
                left = req.deadline - time.monotonic()
                if left <= 0:
                    raise fail(DeadlineExceeded, f"deadline passed in stage {cs.stage.task} after {attempts} "
                               "attempt(s)" + (f"; last error: {last_err}" if last_err else ""), cs.stage.task)
                ep = first if first is not None else self._pick(cr, cs, from_location, tried, me)
                if ep is None and fault is not None:     # the request failed where it ran: no use waiting
                    raise request_fault(fail(type(error_from_rpc(_Coded(*fault))), f"stage {cs.stage.task}: "
                                             f"{fault[1]}", cs.stage.task))
                if ep is None:
                    why = (f"all {len(cs.endpoints)} replica(s) failed; last error: {last_err}" if cs.endpoints
                           else "no ready replica")
                    until = req.deadline - NO_REPLICA_MARGIN_S
                    found = await self._replica_appears(cr, k, from_location, tried, refused, until)
                    if found is None and time.monotonic() >= until:
                        raise fail(DeadlineExceeded, f"stage {cs.stage.task}: {why}, and no other replica became "
                                   "ready before the deadline", cs.stage.task, hint="see `atoll status`")
                    if found is None:
                        raise fail(Unavailable, f"stage {cs.stage.task}: {why}", cs.stage.task,
                                   hint="see `atoll status`")
                    cr, ep = found
                    cs = cr.stages[k]
                if not may_carry(cr.route, ep.tier):
                    tried.add(ep.replica_id)
                    refused.add(ep.replica_id)
                    continue
                attempts += 1
                if attempts > 1:
                    self.metrics.series(self.metrics.retries, cr.route.workflow, cs.stage.task).inc()
                started = [False]
                served = ep
                self.in_flight.add(ep)
                try:
                    if last and first is None and cs.stage.kind != "embedding":
                        self._count(cr, me.region, ep.region, size)
                        out, usage, served = await self._run_last(cr, cs, ep, ids or text, req, chat, on_delta,
                                                                  started, tried, from_location, me, size)
                        if not self._is_local(served, me):
                            self.metrics.series(self.metrics.result_bytes, cr.route.workflow, served.region,
                                                me.region).inc(_size(out))
                    elif self._is_local(ep, me):
                        self._count(cr, me.region, ep.region, size)
                        out, usage = await self._run_local(cs, ep, ids or text, req, left, last, chat,
                                                           on_delta if last else None, started, me)
                    elif last:
                        self._count(cr, me.region, ep.region, size)
                        out, usage = await self._run_remote(cs, ep, ids or text, req, left, chat, on_delta,
                                                            started, me)
                        self.metrics.series(self.metrics.result_bytes, cr.route.workflow, ep.region,
                                            me.region).inc(_size(out))
                    else:
                        res = await self._forward(cr, k, ep, req, outputs, left, on_delta, started)
                        res.stages[:0] = runs
                        return res
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    last_err = f"{ep.node_name}: {code}: {exc.details()}"
                    failed = _stage_of(exc)
                    if failed and failed != cs.stage.task:        # a later stage's agent gave up
                        raise fail(type(error_from_rpc(exc)), exc.details() or code, failed) from None
                    self.metrics.stage_errors.labels(cr.route.workflow, cs.stage.task, code).inc()
                    own = header(exc.trailing_metadata(), REQUEST_FAULT) == "request"
                    self._retry_or_raise(cs, ep, code, exc.details() or "", started[0], tried, first is not None,
                                         refused if own else None)
                    fault = (code, exc.details() or "") if own else fault
                    continue
                except AtollError as exc:
                    if getattr(exc, "stage", cs.stage.task) != cs.stage.task:
                        raise
                    last_err = f"{ep.node_name}: {exc.code}: {exc.message}"
                    self.metrics.stage_errors.labels(cr.route.workflow, cs.stage.task, exc.code).inc()
                    self._retry_or_raise(cs, ep, exc.code, exc.message, started[0], tried, first is not None,
                                         refused if exc.request_fault else None)
                    fault = (exc.code, exc.message) if exc.request_fault else fault
                    continue
                finally:
                    self.in_flight.done(ep)
                break
            ep = served
            run = StageDone(cs.stage.task, ep.variant, ep.node_name, ep.region, time.monotonic() - t0, attempts,
                            *usage)
            runs.append(run)
            self.metrics.series(self.metrics.stage_seconds, cr.route.workflow, cs.stage.task).observe(run.seconds)
            if last:
                return Outcome(out[0].text, runs, out) if _chosen(out) else Outcome(out, runs)
            outputs[cs.stage.task] = out[0].text if _chosen(out) else out
            from_location = ep.location
            first = None
            k += 1

    def _pick(self, cr: CompiledRoute, cs: CompiledStage, from_location: str, tried: set[str],
              me: NodeSelf) -> Endpoint | None:
        """The plan's pick for stage ``cs``, or this host's replica in the same location when it
        is not the busier one (:func:`~atoll.agent.dataplane.table.prefer_local`)."""
        ep = cr.pick(cs, from_location, tried, self.excluded, self.in_flight)
        load = getattr(self.local, "in_flight", None)
        if ep is None or load is None:
            return ep
        if cs.mine is None or cs.mine[0] != me:
            cs.mine = (me, {e.location: e for e in cs.endpoints if self._is_local(e, me)})
        local = cs.mine[1].get(ep.location)
        if local is None or local.replica_id in tried or self.excluded.has(local.replica_id):
            return ep
        return prefer_local(ep, local, load, self.in_flight)

    async def _replica_appears(self, cr: CompiledRoute, k: int, from_location: str, tried: set[str],
                               refused: set[str], deadline: float) -> tuple[CompiledRoute, Endpoint] | None:
        """Wait until the routing state offers a replica of stage ``k`` this request has not tried
        (replacements for lost replicas, or one whose exclusion lapsed): (the newest compiled
        route, that replica). None at the deadline, or at once when ``cr`` is not a workflow's
        route here (an adapter's route) or the workflow is gone or changed its stages."""
        task = cr.stages[k].stage.task
        while True:
            now = self.compiled.get(cr.route.workflow)
            if now is None or (now is not cr and (len(now.stages) <= k or now.stages[k].stage.task != task)):
                return None
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(min(NO_REPLICA_POLL_S, max(0.0, deadline - time.monotonic())))
            tried.difference_update([r for r in tried if r not in refused and not self.excluded.has(r)])
            now = self.compiled.get(cr.route.workflow)
            if now is not None and len(now.stages) > k and now.stages[k].stage.task == task:
                ep = now.pick(now.stages[k], from_location, tried, self.excluded, self.in_flight)
                if ep is not None:
                    return now, ep

    def _retry_or_raise(self, cs: CompiledStage, ep: Endpoint, code: str, details: str, started: bool,
                        tried: set[str], pinned: bool, refused: set[str] | None = None) -> None:
        """Go on to another replica, or raise. ``pinned``: the replica was chosen by the agent that
        handed the request here; it retries elsewhere itself, so its failure goes back to it.
        ``refused`` (the request's own fault, :func:`~atoll.core.errors.request_fault`): this
        request does not go back to the replica, but the replica stays in rotation for others."""
        task = cs.stage.task
        if started:
            raise fail(Unavailable, f"stage {task}: the stream from {ep.node_name} was cut off after its first "
                       "tokens; the partial output was not retried", task)
        if code not in RETRYABLE:             # the request's own fault: the same error anywhere
            raise fail(type(error_from_rpc(_Coded(code, details))), f"stage {task}: {details}", task)
        if pinned:
            exc = fail(type(error_from_rpc(_Coded(code, details))), f"stage {task} on {ep.node_name}: {details}", task)
            raise request_fault(exc) if refused is not None else exc
        tried.add(ep.replica_id)
        if refused is not None:
            refused.add(ep.replica_id)
            return
        self.excluded.add(ep.replica_id)
        self.metrics.excluded.set(len(self.excluded.active()))
        log.info("replica excluded", extra=kv(replica=ep.replica_id, node=ep.node_name, code=code,
                                              error=details[:200]))

    @staticmethod
    def _input(cs: CompiledStage, text: str, outputs: Mapping[str, str]) -> tuple[str, bool]:
        """(the stage's input, whether it is the request's own: an entry stage)."""
        parts = []
        for p in cs.stage.parents:
            if p in outputs:
                if not isinstance(outputs[p], str):
                    raise fail(FailedPrecondition, f"stage {cs.stage.task} needs text but {p} produced a tensor",
                               cs.stage.task)
                parts.append(outputs[p])
        return ("\n".join(parts), False) if parts else (text, True)

    def _count(self, cr: CompiledRoute, a: str, b: str, n: int) -> None:
        self.metrics.series(self.metrics.bytes_sent, cr.route.workflow, a, b).inc(n)

    def _stream(self, cs: CompiledStage, ep: Endpoint, text, req: Request, chat, me: NodeSelf,
                sink: Sink | None = None) -> AsyncIterator[Delta]:
        """Stage ``cs``'s call to replica ``ep`` (this host's engine, or its Worker), as deltas;
        ``sink``: the request's settings laid over the stage's (default ``req.sink``, the last stage's)."""
        st = cs.stage
        prompt = fill(st, text)
        s = sampling(st, req.sink if sink is None else sink)
        left = max(0.001, req.deadline - time.monotonic())
        if self._is_local(ep, me):
            return self.local.generate(prompt, adapter=ep.adapter, timeout=left,
                                       messages=stage_chat(st, prompt, chat), **s)
        self.metrics.series(self.metrics.hops, "out").inc()
        return self.workers.generate(ep.address, prompt, adapter=ep.adapter, timeout=left,
                                     metadata=req.span.metadata() + self._peer(ep),
                                     messages=stage_chat(st, prompt, chat),
                                     on_load=lambda n: self.in_flight.report(ep.replica_id, n),
                                     on_waiting=lambda n: self.in_flight.report_waiting(ep.replica_id, n), **s)

    def _peer(self, ep: Endpoint) -> tuple[tuple[str, str], ...]:
        """This node's credentials for a call to ``ep``'s node: its token and its proof for it."""
        return peer_metadata(self.peer_token(), self.peer_proof(ep.node_id))

    def _free(self, ep: Endpoint, me: NodeSelf) -> bool:
        """May a hedge go to ``ep``: it would start there at once. So: fewer than ``hedge.HEDGES_PER_REPLICA``
        of this agent's hedges there now, and either no request there without a first token (by
        its last report, or this host's engine by its own count: its batch has room), or, where
        that is not known, none of this agent's calls there and at most one request by its last
        report."""
        if self.hedged.get(ep.replica_id, 0) >= hedge.HEDGES_PER_REPLICA:
            return False
        waiting = (getattr(self.local, "waiting", None) if self._is_local(ep, me)
                   else self.in_flight.waiting(ep.replica_id))
        if waiting is not None:
            return waiting == 0
        if self.in_flight.replicas.get(ep.replica_id, 0):
            return False
        if self._is_local(ep, me):
            return getattr(self.local, "in_flight", 0) <= 1
        return self.in_flight.load(ep.replica_id) <= 1

    async def _run_last(self, cr: CompiledRoute, cs: CompiledStage, ep: Endpoint, text, req: Request, chat,
                        on_delta, started, tried: set[str], from_location: str,
                        me: NodeSelf, size: int) -> tuple[object, Usage, Endpoint]:
        """The last stage on ``ep``, hedged (:mod:`.hedge`): with no first token after a while, the
        same call goes to an idle replica too and the first to answer serves (a hedge's ``size``
        input bytes are counted like the first call's). Returns its output, usage and the replica
        that served."""
        key = (cr.route.workflow, cs.stage.task)
        self.hedges.earn()
        extra: list[Endpoint] = []

        def second() -> tuple[Endpoint, AsyncIterator[Delta]] | None:
            if self.hedges.tokens < 1.0 or time.monotonic() >= req.deadline:
                return None
            alt = cr.pick(cs, from_location, tried | {ep.replica_id}, self.excluded, self.in_flight)
            if alt is None or alt.replica_id == ep.replica_id or not may_carry(cr.route, alt.tier) \
                    or not self._free(alt, me) or not self.hedges.spend():
                # the pick took its turn in the plan's cycles all the same: counted, so that what
                # moved requests off the plan's picks can be told (docs/operations.md)
                self.metrics.series(self.metrics.hedges, cr.route.workflow, cs.stage.task, "unsent").inc()
                return None
            extra.append(alt)
            self.in_flight.add(alt)
            self.hedged[alt.replica_id] = self.hedged.get(alt.replica_id, 0) + 1
            self._count(cr, me.region, alt.region, size)
            self.metrics.series(self.metrics.hedges, cr.route.workflow, cs.stage.task, "sent").inc()
            log.info("call hedged", extra=kv(workflow=cr.route.workflow, task=cs.stage.task, replica=ep.replica_id,
                                             node=ep.node_name, hedge=alt.replica_id, hedge_node=alt.node_name))
            return alt, self._stream(cs, alt, text, req, chat, me)

        t0 = time.monotonic()
        try:
            won, first_delta, stream = await hedge.race(self._stream(cs, ep, text, req, chat, me),
                                                        self.first_delta.after(key), second)
            if won is None:
                self.first_delta.add(key, time.monotonic() - t0)
            else:
                self.metrics.series(self.metrics.hedges, cr.route.workflow, cs.stage.task, "won").inc()
            served = won if won is not None else ep
            out, usage = await self._collect(hedge.stream_from(first_delta, stream), sampling(cs.stage, req.sink)["n"],
                                             cs.stage.task, served, on_delta, started)
            return out, usage, served
        finally:
            for alt in extra:
                self.in_flight.done(alt)
                left = self.hedged.get(alt.replica_id, 1) - 1
                if left > 0:
                    self.hedged[alt.replica_id] = left
                else:
                    self.hedged.pop(alt.replica_id, None)

    async def _run_local(self, cs, ep, text, req, left, last, chat, on_delta, started, me) -> tuple[object, Usage]:
        st = cs.stage
        if st.kind == "embedding":
            emb = await self.local.embed(fill(st, text), adapter=ep.adapter, timeout=left)
            return emb.vector, (4 * len(emb.vector), emb.tokens, 0)
        sink = req.sink if last else NO_SINK
        return await self._collect(self._stream(cs, ep, text, req, chat, me, sink), sampling(st, sink)["n"], st.task,
                                   ep, on_delta, started)

    async def _run_remote(self, cs, ep, text, req, left, chat, on_delta, started, me) -> tuple[object, Usage]:
        st = cs.stage
        if st.kind == "embedding":
            self.metrics.series(self.metrics.hops, "out").inc()
            emb = await self.workers.embed(ep.address, fill(st, text), adapter=ep.adapter, timeout=left,
                                           metadata=req.span.metadata() + self._peer(ep))
            return emb.vector, (4 * len(emb.vector), emb.tokens, 0)
        return await self._collect(self._stream(cs, ep, text, req, chat, me), sampling(st, req.sink)["n"], st.task,
                                   ep, on_delta, started)

    @staticmethod
    async def _collect(deltas: AsyncIterator[Delta], n: int, task: str, ep: Endpoint, on_delta,
                       started) -> tuple[list[ChoiceDone], Usage]:
        """Stage ``task``'s ``n`` choices from replica ``ep``, each delta passed on to ``on_delta``
        as it comes."""
        texts: list[list[str]] = [[] for _ in range(n)]
        lps: list[list] = [[] for _ in range(n)]
        reasons, tokens = [""] * n, [0] * n
        pt = 0
        async for d in deltas:
            if not 0 <= d.index < n:
                raise Unavailable(f"stage {task}: {ep.node_name} answered choice {d.index} of {n}")
            pt, tokens[d.index] = max(pt, d.prompt_tokens), max(tokens[d.index], d.completion_tokens)
            lps[d.index].extend(d.logprobs)
            if d.text:
                texts[d.index].append(d.text)
            if d.finished:
                reasons[d.index] = d.finish_reason
            if on_delta is not None and (d.text or d.logprobs):
                started[0] = True
                await on_delta(d)
        choices = [ChoiceDone(i, "".join(texts[i]), reasons[i] or "stop", tokens[i], tuple(lps[i])) for i in range(n)]
        return choices, (len(choices[0].text.encode()), pt, sum(tokens))

    async def _forward(self, cr, k, ep, req, outputs, left, on_delta, started) -> Outcome:
        reads, needs_text = cr.needs[k]
        carried = {t: v for t, v in outputs.items() if t in reads}
        payload = sum(len(v.encode()) for v in carried.values()) + (
            (4 * len(req.prompt_ids) or len(req.text.encode())) if needs_text else 0)
        me = self.node()
        self._count(cr, me.region, ep.region, payload)
        msg = forward_request(workflow=cr.route.workflow, task=cr.stages[k].stage.task, replica_id=ep.replica_id,
                              outputs=carried, text=req.text if needs_text else "", stream=on_delta is not None,
                              sink=req.sink, messages=req.messages if needs_text else None,
                              request_id=req.span.request_id, tenant=req.tenant,
                              prompt_ids=req.prompt_ids if needs_text else ())
        self.metrics.series(self.metrics.hops, "out").inc()
        call = dataplane_stub(self.workers.channel(ep.address)).Forward(
            msg, timeout=left, metadata=req.span.metadata() + self._peer(ep))
        back = 0
        async for resp in call:
            ans = answer_from_pb(resp)
            back += resp.ByteSize()
            if ans.done:
                self.metrics.series(self.metrics.result_bytes, cr.route.workflow, ep.region, me.region).inc(back)
                return Outcome(ans.output.get("text", ans.output.get("embedding")), ans.stages, ans.choices)
            if on_delta is not None and (ans.delta.text or ans.delta.logprobs):
                started[0] = True
                await on_delta(ans.delta)
        raise fail(Unavailable, f"stage {cr.stages[k].stage.task}: {ep.node_name} closed the call without an "
                   "answer", cr.stages[k].stage.task)


class _Coded(grpc.RpcError):
    """A status code and details as ``error_from_rpc`` reads them."""

    def __init__(self, code: str, details: str):
        self._code, self._details = CODE_BY_NAME.get(code, grpc.StatusCode.UNKNOWN), details

    def code(self):
        return self._code

    def details(self):
        return self._details


MAX_PROMPT_CHARS = 1_000_000     # a filled prompt (a template may name {input} several times)


def fill(stage: Stage, text: str | tuple[int, ...]) -> str | tuple[int, ...]:
    """The stage's prompt: its template filled with ``text``; token ids (which only a stage taking
    its input as it is receives: :func:`takes_ids`) go as they are. The size is checked before the
    prompt is built: a template that repeats ``{input}`` thousands of times turned one request
    into a prompt of hundreds of millions of characters on the serving host."""
    if not isinstance(text, str):
        return text
    if not stage.prompt:
        size = len(text)
    else:
        copies = stage.prompt.count("{input}")
        size = len(stage.prompt) + copies * (len(text) - len("{input}"))
    if size > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"stage {stage.task}: its prompt would be {size} characters with this input; at most "
                              f"{MAX_PROMPT_CHARS}", hint="send a shorter input, or name {input} fewer times")
    return stage.prompt.replace("{input}", text) if stage.prompt else text


def takes_ids(stage: Stage) -> bool:
    """May the request's token ids stand for this entry stage's prompt? Only when the stage sends
    its input unchanged, as text."""
    return stage.kind == "llm" and stage.prompt in ("", "{input}") and not stage.chat


def sampling(stage: Stage, sink: Sink) -> dict:
    """The generation settings of ``stage``: its own, with ``sink`` (one request's settings for
    the last stage; ``NO_SINK`` for the others) laid over them."""
    mt = None if sink.no_max_tokens else (sink.max_tokens or stage.max_tokens)
    return {"max_tokens": mt, "temperature": stage.temperature if sink.temperature is None else sink.temperature,
            "stop": tuple(dict.fromkeys(stage.stop + sink.stop)),
            "top_p": 1.0 if sink.top_p is None else sink.top_p, "seed": sink.seed, "n": max(1, sink.n),
            "logprobs": sink.logprobs, "top_logprobs": sink.top_logprobs}


def stage_chat(stage: Stage, prompt: str, messages: Sequence[Mapping[str, str]] | None) -> list[dict] | None:
    """The chat a stage sends, or None to send ``prompt`` as text: the serving agent renders it
    with its model's own chat template. An entry stage of a chat request (``messages``) sends
    the request's chat with its last user message replaced by ``prompt`` (the stage's template
    filled with it); any stage marked ``chat`` sends ``prompt`` as one user message."""
    if stage.kind != "llm":
        return None
    if messages:
        out = [dict(m) for m in messages]
        last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
        if last is None:
            return out + [{"role": "user", "content": prompt}]
        out[last]["content"] = prompt
        return out
    return [{"role": "user", "content": prompt}] if stage.chat else None


def _chosen(out: object) -> bool:
    return isinstance(out, list) and bool(out) and isinstance(out[0], ChoiceDone)


def _size(out: object) -> int:
    if _chosen(out):
        return sum(len(c.text.encode()) for c in out)
    return len(out.encode()) if isinstance(out, str) else 4 * len(out)
