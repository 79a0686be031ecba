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

Errors arrive as :mod:`atoll.core.errors` types (NotFound, InvalidArgument, Unavailable, ...).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import grpc

from atoll.coordinator.convert import status_from_pb
from atoll.core.errors import InvalidArgument, Unavailable
from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc
from atoll.core.rpc import CHANNEL_OPTIONS, error_from_rpc
from atoll.specs.config import FAILOVER_CHANNEL_OPTIONS, check_addresses, leader_from_refusal
from atoll.specs.node import TIERS

STATES = ("READY", "SUSPECT", "LOST", "DRAINING")


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

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpu_count"] = self.gpu_count
        return d


def _node_from_pb(n: common_pb2.Node) -> NodeInfo:
    return NodeInfo(
        id=n.id, name=n.spec.name, state=common_pb2.NodeState.Name(n.state), tier=n.spec.tier,
        region=n.spec.region, zone=n.spec.zone, price_per_hour=n.spec.price_per_hour,
        preemptible=n.spec.preemptible, labels=dict(n.spec.labels),
        gpus=[{"index": g.index, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
               "memory_free_bytes": g.memory_free_bytes, "compute_capability": g.compute_capability}
              for g in n.capacity.gpus],
        cpu_cores=n.capacity.cpu_cores, memory_bytes=n.capacity.memory_bytes,
        simulated=n.capacity.simulated, last_heartbeat_age_seconds=round(n.last_heartbeat_age_seconds, 3),
        last_heartbeat_unix=n.last_heartbeat_unix, registered_unix=n.registered_unix,
        heartbeats=n.heartbeats, agent_version=n.capacity.agent_version,
        status=status_from_pb(n.status))


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

    def to_dict(self) -> dict:
        return asdict(self)


def _workflow_from_pb(st) -> WorkflowInfo:
    import json as _json

    return WorkflowInfo(
        name=st.name, state=st.state, message=st.message, plan=_json.loads(st.plan_json or "{}"),
        replicas=[{"replica_id": r.replica_id, "task": r.task, "variant": r.variant, "node": r.node_name,
                   "node_id": r.node_id, "state": r.state, "region": r.region, "tier": r.tier,
                   "weight": r.weight, "worker_address": r.worker_address, "message": r.message,
                   "fetch_seconds": r.fetch_seconds, "load_seconds": r.load_seconds,
                   "warmup_seconds": r.warmup_seconds}
                  for r in st.replicas],
        profiles=[{"variant": p.variant, "hardware": p.hardware, "declared_rps": p.declared_rps,
                   "measured_rps": p.measured_rps, "source": p.source} for p in st.profiles],
        generation=st.generation, cold_starts=_json.loads(st.cold_starts_json or "[]"))


