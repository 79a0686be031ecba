"""The data plane: run one request through a workflow's stages.

For each stage in topological order, the router builds the stage's input from its parents'
outputs (the prompt template's ``{input}``) and picks a replica the way the plan routes flows:
first the replica's location, by the plan's flow rates from the location the input comes from
(the source's, or the parent stage's replica's), then a replica inside that location by its
weight. Both choices use smooth weighted round-robin, so over N requests every share is within
one request of its weight, unless the replica chosen is backlogged: when, with this request, it
would hold more than ``BACKLOG_RATIO`` times its weight's share of this router's calls in flight to
the location plus ``BACKLOG_SLACK``, the replica with the fewest calls per unit of weight serves
instead (after a replica is lost, or while new ones start, the survivors' queues drain instead of
growing; replicas that keep up keep their planned shares). It calls that agent's Worker
service with the time left before the request's deadline. A replica that fails (unreachable,
lost, overloaded, not ready) is excluded and the stage is retried on another replica; when every
replica has failed the caller gets a clear error. Streaming requests stream the last stage's
tokens; a stream that breaks after its first token cannot be retried and says so.

Bytes are counted per (from region, to region) pair: the request's input from the source's
region to the first stage's replica, and every stage's output to the replica of the stage that
consumes it — the same flows the planner priced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Sequence

import grpc

from atoll.core.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from atoll.core.rpc import error_from_rpc
from atoll.specs.routing import Endpoint, Route, Stage, unbacklogged
from atoll.wire.worker import Delta, TokenLogprob, WorkerClient

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
             grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
             grpc.StatusCode.DEADLINE_EXCEEDED}


class SmoothWRR:
    """Smooth weighted round-robin (as in nginx): deterministic, shares follow the weights."""

    def __init__(self):
        self._cur: dict[tuple, dict[str, float]] = {}

    def pick(self, key: tuple, items: list[tuple[str, float]]) -> str:
        cur = self._cur.setdefault(key, {})
        total = sum(w for _, w in items)
        best, best_val = None, None
        for name, w in items:
            cur[name] = cur.get(name, 0.0) + w
            if best_val is None or cur[name] > best_val:
                best, best_val = name, cur[name]
        cur[best] -= total
        return best


@dataclass
class StageRun:
    task: str
    variant: str = ""
    node_name: str = ""
    region: str = ""
    seconds: float = 0.0
    attempts: int = 0
    output_bytes: int = 0
    prompt_tokens: int = 0         # as the worker counted them (llm stages)
    completion_tokens: int = 0


@dataclass
class Choice:
    """One choice of the sink stage's answer (``n`` of them when the request asked for more)."""

    index: int
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Result:
    output: dict
    stages: list[StageRun] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)     # the sink's, for llm sinks

    @property
    def usage(self) -> dict:
        """OpenAI-style token usage of the sink (last) stage, every choice's tokens counted."""
        last = self.stages[-1] if self.stages else StageRun("")
        return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                "total_tokens": last.prompt_tokens + last.completion_tokens}


