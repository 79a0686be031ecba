"""The Python SDK: ``Client`` talks to a coordinator over gRPC.

    from atoll.client import Client
    c = Client("127.0.0.1:7070")
    for n in c.nodes(tier="edge"):
        print(n.name, n.state, n.last_heartbeat_age_seconds)
    c.drain("edge-1")

Several coordinators (a highly available deployment) are given comma-separated,
``Client("10.0.0.1:7070,10.0.0.2:7070")``: a call that meets UNAVAILABLE (a coordinator
down, or a standby answering "standby; leader is at ADDR") is tried on the next one (the
leader named, when it is in the list), rotating until the call's timeout. With one address a
call is tried once, as always.

Entries (the data plane): every agent takes requests itself, so requests need not pass the
coordinator. ``Client(addr, entries="10.0.1.5:7443,10.0.2.7:7443")`` sends ``invoke`` to those
agents' entries; ``Client(addr, region="eu-west")`` asks the coordinator once per workflow for
the entries that may take it (that region's first; a trusted_only workflow's are only hosts the
operator trusts). The client prefers the nearest entry — its own region (``region``
or ``$ATOLL_REGION``), then the lowest round trip measured with one ``Describe`` call each — and
fails over to the next one when an entry cannot be reached. Without either, ``invoke`` goes
through the coordinator, which forwards it to an entry in the workflow's source region. The API
key goes only to the coordinator and to entries named in ``entries``: at an entry the
coordinator listed, the client presents the caller token the coordinator issued for that entry
alone (fetched again before it expires), so a host it did not choose never sees its key.

Errors arrive as :mod:`atoll.core.errors` types (NotFound, InvalidArgument, Unavailable, ...).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from atoll.core.archive import archive_dir
from atoll.core.errors import AtollError, FailedPrecondition, InvalidArgument, Unavailable
from atoll.core.rpc import CHANNEL_OPTIONS, PEER_CHANNEL_OPTIONS, error_from_rpc
from atoll.core.tls import channel_credentials, closed_hint, handshake_failure
from atoll.specs.catalog import Catalog, VariantSpec
from atoll.specs.config import FAILOVER_CHANNEL_OPTIONS, check_addresses, leader_from_refusal
from atoll.specs.node import TIERS
from atoll.specs.workflow import WorkflowSpec, load_workflow
from atoll.wire import client_service as wire
from atoll.wire import dataplane as dp
from atoll.wire.model_store import push_archive

STATES = ("READY", "SUSPECT", "LOST", "DRAINING")
# An entry's caller token (valid 10 minutes) is fetched again from the coordinator after this long.
ENTRY_TOKEN_REFRESH_S = 240.0
# Ranking a list of entries probes each once with Describe, all at once, within one time budget:
# any READY host may report an entry, so a list can hold many that never answer (a renter's
# nodes naming unreachable addresses). Probed one by one, 100 of them held a client's first call
# for 200 s. Past MAX_RANKED the entries follow in the coordinator's order, unprobed.
RANK_BUDGET_S = 2.0
MAX_RANKED = 64


@dataclass
class NodeInfo:
    id: str
    name: str
    state: str
    tier: str
    region: str
    zone: str
    price_per_hour: float
    preemptible: bool
    labels: dict[str, str]
    gpus: list[dict]
    cpu_cores: int
    memory_bytes: int
    simulated: bool
    last_heartbeat_age_seconds: float
    last_heartbeat_unix: float
    registered_unix: float
    heartbeats: int
    agent_version: str
    status: dict = field(default_factory=dict)
    trusted: bool = False           # the operator trusts it: trusted_only workflows may run here

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_count"] = self.gpu_count
        return d


@dataclass
class WorkflowInfo:
    name: str
    state: str
    message: str
    plan: dict
    replicas: list[dict]
    profiles: list[dict]
    generation: int
    cold_starts: list[dict] = field(default_factory=list)
    autoscale_decisions: list[dict] = field(default_factory=list)   # the autoscaler's last decisions

    def to_dict(self) -> dict:
        return asdict(self)


def inline_spec(wf: WorkflowSpec, catalog: Catalog | None, base: Path) -> WorkflowSpec:
    """The spec as the coordinator takes it: every variant inline (a catalog cannot be read
    there), and model/adapter paths relative to the workflow file made absolute."""
    variants = wf.resolved_variants(catalog)

    def local(v: VariantSpec) -> VariantSpec:
        paths = {k: str((base / val).resolve()) for k in ("model", "adapter_path")
                 if isinstance(val := getattr(v, k), str) and val.startswith(".")}
        return v.model_copy(update=paths) if paths else v

    tasks = [t.model_copy(update={"variants": [local(v) for v in variants[t.name]]}) for t in wf.tasks]
    return wf.model_copy(update={"tasks": tasks, "catalog": None})


def _read_spec(spec) -> tuple[str, str]:
    """A workflow file's YAML with its catalog inlined, or ``spec`` itself when it is YAML text."""
    is_path = isinstance(spec, (str, os.PathLike)) and "\n" not in str(spec)
    if is_path and Path(spec).suffix in (".yaml", ".yml", ".json"):
        wf, catalog = load_workflow(spec)
        return inline_spec(wf, catalog, Path(spec).resolve().parent).to_yaml(), str(spec)
    return str(spec), "workflow"


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <api key>`` (or a caller token, read at each call) to every call."""

    def __init__(self, key: str | Callable[[], str]):
        self.key = key

    def _details(self, d):
        key = self.key() if callable(self.key) else self.key
        md = list(d.metadata or []) + [("authorization", f"Bearer {key}")]
        return _CallDetails(d.method, d.timeout, md, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, cont, d, req):
        return cont(self._details(d), req)

    def intercept_unary_stream(self, cont, d, req):
        return cont(self._details(d), req)

    def intercept_stream_unary(self, cont, d, it):
        return cont(self._details(d), it)

    def intercept_stream_stream(self, cont, d, it):
        return cont(self._details(d), it)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


class Client:
    def __init__(self, address: str | None = None, *, timeout: float = 10.0, api_key: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 entries: str | list[str] | None = None, region: str | None = None):
        """``api_key`` (default ``$ATOLL_API_KEY``) is sent as ``authorization: Bearer <key>``;
        ``tls_ca`` (default ``$ATOLL_TLS_CA``) turns on TLS, verifying the coordinator with it.
        ``entries`` (default ``$ATOLL_ENTRIES``): agents' entry addresses to invoke at;
        ``region`` (default ``$ATOLL_REGION``): this client's region, preferred among entries (given
        without ``entries``, the coordinator is asked once per workflow for its entries)."""
        address = address or os.environ.get("ATOLL_COORDINATOR") or "127.0.0.1:7070"
        self.api_key = api_key or os.environ.get("ATOLL_API_KEY") or None
        try:
            address = check_addresses(address)
        except ValueError as exc:
            raise InvalidArgument(f"coordinator address: {exc}") from None
        self.address = address
        self.addresses = address.split(",")
        self.timeout = timeout
        options = CHANNEL_OPTIONS + (FAILOVER_CHANNEL_OPTIONS if len(self.addresses) > 1 else [])
        creds = channel_credentials(tls_ca or os.environ.get("ATOLL_TLS_CA"), tls_cert, tls_key)
        self.tls = creds is not None
        self._raw_channels = [grpc.secure_channel(a, creds, options=options) if creds
                              else grpc.insecure_channel(a, options=options) for a in self.addresses]
        self._channels = ([grpc.intercept_channel(ch, _BearerKey(self.api_key)) for ch in self._raw_channels]
                          if self.api_key else list(self._raw_channels))
        self._stubs = [wire.client_stub(ch) for ch in self._channels]
        self._use(0)
        self._creds = creds
        self.region = region or os.environ.get("ATOLL_REGION") or ""
        entries = entries if entries is not None else os.environ.get("ATOLL_ENTRIES") or None
        if isinstance(entries, str):
            entries = [e.strip() for e in entries.split(",") if e.strip()]
        for e in entries or ():
            try:
                check_addresses(e)
            except ValueError as exc:
                raise InvalidArgument(f"entry address: {exc}") from None
        self._entry_list: list[str] | None = list(entries) if entries else None
        self._ask_entries = bool(self.region) and not entries
        self._entry_stubs: dict[str, object] = {}
        self._entry_channels: list = []
        # address -> the caller token the coordinator issued for that entry (ListEntries), and
        # when: an entry found through the coordinator gets the token, never the API key
        self._entry_tokens: dict[str, tuple[str, float]] = {}
        self._entry_lists: dict[str, list[str]] = {}       # workflow -> its entries from the coordinator, ranked
        self._ranks: dict[str, tuple[int, float]] = {}      # entry address -> (region rank, round trip)
        self._listed_regions: dict[str, str] = {}           # entry address -> its region, as the coordinator says

    def _use(self, i: int) -> None:
        self._current = i
        self._channel = self._channels[i]
        self._stub = self._stubs[i]

    def _failover(self, details: str) -> None:
        """Move to the leader a standby named, when we know it, else to the next address."""
        leader = leader_from_refusal(details)
        if leader in self.addresses and self.addresses.index(leader) != self._current:
            self._use(self.addresses.index(leader))
        else:
            self._use((self._current + 1) % len(self.addresses))

    def _unavailable(self, exc: grpc.RpcError) -> Unavailable:
        details = exc.details() or ""
        if leader_from_refusal(details):        # a standby: say where the leader is
            return Unavailable(f"the coordinator at {self.address} is a {details}",
                               hint="point --coordinator at the leader, or list every coordinator: A,B")
        why = handshake_failure(details)
        if why:
            return Unavailable(f"TLS handshake failed: {why} (coordinator {self.address})",
                               hint="check --tls-ca / ATOLL_TLS_CA and the address; the coordinator's log says "
                                    "why it refused")
        closed = closed_hint(details, self.tls)
        if len(self.addresses) == 1:
            return Unavailable(f"cannot reach the coordinator at {self.address} ({exc.code().name})",
                               hint=closed or "is it running? set --coordinator or ATOLL_COORDINATOR")
        return Unavailable(f"no leading coordinator answered at {self.address} within {self.timeout:g} s "
                           f"({exc.code().name}: {details[:200]})",
                           hint="are they running, and is one of them the leader?")

    def _error(self, exc: grpc.RpcError):
        """The SDK error for a failed call: a refused TLS handshake says so, the rest by code."""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and (handshake_failure(exc.details() or "")
                                                           or closed_hint(exc.details() or "", self.tls)):
            return self._unavailable(exc)
        return error_from_rpc(exc)

    def _call(self, method: str, **fields):
        """Call ClientService ``method`` with a request of ``fields`` and map errors. With several
        addresses, UNAVAILABLE moves on to the next one until the timeout."""
        request = wire.request(method, **fields)
        if len(self.addresses) == 1:
            try:
                return getattr(self._stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise self._unavailable(exc) from None
                raise error_from_rpc(exc) from None
        deadline = time.monotonic() + self.timeout
        tried, pause = 0, 0.05
        while True:
            try:
                return getattr(self._stub, method)(request, timeout=max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise error_from_rpc(exc) from None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED or time.monotonic() + pause >= deadline:
                    raise self._unavailable(exc) from None
                self._failover(exc.details() or "")
                tried += 1
                if tried % len(self.addresses) == 0:      # a full round: pause, then go again
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)

    def nodes(self, tier: str | None = None, region: str | None = None,
              state: str | None = None) -> list[NodeInfo]:
        if tier and tier not in TIERS:
            raise InvalidArgument(f"unknown tier {tier!r}", hint="one of " + ", ".join(TIERS))
        if state and state.upper() not in STATES:
            raise InvalidArgument(f"unknown state {state!r}", hint="one of " + ", ".join(STATES))
        resp = self._call("ListNodes", tier=tier or "", region=region or "",
                          state=wire.node_state(state.upper()) if state else 0)
        return [NodeInfo(**n) for n in wire.nodes_of(resp)]

    def node(self, node: str) -> NodeInfo:
        return NodeInfo(**wire.node_from_pb(self._call("GetNode", node=node)))

    def drain(self, node: str) -> NodeInfo:
        return NodeInfo(**wire.node_from_pb(self._call("DrainNode", node=node)))

    # ------------------------------------------------------------------ workflows
    def submit(self, spec: str | os.PathLike, *, dry_run: bool = False) -> "WorkflowInfo":
        """Submit a workflow spec (a YAML file path, or YAML text). A catalog it names is inlined."""
        text, filename = _read_spec(spec)
        return WorkflowInfo(**wire.workflow_from_pb(self._call("SubmitWorkflow", spec_yaml=text, filename=filename,
                                                               dry_run=dry_run)))

    def workflows(self) -> list[dict]:
        return wire.workflow_summaries(self._call("ListWorkflows"))

    def status(self, name: str) -> "WorkflowInfo":
        return WorkflowInfo(**wire.workflow_from_pb(self._call("GetWorkflow", name=name)))

    def delete(self, name: str) -> bool:
        return self._call("DeleteWorkflow", name=name).deleted

    def wait_ready(self, name: str, timeout: float = 120.0, poll: float = 0.25) -> "WorkflowInfo":
        """Poll until the workflow is READY; raise FailedPrecondition if it FAILED, Unavailable on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.state == "READY":
                return st
            if st.state == "FAILED":
                raise FailedPrecondition(f"workflow {name} FAILED: {st.message}")
            if time.monotonic() > deadline:
                raise Unavailable(f"workflow {name} not READY after {timeout:.0f} s: {st.state}: {st.message}")
            time.sleep(poll)

    def invoke(self, name: str, input: dict | str, *, timeout: float = 60.0, stream: bool = False,
               max_tokens: int = 0):
        """Run one request. Returns {"output": ..., "stages": [...]}; with ``stream=True`` returns an
        iterator of text deltas whose last item is that dict. ``max_tokens`` (> 0) replaces the
        sink stage's completion budget for this request."""
        payload = input if isinstance(input, str) and input.lstrip().startswith(("{", '"')) else json.dumps(
            input if isinstance(input, dict) else {"text": input})
        req = wire.request("Invoke", workflow=name, input_json=payload, stream=stream, timeout_seconds=timeout,
                           max_tokens=max_tokens)
        targets = self._entry_targets(name)
        if targets:
            return self._invoke_entries(targets, req, timeout, stream)
        if stream:
            return self._invoke_stream(req, timeout)
        # UNAVAILABLE (the coordinator restarting, or no replica reachable for a moment) is
        # retried with back-off until the deadline; every other error is final.
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            req.timeout_seconds = max(left, 0.001)
            try:
                last = None
                for resp in self._stub.Invoke(req, timeout=left + 5):
                    last = resp
                return wire.invoke_result(last)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay >= deadline \
                        or handshake_failure(exc.details() or ""):
                    raise self._error(exc) from None
                if len(self.addresses) > 1:
                    self._failover(exc.details() or "")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ entries
    def entries(self, region: str = "", workflow: str = "") -> list[dict]:
        """The fleet's entries (``region``'s first; those that may take ``workflow``), each with
        the caller token to present there (``token``; empty while keys are not enforced)."""
        resp = self._call("ListEntries", region=region, workflow=workflow)
        found = [vars(dp.entry_from_pb(e)) for e in resp.entries]
        now = time.monotonic()
        for e in found:
            if e["token"]:
                self._entry_tokens[e["address"]] = (e["token"], now)
        return found

    def _entry_credential(self, address: str) -> str:
        """What to present at ``address``: its caller token (fetched again from the coordinator
        when half its life is gone) when the coordinator listed it, else the API key."""
        got = self._entry_tokens.get(address)
        if got is None:
            return self.api_key or ""
        if time.monotonic() - got[1] > ENTRY_TOKEN_REFRESH_S:
            try:
                self.entries(self.region)
            except AtollError:
                pass                        # keep the old token; the entry says when it expired
            got = self._entry_tokens[address]
        return got[0]

    def _entry_stub(self, address: str):
        stub = self._entry_stubs.get(address)
        if stub is None:
            raw = (grpc.secure_channel(address, self._creds, options=PEER_CHANNEL_OPTIONS) if self._creds
                   else grpc.insecure_channel(address, options=PEER_CHANNEL_OPTIONS))
            self._entry_channels.append(raw)
            if address in self._entry_tokens:
                ch = grpc.intercept_channel(raw, _BearerKey(lambda: self._entry_credential(address)))
            else:
                ch = grpc.intercept_channel(raw, _BearerKey(self.api_key)) if self.api_key else raw
            stub = self._entry_stubs[address] = dp.entry_stub(ch)
        return stub

    def _entry_targets(self, workflow: str) -> list[str]:
        """The entries to try, nearest first. Entries named by the user serve every workflow;
        entries the coordinator lists are asked for per workflow (a trusted_only workflow's are
        only hosts the operator trusts), each list measured once, then kept."""
        if self._entry_list is not None:
            if not getattr(self, "_entries_ranked", False):
                self._entry_list = self._rank(self._entry_list)
                self._entries_ranked = True
            return self._entry_list
        if not self._ask_entries:
            return []
        if workflow not in self._entry_lists:
            if len(self._entry_lists) >= 1024:
                self._entry_lists.clear()
            listed = self.entries(self.region, workflow)
            # the region the coordinator knows a host by, not the one its entry claims
            self._listed_regions.update((e["address"], e["region"]) for e in listed)
            found = [e["address"] for e in listed]
            self._entry_lists[workflow] = self._rank(found) if found else []
        return self._entry_lists[workflow]

    def _rank(self, addresses: list[str]) -> list[str]:
        """Same region first, then the lowest round trip of one Describe call (measured once per
        address, the first ``MAX_RANKED`` of the list in parallel within ``RANK_BUDGET_S``);
        unreachable and unprobed last."""
        probed = addresses[:MAX_RANKED]
        t0 = time.monotonic()
        done: dict[str, float] = {}
        futures = {}
        for a in dict.fromkeys(probed):
            if a not in self._ranks:
                f = self._entry_stub(a).Describe.future(dp.describe_request(), timeout=RANK_BUDGET_S)
                f.add_done_callback(lambda _f, a=a: done.setdefault(a, time.monotonic()))
                futures[a] = f
        for a, f in futures.items():
            try:
                region = self._listed_regions.get(a) or dp.entry_from_pb(f.result()).region
                self._ranks[a] = (0 if (not self.region or region == self.region) else 1,
                                  done.get(a, time.monotonic()) - t0)
            except grpc.RpcError:
                self._ranks[a] = (2, float("inf"))
        rows = [(*self._ranks.get(a, (3, float("inf"))), i, a) for i, a in enumerate(addresses)]
        return [a for *_, a in sorted(rows)]

    def _invoke_entries(self, targets: list[str], req, timeout: float, stream: bool):
        """Invoke at the nearest entry; an entry that cannot be reached (or has no state yet)
        gives way to the next, until the deadline (before a streamed answer's first token only).
        An answer that came whole stands even when its entry vanishes before the call's status."""
        if stream:
            return self._stream_entries(targets, req, timeout)
        deadline = time.monotonic() + timeout
        delay, i = 0.05, 0
        while True:
            left = deadline - time.monotonic()
            req.timeout_seconds = max(left, 0.001)
            last = None
            try:
                for resp in self._entry_stub(targets[i % len(targets)]).Invoke(req, timeout=left + 5):
                    last = resp
                return wire.invoke_result(last)
            except grpc.RpcError as exc:
                if last is not None and last.done:      # the whole answer came; the entry went away after
                    return wire.invoke_result(last)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay >= deadline:
                    raise error_from_rpc(exc) from None
            i += 1
            if i % len(targets) == 0:              # a full round failed: back off, then again
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _stream_entries(self, targets: list[str], req, timeout: float):
        deadline = time.monotonic() + timeout
        for n, address in enumerate(targets):
            started = done = False
            try:
                left = max(deadline - time.monotonic(), 0.001)
                req.timeout_seconds = left
                for resp in self._entry_stub(address).Invoke(req, timeout=left + 5):
                    started, done = True, done or resp.done
                    item = wire.stream_item(resp)
                    if item is not None:
                        yield item
                    if resp.done:                       # the answer is whole: nothing after it is read
                        return
                return
            except grpc.RpcError as exc:
                if done:                                # the whole answer came; the entry went away after
                    return
                if started or exc.code() != grpc.StatusCode.UNAVAILABLE or n == len(targets) - 1:
                    raise error_from_rpc(exc) from None

    def _invoke_stream(self, req, timeout):
        try:
            for resp in self._stub.Invoke(req, timeout=timeout + 5):
                item = wire.stream_item(resp)
                if item is not None:
                    yield item
                if resp.done:
                    return
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def profile(self, workflow: str, task: str, variant: str = "", node: str = "", requests: int = 16,
                concurrency: int = 8) -> dict:
        return wire.profile_result(self._call("Profile", workflow=workflow, task=task, variant=variant, node=node,
                                              requests=requests, concurrency=concurrency))

    def push(self, path: str | os.PathLike, kind: str = "model", progress=None) -> str:
        """Upload a model or adapter directory to the coordinator's store; returns its sha256 name."""
        data = archive_dir(path)
        try:
            return push_archive(self._channel, data, display_name=os.path.basename(os.path.abspath(path)), kind=kind,
                                timeout=max(60.0, len(data) / 2e6), progress=progress)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------ API keys
    def create_key(self, tenant: str, role: str = "user") -> dict:
        """Create an API key; the returned dict's ``key`` is shown only once."""
        return wire.created_key(self._call("CreateKey", tenant=tenant, role=role))

    def list_keys(self) -> list[dict]:
        return wire.key_list(self._call("ListKeys"))

    def revoke_key(self, key_id: str) -> dict:
        return wire.revoked_key(self._call("RevokeKey", id=key_id))

    # ------------------------------------------------------------------ join tokens and trust
    def create_join_token(self, tiers=(), regions=(), *, trusted: bool = False, ttl: float = 0.0,
                          uses: int = 0) -> dict:
        """A join token admitting new nodes of ``tiers`` in ``regions`` (empty: any), trusted or
        not, for ``ttl`` seconds (0: no expiry) and ``uses`` nodes (0: unlimited). The returned
        dict's ``token`` is shown only once."""
        return wire.created_join_token(self._call("CreateJoinToken", tiers=list(tiers), regions=list(regions),
                                                  trusted=trusted, ttl_seconds=ttl, uses=uses))

    def list_join_tokens(self) -> list[dict]:
        return wire.join_token_list(self._call("ListJoinTokens"))

    def revoke_join_token(self, token_id: str) -> dict:
        return wire.join_token_dict(self._call("RevokeJoinToken", id=token_id))

    def remove_node(self, node: str) -> NodeInfo:
        """Cut a node off (admin): its tokens refused everywhere, its key refused at registration."""
        return NodeInfo(**wire.node_from_pb(self._call("RemoveNode", node=node)))

    def set_trust(self, node: str, trusted: bool) -> NodeInfo:
        """Trust (or untrust) a node: trusted_only workflows run only on trusted nodes."""
        return NodeInfo(**wire.node_from_pb(self._call("SetNodeTrust", node=node, trusted=trusted)))

    def close(self) -> None:
        for ch in self._raw_channels + self._entry_channels:
            ch.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