def _invoke_result(resp) -> dict:
    import json as _json

    if resp is None:
        raise Unavailable("the coordinator closed the call without a result")
    return {"output": _json.loads(resp.output_json or "{}"), "request_id": resp.request_id,
            "stages": [{"task": s.task, "variant": s.variant, "node": s.node_name, "region": s.region,
                        "seconds": s.seconds, "attempts": s.attempts, "output_bytes": s.output_bytes,
                        "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens}
                       for s in resp.stages]}


def _read_spec(spec) -> tuple[str, str]:
    """Read a workflow file, inlining a catalog it names (the coordinator cannot see local files)."""
    from pathlib import Path

    import yaml

    from atoll.specs.workflow import load_workflow

    if isinstance(spec, (str, os.PathLike)) and "\n" not in str(spec) and Path(spec).suffix in (".yaml", ".yml", ".json"):
        wf, catalog = load_workflow(spec)
        data = wf.dump()
        if catalog is not None:
            variants = wf.resolved_variants(catalog)
            for t in data["tasks"]:
                t["variants"] = [v.model_dump(mode="json", exclude_none=True) for v in variants[t["name"]]]
            data.pop("catalog", None)
        base = Path(spec).resolve().parent
        for t in data["tasks"]:      # relative model/adapter paths are relative to the workflow file
            for v in t["variants"]:
                for key in ("model", "adapter_path"):
                    val = v.get(key)
                    if isinstance(val, str) and val.startswith("."):
                        v[key] = str((base / val).resolve())
        return yaml.safe_dump(data, sort_keys=False), str(spec)
    return str(spec), "workflow"


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <api key>`` to every call."""

    def __init__(self, key: str):
        self.md = ("authorization", f"Bearer {key}")

    def _details(self, d):
        md = list(d.metadata or []) + [self.md]
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
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None):
        """``api_key`` (default ``$ATOLL_API_KEY``) is sent as ``authorization: Bearer <key>``;
        ``tls_ca`` (default ``$ATOLL_TLS_CA``) turns on TLS, verifying the coordinator with it."""
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
        from atoll.core.tls import channel_credentials

        creds = channel_credentials(tls_ca or os.environ.get("ATOLL_TLS_CA"), tls_cert, tls_key)
        self._raw_channels = [grpc.secure_channel(a, creds, options=options) if creds
                              else grpc.insecure_channel(a, options=options) for a in self.addresses]
        self._channels = ([grpc.intercept_channel(ch, _BearerKey(self.api_key)) for ch in self._raw_channels]
                          if self.api_key else list(self._raw_channels))
        self._stubs = [control_pb2_grpc.ClientServiceStub(ch) for ch in self._channels]
        self._use(0)

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
        if len(self.addresses) == 1:
            return Unavailable(f"cannot reach the coordinator at {self.address} ({exc.code().name})",
                               hint="is it running? set --coordinator or ATOLL_COORDINATOR")
        return Unavailable(f"no leading coordinator answered at {self.address} within {self.timeout:g} s "
                           f"({exc.code().name}: {details[:200]})",
                           hint="are they running, and is one of them the leader?")

    def _call(self, method, request):
        """Call ``method`` (a ClientService method name, or a bound stub method) and map errors.
        With several addresses, UNAVAILABLE moves on to the next one until the timeout."""
        fn = getattr(self._stub, method) if isinstance(method, str) else method
        if len(self.addresses) == 1 or not isinstance(method, str):
            try:
                return fn(request, timeout=self.timeout)
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
        req = control_pb2.ListNodesRequest(tier=tier or "", region=region or "",
                                           state=common_pb2.NodeState.Value(state.upper()) if state else 0)
        return [_node_from_pb(n) for n in self._call("ListNodes", req).nodes]

    def node(self, node: str) -> NodeInfo:
        return _node_from_pb(self._call("GetNode", control_pb2.GetNodeRequest(node=node)))

    def drain(self, node: str) -> NodeInfo:
        return _node_from_pb(self._call("DrainNode", control_pb2.DrainNodeRequest(node=node)))

    # ------------------------------------------------------------------ workflows
    def submit(self, spec: str | os.PathLike, *, dry_run: bool = False) -> "WorkflowInfo":
        """Submit a workflow spec (a YAML file path, or YAML text). A catalog it names is inlined."""
        text, filename = _read_spec(spec)
        st = self._call("SubmitWorkflow", control_pb2.SubmitWorkflowRequest(
            spec_yaml=text, filename=filename, dry_run=dry_run))
        return _workflow_from_pb(st)

    def workflows(self) -> list[dict]:
        resp = self._call("ListWorkflows", control_pb2.ListWorkflowsRequest())
        return [{"name": w.name, "state": w.state, "cost_per_hour": w.cost_per_hour, "accuracy": w.accuracy,
                 "replicas": w.replicas, "ready_replicas": w.ready_replicas} for w in resp.workflows]

    def status(self, name: str) -> "WorkflowInfo":
        return _workflow_from_pb(self._call("GetWorkflow", control_pb2.GetWorkflowRequest(name=name)))

    def delete(self, name: str) -> bool:
        return self._call("DeleteWorkflow", control_pb2.GetWorkflowRequest(name=name)).deleted

    def wait_ready(self, name: str, timeout: float = 120.0, poll: float = 0.25) -> "WorkflowInfo":
        """Poll until the workflow is READY; raise FailedPrecondition if it FAILED, Unavailable on timeout."""
        import time as _t

        from atoll.core.errors import FailedPrecondition

        deadline = _t.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.state == "READY":
                return st
            if st.state == "FAILED":
                raise FailedPrecondition(f"workflow {name} FAILED: {st.message}")
            if _t.monotonic() > deadline:
                raise Unavailable(f"workflow {name} not READY after {timeout:.0f} s: {st.state}: {st.message}")
            _t.sleep(poll)

    def invoke(self, name: str, input: dict | str, *, timeout: float = 60.0, stream: bool = False,
               max_tokens: int = 0):
        """Run one request. Returns {"output": ..., "stages": [...]}; with ``stream=True`` returns an
        iterator of text deltas whose last item is that dict. ``max_tokens`` (> 0) replaces the
        sink stage's completion budget for this request."""
        import json as _json

        payload = input if isinstance(input, str) and input.lstrip().startswith(("{", '"')) else _json.dumps(
            input if isinstance(input, dict) else {"text": input})
        req = control_pb2.InvokeRequest(workflow=name, input_json=payload, stream=stream, timeout_seconds=timeout,
                                        max_tokens=max_tokens)
        if stream:
            return self._invoke_stream(req, timeout)
        import time as _t

        # UNAVAILABLE (the coordinator restarting, or no replica reachable for a moment) is
        # retried with back-off until the deadline; every other error is final.
        deadline = _t.monotonic() + timeout
        delay = 0.1
        while True:
            left = deadline - _t.monotonic()
            req.timeout_seconds = max(left, 0.001)
            try:
                last = None
                for resp in self._stub.Invoke(req, timeout=left + 5):
                    last = resp
                return _invoke_result(last)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or _t.monotonic() + delay >= deadline:
                    raise error_from_rpc(exc) from None
                if len(self.addresses) > 1:
                    self._failover(exc.details() or "")
            _t.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _invoke_stream(self, req, timeout):
        try:
            for resp in self._stub.Invoke(req, timeout=timeout + 5):
                if resp.done:
                    yield _invoke_result(resp)
                elif resp.text:
                    yield resp.text
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def profile(self, workflow: str, task: str, variant: str = "", node: str = "", requests: int = 16,
                concurrency: int = 8) -> dict:
        r = self._call("Profile", control_pb2.ProfileRequest(
            workflow=workflow, task=task, variant=variant, node=node, requests=requests, concurrency=concurrency))
        return {"variant": r.variant, "hardware": r.hardware, "node": r.node_name,
                "requests_per_second": r.requests_per_second, "tokens_per_second": r.tokens_per_second,
                "declared_rps": r.declared_rps, "requests": r.requests}

    def push(self, path: str | os.PathLike, kind: str = "model", progress=None) -> str:
        """Upload a model or adapter directory to the coordinator's store; returns its sha256 name."""
        from atoll.core.archive import archive_dir

        from atoll.proto.v1 import control_pb2_grpc as _g

        data = archive_dir(path)
        stub = _g.ModelStoreStub(self._channel)
        chunk = 1 << 20

        def chunks():
            for off in range(0, max(len(data), 1), chunk):
                if progress:
                    progress(min(off + chunk, len(data)), len(data))
                yield control_pb2.BlobChunk(name=os.path.basename(os.path.abspath(path)), kind=kind,
                                            data=data[off:off + chunk], offset=off, total_bytes=len(data))

        try:
            return stub.Push(chunks(), timeout=max(60.0, len(data) / 2e6)).name
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    # ------------------------------------------------------------------ API keys
    def create_key(self, tenant: str, role: str = "user") -> dict:
        """Create an API key; the returned dict's ``key`` is shown only once."""
        r = self._call("CreateKey", control_pb2.CreateKeyRequest(tenant=tenant, role=role))
        return {"id": r.info.id, "tenant": r.info.tenant, "role": r.info.role, "key": r.key}

    def list_keys(self) -> list[dict]:
        r = self._call("ListKeys", control_pb2.ListKeysRequest())
        return [{"id": k.id, "tenant": k.tenant, "role": k.role, "created_unix": k.created_unix,
                 "revoked": k.revoked} for k in r.keys]

    def revoke_key(self, key_id: str) -> dict:
        k = self._call("RevokeKey", control_pb2.RevokeKeyRequest(id=key_id))
        return {"id": k.id, "tenant": k.tenant, "role": k.role, "revoked": k.revoked}

    def close(self) -> None:
        for ch in self._raw_channels:
            ch.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