class Router:
    """Runs requests along routes (``atoll.coordinator.routing``), calling agents' Workers
    through ``workers`` (one :class:`~atoll.wire.worker.WorkerClient`, shared with the profiler;
    one is made with ``credentials`` when none is given)."""

    def __init__(self, metrics=None, credentials=None, workers: WorkerClient | None = None):
        self.metrics = metrics
        self.wrr = SmoothWRR()
        self.workers = workers if workers is not None else WorkerClient(credentials)
        self.in_flight: dict[str, int] = {}       # replica id -> this router's calls to it now

    async def close(self) -> None:
        await self.workers.close()

    def pick(self, endpoints: list[Endpoint], exclude: set[str], *, workflow: str = "", task: str = "",
             parent: str = "", from_location: str = "",
             flows: list[tuple[str, str, float]] | None = None) -> Endpoint | None:
        pool = [e for e in endpoints if e.replica_id not in exclude]
        if not pool:
            return None
        by_loc: dict[str, list[Endpoint]] = {}
        for e in pool:
            by_loc.setdefault(e.location, []).append(e)
        loc_w = {}
        for a, b, rate in flows or ():
            if a == from_location and b in by_loc and rate > 0:
                loc_w[b] = loc_w.get(b, 0.0) + rate
        if not loc_w:        # no flow from here in the plan (or it failed over): by replica weights
            for loc, eps in by_loc.items():
                loc_w[loc] = sum(max(e.weight, 1e-9) for e in eps)
        loc = self.wrr.pick((workflow, task, parent, from_location, "loc"), sorted(loc_w.items()))
        eps = by_loc[loc]
        rid = self.wrr.pick((workflow, task, loc, "replica"),
                            sorted((e.replica_id, max(e.weight, 1e-9)) for e in eps))
        chosen = next(e for e in eps if e.replica_id == rid)
        return unbacklogged(chosen, eps, self.in_flight)

    async def invoke(self, route: Route, text: str, *, deadline: float,
                     on_delta: Callable[[Delta], Awaitable[None]] | None = None,
                     messages: Sequence[Mapping[str, str]] | None = None) -> Result:
        """Run ``text`` through the route's stages; ``on_delta`` receives the sink's deltas as they
        come. ``messages``: the request is a chat whose last user message is ``text``; the
        entry stages then send the chat, that message filled into their prompt template."""
        outputs: dict[str, object] = {}
        regions: dict[str, str] = {}
        locations: dict[str, str] = {}
        runs: list[StageRun] = []
        choices: list[Choice] = []
        for stage in route.stages:
            parts = []
            for p in stage.parents:
                if p in outputs:
                    if not isinstance(outputs[p], str):
                        raise FailedPrecondition(f"stage {stage.task} needs text but {p} produced a tensor")
                    parts.append(outputs[p])
            stage_input = "\n".join(parts) if parts else text
            prompt = stage.prompt.replace("{input}", stage_input) if stage.prompt else stage_input
            chat = stage_chat(stage, prompt, messages if not parts else None)
            in_regions = [regions[p] for p in stage.parents if p in regions] or [route.source_region]
            last = stage.task == route.sink
            parent = next((p for p in stage.parents if p in locations), "")
            from_loc = locations.get(parent, route.source_location)
            flows = route.flows.get((parent or next(iter(stage.parents), ""), stage.task), [])
            out, run, region, loc = await self._run_stage(route, stage, prompt, deadline,
                                                          on_delta if (last and on_delta) else None,
                                                          parent, from_loc, flows, chat)
            in_bytes = len(stage_input.encode())
            for r in in_regions:   # parents' outputs (or the request) travel to this replica's region
                self._count_bytes(route.workflow, r, region, in_bytes)
            if isinstance(out, list) and out and isinstance(out[0], Choice):
                choices = out
                out = out[0].text
            outputs[stage.task] = out
            regions[stage.task] = region
            locations[stage.task] = loc
            run.output_bytes = len(out.encode()) if isinstance(out, str) else 4 * len(out)
            runs.append(run)
        final = outputs[route.sink]
        return Result({"text": final} if isinstance(final, str) else {"embedding": final}, runs,
                      choices if isinstance(final, str) else [])

    def _count_bytes(self, workflow: str, a: str, b: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.bytes_sent.labels(workflow, a, b).inc(n)

    async def _run_stage(self, route: Route, stage: Stage, prompt: str, deadline: float, on_delta,
                         parent: str = "", from_loc: str = "", flows=None, chat=None):
        endpoints = route.endpoints.get(stage.task, [])
        if not endpoints:
            raise Unavailable(f"stage {stage.task} has no ready replica", hint="see `atoll status`")
        tried: set[str] = set()
        run = StageRun(stage.task)
        t0 = time.monotonic()
        last_err = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"deadline passed in stage {stage.task} after {run.attempts} attempt(s)"
                                       + (f"; last error: {last_err}" if last_err else ""))
            ep = self.pick(endpoints, tried, workflow=route.workflow, task=stage.task, parent=parent,
                           from_location=from_loc, flows=flows)
            if ep is None:
                raise Unavailable(f"stage {stage.task}: all {len(endpoints)} replica(s) failed; last error: {last_err}")
            run.attempts += 1
            if run.attempts > 1 and self.metrics is not None:
                self.metrics.retries.labels(route.workflow, stage.task).inc()
            started = [False]
            self.in_flight[ep.replica_id] = self.in_flight.get(ep.replica_id, 0) + 1
            try:
                if stage.kind == "embedding":
                    emb = await self.workers.embed(ep.address, prompt, adapter=ep.adapter, timeout=left,
                                                 node_id=ep.node_id)
                    out: object = emb.vector
                    run.prompt_tokens = emb.tokens
                else:
                    out = await self._generate(ep, stage, prompt, left, on_delta, started, run, chat)
                run.variant, run.node_name, run.region = ep.variant, ep.node_name, ep.region
                run.seconds = time.monotonic() - t0
                if self.metrics is not None:
                    self.metrics.stage_seconds.labels(route.workflow, stage.task).observe(run.seconds)
                return out, run, ep.region, ep.location
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                last_err = f"{ep.node_name}: {code.name}: {exc.details()}"
                if self.metrics is not None:
                    self.metrics.stage_errors.labels(route.workflow, stage.task, code.name).inc()
                if started[0]:
                    raise Unavailable(f"stage {stage.task}: the stream from {ep.node_name} was cut off after "
                                      "its first tokens; the partial output was not retried") from None
                if code not in RETRYABLE:     # the request's own fault: the same error everywhere
                    raise type(error_from_rpc(exc))(f"stage {stage.task}: {exc.details()}") from None
                tried.add(ep.replica_id)
                if len(tried) >= len(endpoints):
                    raise Unavailable(f"stage {stage.task}: all {len(endpoints)} replica(s) failed; "
                                      f"last error: {last_err}") from None
            finally:
                if self.in_flight.get(ep.replica_id, 0) > 1:
                    self.in_flight[ep.replica_id] -= 1
                else:
                    self.in_flight.pop(ep.replica_id, None)

    async def _generate(self, ep: Endpoint, stage: Stage, prompt: str, timeout: float, on_delta, started,
                        run: StageRun, chat=None) -> list[Choice]:
        choices = [Choice(i) for i in range(max(1, stage.n))]
        texts: list[list[str]] = [[] for _ in choices]
        run.prompt_tokens = run.completion_tokens = 0      # this attempt's counts only
        async for d in self.workers.generate(ep.address, prompt, adapter=ep.adapter, max_tokens=stage.max_tokens,
                                             temperature=stage.temperature, stop=stage.stop, top_p=stage.top_p,
                                             seed=stage.seed, n=stage.n, logprobs=stage.logprobs,
                                             top_logprobs=stage.top_logprobs, messages=chat, timeout=timeout,
                                             node_id=ep.node_id):
            if not 0 <= d.index < len(choices):
                raise Unavailable(f"stage {stage.task}: {ep.node_name} answered choice {d.index} of {len(choices)}")
            c = choices[d.index]
            run.prompt_tokens = max(run.prompt_tokens, d.prompt_tokens)
            c.completion_tokens = max(c.completion_tokens, d.completion_tokens)
            c.logprobs.extend(d.logprobs)
            if d.text:
                texts[d.index].append(d.text)
            if d.finished:
                c.finish_reason = d.finish_reason
            if on_delta is not None and (d.text or d.finished or d.logprobs):
                started[0] = True
                await on_delta(d)
        run.completion_tokens = sum(c.completion_tokens for c in choices)
        for c, parts in zip(choices, texts):
            c.text = "".join(parts)
        return choices


def stage_chat(stage: Stage, prompt: str, messages: Sequence[Mapping[str, str]] | None) -> list[dict] | None:
    """The chat a stage sends, or None to send ``prompt`` as text. An entry stage of a chat request
    sends the request's messages with the last user message replaced by ``prompt`` (the stage's
    template filled with it); any stage marked ``chat`` sends ``prompt`` as one user message."""
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
