"""The data plane on the wire: routing state and key sets (coordinator to agents, down the
heartbeat stream), entries' load reports (agents to coordinator, in heartbeats), entries as the
SDK lists them, and the ``Entry`` and ``DataPlane`` services' messages (``dataplane.proto``).

Both sides convert here: the coordinator packs routing states and key sets and reads load
reports; agents read the first two, pack the third, and serve ``Entry`` and ``DataPlane`` with
the message helpers below; the SDK reads :class:`EntryInfo` values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping, Sequence

from atoll.core.apikeys import KeyEntry, KeySet
from atoll.core.errors import AtollError
from atoll.proto.v1 import control_pb2, dataplane_pb2, dataplane_pb2_grpc, routing_pb2, worker_pb2
from atoll.specs.routing import Endpoint, Route, RoutingState, Stage
from atoll.wire.worker import Delta, TokenLogprob, logprobs_from_pb, logprobs_to_pb

ENTRY = dataplane_pb2.DESCRIPTOR.services_by_name["Entry"]
DATAPLANE = dataplane_pb2.DESCRIPTOR.services_by_name["DataPlane"]


# ---------------------------------------------------------------------- routing state
ENDPOINT_FIELDS = tuple(f.name for f in fields(Endpoint))     # RouteEndpoint has the same fields


def route_to_pb(r: Route) -> routing_pb2.WorkflowRoute:
    return routing_pb2.WorkflowRoute(
        workflow=r.workflow, tenant=r.tenant, state=r.state, trusted_only=r.trusted_only, wakeable=r.wakeable,
        stages=[routing_pb2.RouteStage(task=s.task, kind=s.kind, prompt=s.prompt, parents=list(s.parents),
                                       max_tokens=int(s.max_tokens or 0), no_max_tokens=s.max_tokens is None,
                                       temperature=float(s.temperature), stop=list(s.stop), chat=s.chat)
                for s in r.stages],
        endpoints=[routing_pb2.RouteEndpoint(**{f: getattr(e, f) for f in ENDPOINT_FIELDS})
                   for eps in r.endpoints.values() for e in eps],
        flows=[routing_pb2.RouteFlow(src=a, dst=b, from_location=f[0], to_location=f[1], rate=f[2])
               for (a, b), fs in r.flows.items() for f in fs],
        source_region=r.source_region, source_location=r.source_location, sink=r.sink)


def route_from_pb(m: routing_pb2.WorkflowRoute) -> Route:
    eps: dict[str, list[Endpoint]] = {}
    for e in m.endpoints:
        eps.setdefault(e.task, []).append(Endpoint(**{f: getattr(e, f) for f in ENDPOINT_FIELDS}))
    flows: dict[tuple[str, str], list] = {}
    for f in m.flows:
        flows.setdefault((f.src, f.dst), []).append((f.from_location, f.to_location, f.rate))
    return Route(m.workflow, tuple(Stage(s.task, s.kind, s.prompt, tuple(s.parents),
                                         None if s.no_max_tokens else s.max_tokens, s.temperature, tuple(s.stop),
                                         s.chat) for s in m.stages),
                 MappingProxyType({t: tuple(v) for t, v in eps.items()}), m.source_region, m.sink, m.source_location,
                 MappingProxyType({k: tuple(v) for k, v in flows.items()}), m.tenant, m.state, m.trusted_only,
                 m.wakeable)


def routing_to_pb(state: RoutingState) -> routing_pb2.RoutingState:
    return routing_pb2.RoutingState(digest=state.digest, routes=[route_to_pb(r) for r in state.routes.values()])


def routing_from_pb(m: routing_pb2.RoutingState) -> RoutingState:
    return RoutingState(m.digest, MappingProxyType({r.workflow: route_from_pb(r) for r in m.routes}))


# ---------------------------------------------------------------------- key sets
def keys_to_pb(ks: KeySet) -> routing_pb2.KeySet:
    return routing_pb2.KeySet(digest=ks.digest, enforced=ks.enforced, keys=[
        routing_pb2.ApiKeyEntry(id=k.id, tenant=k.tenant, role=k.role, secret_sha256=k.secret_sha256,
                                revoked=k.revoked) for k in ks.keys.values()],
        revoked_nodes=dict(ks.revoked_nodes))


def keys_from_pb(m: routing_pb2.KeySet) -> KeySet:
    return KeySet(m.digest, m.enforced, MappingProxyType({
        k.id: KeyEntry(k.id, k.tenant, k.role, k.secret_sha256, k.revoked) for k in m.keys}),
        MappingProxyType(dict(m.revoked_nodes)))


# ---------------------------------------------------------------------- load reports
@dataclass
class EntryLoad:
    """What one entry saw of one workflow since its previous report."""

    workflow: str
    started: int = 0
    finished: int = 0
    failed: int = 0
    completion_tokens: dict[str, int] = field(default_factory=dict)   # task -> tokens (answered requests)
    in_flight: int = 0


def load_to_pb(loads: Sequence[EntryLoad]) -> list[routing_pb2.EntryLoad]:
    return [routing_pb2.EntryLoad(workflow=x.workflow, started=x.started, finished=x.finished, failed=x.failed,
                                  completion_tokens=x.completion_tokens, in_flight=x.in_flight) for x in loads]


def load_from_pb(ms) -> list[EntryLoad]:
    return [EntryLoad(m.workflow, m.started, m.finished, m.failed, dict(m.completion_tokens), m.in_flight)
            for m in ms]


# ---------------------------------------------------------------------- entries
@dataclass(frozen=True)
class EntryInfo:
    node_name: str
    region: str
    tier: str
    address: str
    node_id: str = ""
    degraded: bool = False
    degraded_reason: str = ""
    routing_age_seconds: float = 0.0
    workflows: int = 0
    token: str = ""            # ListEntries: the caller token for this entry (never an API key)


def entry_to_pb(e: EntryInfo) -> routing_pb2.EntryInfo:
    return routing_pb2.EntryInfo(node_name=e.node_name, node_id=e.node_id, region=e.region, tier=e.tier,
                                 address=e.address, degraded=e.degraded, degraded_reason=e.degraded_reason,
                                 routing_age_seconds=e.routing_age_seconds, workflows=e.workflows, token=e.token)


def entry_from_pb(m: routing_pb2.EntryInfo) -> EntryInfo:
    return EntryInfo(m.node_name, m.region, m.tier, m.address, m.node_id, m.degraded, m.degraded_reason,
                     m.routing_age_seconds, m.workflows, m.token)


def entries_response(entries: Sequence[EntryInfo]) -> control_pb2.ListEntriesResponse:
    return control_pb2.ListEntriesResponse(entries=[entry_to_pb(e) for e in entries])


def entry_stub(channel) -> dataplane_pb2_grpc.EntryStub:
    return dataplane_pb2_grpc.EntryStub(channel)


def dataplane_stub(channel) -> dataplane_pb2_grpc.DataPlaneStub:
    return dataplane_pb2_grpc.DataPlaneStub(channel)


def describe_request() -> dataplane_pb2.DescribeEntryRequest:
    return dataplane_pb2.DescribeEntryRequest()


# ---------------------------------------------------------------------- requests and answers
@dataclass(frozen=True)
class Sink:
    """One request's settings for the route's last stage; the defaults keep the stage's own.
    ``stop`` strings are added to the stage's; ``no_max_tokens``: up to a stop or the context."""

    max_tokens: int = 0                  # 0: the spec's
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    no_max_tokens: bool = False

    def given(self) -> list[str]:
        """The settings this request sets (to refuse them where no tokens are generated)."""
        return [name for name, on in (("max_tokens", self.max_tokens or self.no_max_tokens),
                                      ("temperature", self.temperature is not None), ("top_p", self.top_p is not None),
                                      ("seed", self.seed is not None), ("stop", self.stop), ("n", self.n != 1),
                                      ("logprobs", self.logprobs or self.top_logprobs)) if on]


Chat = tuple  # of {"role", "content"[, "name"]} dicts


NO_SINK = Sink()          # a request that sets nothing: one shared value, never rebuilt per request


def _put_sink(req, sink: Sink, messages: Chat | None, prompt_ids: Sequence[int]):
    """Pack one request's settings, chat and token ids into ``req`` (an ``InvokeRequest`` or a
    ``ForwardRequest``: the same field names). Settings left at their defaults are not sent
    (``sampling`` unset reads back as :data:`NO_SINK`)."""
    if sink.max_tokens:
        req.max_tokens = sink.max_tokens
    if sink.temperature is not None:
        req.temperature = sink.temperature
    if sink != NO_SINK:
        sm = req.sampling
        sm.stop.extend(sink.stop)
        sm.n, sm.logprobs, sm.top_logprobs, sm.no_max_tokens = sink.n, sink.logprobs, sink.top_logprobs, \
            sink.no_max_tokens
        if sink.top_p is not None:
            sm.top_p = sink.top_p
        if sink.seed is not None:
            sm.seed = sink.seed
    if messages:
        req.messages.extend(_chat_to_pb(messages))
    if prompt_ids:
        req.prompt_token_ids.extend(prompt_ids)
    return req


def _sink_from_pb(m) -> Sink:
    """The settings of an ``InvokeRequest`` or ``ForwardRequest``; one that sets none is
    :data:`NO_SINK` (nothing built per request)."""
    temperature = m.temperature if m.HasField("temperature") else None
    if not m.HasField("sampling"):
        return NO_SINK if not m.max_tokens and temperature is None else Sink(m.max_tokens, temperature)
    sm = m.sampling
    return Sink(m.max_tokens, temperature, sm.top_p if sm.HasField("top_p") else None,
                sm.seed if sm.HasField("seed") else None, tuple(sm.stop), sm.n or 1, sm.logprobs, sm.top_logprobs,
                sm.no_max_tokens)


def _chat_to_pb(messages: Chat | None) -> list[worker_pb2.ChatMessage]:
    return [worker_pb2.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", ""))
            for m in messages or ()]


def _chat_from_pb(ms) -> Chat | None:
    return tuple({"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in ms) or None


@dataclass(frozen=True)
class Carried:
    """What a request carries to its last stage besides its input (keyword-only, after a
    subclass's own fields): the OpenAI settings, chat messages, the prompt as token ids."""

    sink: Sink = field(default=NO_SINK, kw_only=True)
    messages: Chat | None = field(default=None, kw_only=True)
    prompt_ids: tuple[int, ...] = field(default=(), kw_only=True)   # the input as token ids


@dataclass(frozen=True)
class Invocation(Carried):
    """One request as an entry takes it (an ``InvokeRequest``, unpacked; with token ids,
    ``input_json`` is empty)."""

    workflow: str
    input_json: str
    stream: bool
    timeout_seconds: float
    request_id: str
    kind: str = ""                       # an OpenAI door's endpoint: llm | embedding ("": any)


def invocation_to_pb(inv: Invocation, timeout_seconds: float | None = None) -> control_pb2.InvokeRequest:
    return invoke_request(workflow=inv.workflow, input_json=inv.input_json, stream=inv.stream,
                          timeout_seconds=inv.timeout_seconds if timeout_seconds is None else timeout_seconds,
                          request_id=inv.request_id, sink=inv.sink, messages=inv.messages, kind=inv.kind,
                          prompt_ids=inv.prompt_ids)


def invocation_from_pb(m: control_pb2.InvokeRequest) -> Invocation:
    return Invocation(m.workflow, m.input_json, m.stream, m.timeout_seconds, m.request_id, m.kind,
                      sink=_sink_from_pb(m), messages=_chat_from_pb(m.messages),
                      prompt_ids=tuple(m.prompt_token_ids))


def invoke_request(*, workflow: str, input_json: str, stream: bool, timeout_seconds: float, request_id: str,
                   sink: Sink = NO_SINK, messages: Chat | None = None, kind: str = "",
                   prompt_ids: Sequence[int] = ()) -> control_pb2.InvokeRequest:
    return _put_sink(control_pb2.InvokeRequest(workflow=workflow, input_json=input_json, stream=stream,
                                               timeout_seconds=timeout_seconds, request_id=request_id, kind=kind),
                     sink, messages, prompt_ids)


@dataclass(frozen=True)
class StageDone:
    """One stage's run, as answers report it."""

    task: str
    variant: str = ""
    node_name: str = ""
    region: str = ""
    seconds: float = 0.0
    attempts: int = 0
    output_bytes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChoiceDone:
    """One choice of the sink's answer (``text`` and ``logprobs`` empty when it was streamed)."""

    index: int
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Answer:
    """One answer message, unpacked: a streamed delta (``delta``), or the end (``done``) with the
    output, every stage's run and, for llm sinks, every choice."""

    done: bool
    delta: Delta | None = None
    output: dict | None = None
    stages: list[StageDone] = field(default_factory=list)
    choices: list[ChoiceDone] = field(default_factory=list)


def stage_from_pb(m: control_pb2.StageResult) -> StageDone:
    return StageDone(m.task, m.variant, m.node_name, m.region, m.seconds, m.attempts, m.output_bytes,
                     m.prompt_tokens, m.completion_tokens)


def delta_message(d: Delta, request_id: str) -> control_pb2.InvokeResponse:
    """A streamed delta of the sink: choice ``d.index``'s new text (and its tokens' logprobs)."""
    return control_pb2.InvokeResponse(text=d.text, done=False, request_id=request_id, index=d.index,
                                      logprobs=logprobs_to_pb(d.logprobs))


def done_message(output: Mapping, stages: Sequence[StageDone], request_id: str, streamed: bool,
                 choices: Sequence[ChoiceDone] = ()) -> control_pb2.InvokeResponse:
    """The final answer: the output (its text again unless it was streamed), every stage's run
    and the sink's choices (their texts and logprobs again unless streamed)."""
    text = output.get("text", "") if isinstance(output.get("text"), str) and not streamed else ""
    m = control_pb2.InvokeResponse(text=text, done=True, output_json=_output_json(output), request_id=request_id)
    for s in stages:            # filled in place: no message built apart and copied in
        m.stages.add(task=s.task, variant=s.variant, node_name=s.node_name, region=s.region, seconds=s.seconds,
                     attempts=s.attempts, output_bytes=s.output_bytes, prompt_tokens=s.prompt_tokens,
                     completion_tokens=s.completion_tokens)
    for c in choices:
        r = m.choices.add(index=c.index, text="" if streamed else c.text, finish_reason=c.finish_reason,
                          completion_tokens=c.completion_tokens)
        if c.logprobs and not streamed:
            r.logprobs.extend(logprobs_to_pb(c.logprobs))
    return m


def _output_json(output: Mapping) -> str:
    """``json.dumps(dict(output))``; a text output (the common answer) is written as the same
    string without building the encoder's dict walk."""
    text = output.get("text") if len(output) == 1 else None
    if isinstance(text, str):
        return '{"text": ' + json.dumps(text) + "}"
    return json.dumps(dict(output))


# An answer's output is another host's JSON (an entry, maybe a renter's): at most this many arrays
# and objects are decoded (a legitimate answer holds one per log-probability at most, and one
# request gets at most 65,536 of those). A 14 MiB answer of empty objects took a client from 53
# to 447 MiB when it was decoded whole.
MAX_OUTPUT_CONTAINERS = 200_000


def output_from_json(text: str) -> dict:
    """An answer's ``output_json`` as a dict, or the error that says why it is not one."""
    if not text:
        return {}
    containers = text.count("[") + text.count("{")
    if containers > MAX_OUTPUT_CONTAINERS:
        raise AtollError(f"the answer holds up to {containers} JSON arrays and objects; at most "
                         f"{MAX_OUTPUT_CONTAINERS} are read")
    try:
        out = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise AtollError(f"the answer is not JSON: {exc}"[:300]) from None
    if not isinstance(out, dict):
        raise AtollError(f"the answer is a JSON {type(out).__name__}, not an object")
    return out


def answer_from_pb(m: control_pb2.InvokeResponse) -> Answer:
    if not m.done:
        return Answer(False, Delta(m.text, 0, 0, False, m.index, logprobs=logprobs_from_pb(m.logprobs)))
    return Answer(True, None, output_from_json(m.output_json), [stage_from_pb(s) for s in m.stages],
                  [ChoiceDone(c.index, c.text, c.finish_reason, c.completion_tokens, logprobs_from_pb(c.logprobs))
                   for c in m.choices])


def forward_request(*, workflow: str, task: str, replica_id: str, outputs: Mapping[str, str], text: str,
                    stream: bool, sink: Sink, messages: Chat | None, request_id: str, tenant: str,
                    prompt_ids: Sequence[int] = ()) -> dataplane_pb2.ForwardRequest:
    return _put_sink(dataplane_pb2.ForwardRequest(workflow=workflow, task=task, replica_id=replica_id,
                                                  outputs=dict(outputs), input=text, stream=stream,
                                                  request_id=request_id, tenant=tenant), sink, messages, prompt_ids)


@dataclass(frozen=True)
class Forwarded(Carried):
    """A ``ForwardRequest``, unpacked."""

    workflow: str
    task: str
    replica_id: str
    outputs: Mapping[str, str]
    text: str
    stream: bool
    request_id: str
    tenant: str


def forwarded_from_pb(m: dataplane_pb2.ForwardRequest) -> Forwarded:
    return Forwarded(m.workflow, m.task, m.replica_id, dict(m.outputs), m.input, m.stream, m.request_id, m.tenant,
                     sink=_sink_from_pb(m), messages=_chat_from_pb(m.messages),
                     prompt_ids=tuple(m.prompt_token_ids))
