"""The authorization table (atoll.core.access): complete, rendered in docs/security.md, and
walked against real processes with every kind of caller — anonymous, a user, a user of the
wrong tenant, an admin, an agent, a node token, the coordinator's token, and forged ones."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from atoll.agent.heartbeat import HeartbeatClient
from atoll.core import access
from atoll.core.openai_http import ROUTES, OpenAIDoor
from atoll.coordinator.identity import NODE_SCOPES
from atoll.core import credentials as cred
from atoll.proto.v1 import control_pb2, control_pb2_grpc, dataplane_pb2, worker_pb2, worker_pb2_grpc
from atoll.wire import dataplane as dp
from atoll.wire.agent_service import heartbeat_request, register_request
from tests.control.helpers import wait_for

from .conftest import TOKEN, rpc_code

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
CALLERS = ("anonymous", "user", "wrong-tenant", "admin", "agent", "node", "coordinator", "forged-node",
           "forged-coordinator")
KIND = {"wrong-tenant": access.USER, "forged-node": "forged", "forged-coordinator": "forged"}
SCOPES_OF = {"node": NODE_SCOPES, "coordinator": cred.SCOPES}


def test_every_method_of_every_service_has_a_rule():
    from grpc_health.v1 import health_pb2 as h

    services = [*control_pb2.DESCRIPTOR.services_by_name.values(), worker_pb2.DESCRIPTOR.services_by_name["Worker"],
                *dataplane_pb2.DESCRIPTOR.services_by_name.values(),
                h.DESCRIPTOR.services_by_name["Health"],
                reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    in_table = {r.key for r in access.TABLE if not r.surface.startswith("http:")}
    assert methods == in_table, (methods - in_table, in_table - methods)
    with pytest.raises(Exception, match="not in the authorization table"):
        access.decide("/atoll.v1.Worker/Backdoor", access.COORDINATOR, cred.SCOPES)


def test_the_table_in_docs_is_the_table_in_code():
    doc = (REPO / "docs" / "security.md").read_text()
    assert access.render_markdown() in doc, "regenerate the table: python -c 'from atoll.core.access import " \
                                            "render_markdown; print(render_markdown())'"


@pytest.fixture(scope="module")
def walk(fleet):
    """Credentials of every kind, and one of tenant a's workflows and blobs to reach for."""
    sha = {}
    with fleet.client("a") as a:
        sha["a"] = a.push(fleet.tmp / "adapter-a", "adapter")
        a.submit(str(fleet.workflow("walk-a", adapter_path=sha["a"])))
        st = a.wait_ready("walk-a", 120)
    node_name = st.replicas[0]["node"]
    node = fleet.node(node_name)
    signing = cred.private_from_pem(fleet.meta("signing_key").encode())
    rogue = cred.new_private_key()
    probe_key = cred.new_private_key()
    got: dict[str, str] = {}

    async def probe_node():
        ch = grpc.aio.insecure_channel(fleet.addr)
        hb = HeartbeatClient(ch, join_token=TOKEN, spec={"name": "walk-probe", "tier": "edge", "region": "x"},
                             capacity={}, on_credential=lambda t, e: got.setdefault("token", t), node_key=probe_key)
        import asyncio

        task = asyncio.ensure_future(hb.run())
        for _ in range(100):
            if "token" in got:
                break
            await asyncio.sleep(0.1)
        hb.stop()
        await asyncio.gather(task, return_exceptions=True)
        await ch.close()

    import asyncio

    asyncio.run(probe_node())
    t = time.time()
    creds = {
        "anonymous": None, "user": fleet.keys["a"], "wrong-tenant": fleet.keys["b"], "admin": fleet.keys["admin"],
        "agent": TOKEN,        # what an agent holds for anything but AgentService: its join token
        "node": got["token"],
        "coordinator": cred.sign_token(signing, sub=cred.COORDINATOR, aud=node.id, scopes=cred.SCOPES, now=t,
                                       ttl=600),
        "forged-node": cred.sign_token(rogue, sub=cred.node_subject(node.id), aud="*", scopes=cred.SCOPES, now=t,
                                       ttl=600),
        "forged-coordinator": cred.sign_token(rogue, sub=cred.COORDINATOR, aud=node.id, scopes=cred.SCOPES, now=t,
                                              ttl=600),
    }
    with fleet.client("admin") as c:
        entry = next(e["address"] for e in c.entries("", "") if e["node_id"] == node.id)
    yield {"creds": creds, "sha": sha["a"], "node": node, "worker": node.status["worker_address"], "rogue": rogue,
           "entry": entry, "holder": {"node": probe_key, "forged-node": rogue}}
    with fleet.client("a") as a:
        a.delete("walk-a")


def _md(cred_value, proof: str = ""):
    if not cred_value:
        return None
    return (("authorization", f"Bearer {cred_value}"),) + (((cred.PROOF_METADATA, proof),) if proof else ())


def _grpc_call(fleet, w, method: str, who: str):
    """Call ``method`` as ``who`` with a request that touches tenant a's things; the status code.
    A node presents its token with its node key's proof for the callee, as agents do."""
    svc, name = method.strip("/").split("/")
    holder = w["holder"].get(who)
    callee = w["node"].id if svc in (access.WORKER, access.DATAPLANE) else cred.COORDINATOR_AUDIENCE
    md = _md(w["creds"][who], cred.make_call_proof(holder, callee, time.time()) if holder else "")
    ch = grpc.insecure_channel(w["worker"] if svc in (access.WORKER, access.DATAPLANE)
                               else w["entry"] if svc == access.ENTRY else fleet.addr)
    try:
        if svc == access.CLIENT:
            stub = control_pb2_grpc.ClientServiceStub(ch)
            req = {"ListNodes": control_pb2.ListNodesRequest(), "GetNode": control_pb2.GetNodeRequest(node="dc-1"),
                   "DrainNode": control_pb2.DrainNodeRequest(node="no-such-node"),
                   "SetNodeTrust": control_pb2.SetNodeTrustRequest(node="no-such-node", trusted=True),
                   "RemoveNode": control_pb2.RemoveNodeRequest(node="no-such-node"),
                   "SubmitWorkflow": control_pb2.SubmitWorkflowRequest(spec_yaml="name: x", dry_run=True),
                   "ListWorkflows": control_pb2.ListWorkflowsRequest(),
                   "GetWorkflow": control_pb2.GetWorkflowRequest(name="walk-a"),
                   "DeleteWorkflow": control_pb2.GetWorkflowRequest(name="no-such-workflow"),
                   "Invoke": control_pb2.InvokeRequest(workflow="walk-a", input_json='{"text": "hi"}',
                                                       timeout_seconds=20),
                   "Profile": control_pb2.ProfileRequest(workflow="walk-a", task="chat", requests=1),
                   "CreateKey": control_pb2.CreateKeyRequest(tenant="walk", role="user"),
                   "ListKeys": control_pb2.ListKeysRequest(),
                   "RevokeKey": control_pb2.RevokeKeyRequest(id="no-such-key"),
                   "CreateJoinToken": control_pb2.CreateJoinTokenRequest(tiers=["edge"], uses=1),
                   "ListJoinTokens": control_pb2.ListJoinTokensRequest(),
                   "RevokeJoinToken": control_pb2.RevokeJoinTokenRequest(id="no-such-token"),
                   "ListEntries": control_pb2.ListEntriesRequest(workflow="walk-a")}[name]
            fn = getattr(stub, name)
            return rpc_code(lambda: list(fn(req, timeout=30, metadata=md)) if name == "Invoke"
                            else fn(req, timeout=30, metadata=md))
        if svc == access.STORE:
            stub = control_pb2_grpc.ModelStoreStub(ch)
            if name == "Push":
                return rpc_code(lambda: stub.Push(iter([control_pb2.BlobChunk(name="x", kind="adapter",
                                                                              data=b"not a tar")]),
                                                  timeout=30, metadata=md))
            req = control_pb2.FetchRequest(name=w["sha"])
            return rpc_code(lambda: list(stub.Fetch(req, timeout=30, metadata=md)) if name == "Fetch"
                            else stub.Stat(req, timeout=30, metadata=md))
        if svc == access.AGENTS:
            return _agent_call(fleet, ch, name, who, w)
        if svc == access.ENTRY:
            stub = dp.entry_stub(ch)
            if name == "Describe":
                return rpc_code(lambda: stub.Describe(dataplane_pb2.DescribeEntryRequest(), timeout=10, metadata=md))
            req = dp.invoke_request(workflow="walk-a", input_json='{"text": "hi"}', stream=False, timeout_seconds=20,
                                    request_id="")
            return rpc_code(lambda: list(stub.Invoke(req, timeout=30, metadata=md)))
        if svc == access.DATAPLANE:
            req = dp.forward_request(workflow="walk-a", task="chat", replica_id="", outputs={}, text="hi",
                                     stream=False, sink=dp.Sink(max_tokens=2), messages=None, request_id="",
                                     tenant="")
            return rpc_code(lambda: list(dp.dataplane_stub(ch).Forward(req, timeout=30, metadata=md)))
        if svc == access.WORKER:
            stub = worker_pb2_grpc.WorkerStub(ch)
            req = {"Generate": worker_pb2.GenerateRequest(prompt="hi", sampling=worker_pb2.SamplingParams(max_tokens=2)),
                   "Embed": worker_pb2.EmbedRequest(text="hi"),
                   "LoadAdapter": worker_pb2.LoadAdapterRequest(name="walk-x", path="/nonexistent"),
                   "UnloadAdapter": worker_pb2.UnloadAdapterRequest(name="no-such-adapter"),
                   "ListAdapters": worker_pb2.ListAdaptersRequest()}[name]
            fn = getattr(stub, name)
            return rpc_code(lambda: list(fn(req, timeout=30, metadata=md)) if name == "Generate"
                            else fn(req, timeout=30, metadata=md))
        if svc == access.HEALTH:
            stub = health_pb2_grpc.HealthStub(ch)
            if name == "Watch":
                return rpc_code(lambda: next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=5, metadata=md)))
            if name == "List":
                return rpc_code(lambda: stub.List(health_pb2.HealthListRequest(), timeout=5, metadata=md))
            return rpc_code(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=md))
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        return rpc_code(lambda: list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5, metadata=md)))
    finally:
        ch.close()


def _agent_call(fleet, ch, name: str, who: str, w):
    """AgentService authenticates by what its messages carry: an agent has a join token and its
    node key; a forged agent has another's node id or a wrong join token; nobody else has either."""
    stub = control_pb2_grpc.AgentServiceStub(ch)
    md = _md(w["creds"][who])
    key = w["rogue"] if who.startswith("forged") else cred.new_private_key()
    node_id = w["node"].id if who == "forged-node" else ""
    token = {"agent": TOKEN, "forged-coordinator": "wrong-join-token"}.get(who, "")
    spec = {"name": f"walk-{who}-{name.lower()}", "tier": "edge", "region": "x"}
    with_key = who in ("agent", "forged-node", "forged-coordinator")
    req = register_request(join_token=token, node_id=node_id, spec=spec, capacity={}, status=None,
                           proof=cred.make_proof(key, node_id, time.time()) if with_key else None)
    if name == "Register":
        return rpc_code(lambda: stub.Register(req, timeout=10, metadata=md))
    if who == "agent":
        resp = stub.Register(req, timeout=10)
        nid, session = resp.node_id, resp.session_token
    else:
        nid, session = w["node"].id, "forged-session"
    hb = heartbeat_request(node_id=nid, session_token=session, seq=1, draining=False, generation=0, price=None,
                           capacity=None, status=None, sent_unix=time.time())
    return rpc_code(lambda: next(stub.Heartbeat(iter([hb]), timeout=10, metadata=md)))


def expected(r: access.Rule, who: str) -> str:
    """"allowed", "refused" or "hidden" (NOT_FOUND: another tenant's thing) for a caller."""
    kind = KIND.get(who, who)
    if r.callers == frozenset(access.CALLERS):
        return "allowed"         # open to anyone: nothing presented is even looked at
    if r.surface == access.AGENTS:
        return "allowed" if who == "agent" else "refused"
    if kind not in r.callers:
        return "refused"
    if kind in access.TOKEN_CALLERS and r.scope and r.scope not in SCOPES_OF[kind]:
        return "refused"
    if who == "wrong-tenant" and r.owner.startswith(access.OWN_TENANT) and r.method in (
            "GetWorkflow", "Invoke", "Profile", "Stat", "Fetch", "ListEntries", "GET /v1/models/{model}"):
        return "hidden"
    if who == "node" and r.method == "Fetch":
        return "hidden"          # a node fetches only what its own assignments name
    return "allowed"


GRPC_RULES = [r for r in access.TABLE if not r.surface.startswith("http:")]


@pytest.mark.parametrize("who", CALLERS)
def test_walk_every_grpc_method_with_every_caller(fleet, walk, who):
    wrong = []
    for r in GRPC_RULES:
        code = _grpc_call(fleet, walk, r.key, who)
        want = expected(r, who)
        ok = {"allowed": code not in REFUSED, "refused": code in REFUSED,
              "hidden": code == grpc.StatusCode.NOT_FOUND}[want]
        if not ok:
            wrong.append(f"{r.key} as {who}: {code.name}, expected {want}")
    assert not wrong, "\n".join(wrong)
    assert fleet.coord.alive() and "Traceback" not in fleet.coord.log()


def test_the_node_the_walk_touched_still_serves(fleet, walk):
    with fleet.client("a") as a:
        out = a.invoke("walk-a", {"text": "still here"}, timeout=30)
    assert isinstance(out["output"]["text"], str)


def _http(url: str, key: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_walk_the_coordinators_http_routes(fleet, walk):
    for r in access.TABLE:
        if r.surface != "http:coordinator" or not r.method.startswith("GET"):
            continue
        path = r.method.split(" ", 1)[1].replace("{model}", "walk-a")     # tenant a's workflow
        url = fleet.metrics if r.method.endswith("/metrics") else fleet.openai + path[3:]
        for who in CALLERS:
            code = _http(url, walk["creds"][who])
            want = expected(r, who)
            assert (code == 200) == (want == "allowed"), (r.key, who, code)
            if want == "hidden":
                assert code == 404, (r.key, who, code)      # another tenant's model: as if absent
            elif want == "refused":
                assert code == 401, (r.key, who, code)


def test_every_route_of_the_openai_door_is_in_the_table_for_both_doors():
    door = OpenAIDoor(backend=None, authenticate=lambda authorization: None)
    door.server.sock.close()                                  # never started: only its routes are read
    served = {f"{m} {route.path.replace('{model:path}', '{model}')}"
              for route in door.app.routes for m in route.methods if m != "HEAD"}
    assert served == set(ROUTES)
    for surface in ("http:coordinator", "http:agent"):
        in_table = {r.method for r in access.TABLE if r.surface == surface and r.method.startswith(("GET /v1", "POST"))}
        assert in_table == served, (surface, served ^ in_table)


def test_the_agent_http_door_checks_keys():
    # Issue 16 closed the gap: an agent's OpenAI door checks API keys with the coordinator's key
    # set (tests/trust/test_entry_doors.py refuses keys there as at the coordinator); the table
    # (and docs/security.md with it) names the code that does, and no rule is left "not yet".
    rules = [r for r in access.TABLE if r.surface == "http:agent" and r.method.startswith(("POST", "GET /v1"))]
    assert rules and all(r.enforced_by.startswith("agent/dataplane/door.py") for r in rules)
    assert not [r.key for r in access.TABLE if r.enforced_by.startswith("not yet")]


def test_an_unknown_key_format_is_unauthenticated_not_a_crash(fleet):
    ch = grpc.insecure_channel(fleet.addr)
    try:
        stub = control_pb2_grpc.ClientServiceStub(ch)
        for junk in ("atc1." + base64.urlsafe_b64encode(b"{}").decode() + ".AA", "x" * 5000, "atoll__"):
            assert rpc_code(lambda: stub.ListNodes(control_pb2.ListNodesRequest(), timeout=5, metadata=_md(junk))) \
                == grpc.StatusCode.UNAUTHENTICATED
    finally:
        ch.close()
    wait_for(lambda: fleet.coord.alive(), 1)


def test_a_node_token_without_its_holders_proof_for_this_callee_is_refused(fleet, walk):
    """A host a node token was presented to (a renter serving a hop) holds the token but not the
    node key: without a proof, or with the proof made for another callee (the one it received),
    the token opens nothing, neither another node's Worker nor the coordinator's model store."""
    token, key, node = walk["creds"]["node"], walk["holder"]["node"], walk["node"]
    now = time.time()
    captured = cred.make_call_proof(key, "some-renter-node-id", now)      # what a renter callee saw
    stale = cred.make_call_proof(key, node.id, now - 3 * cred.FRESHNESS_S)
    ch = grpc.insecure_channel(walk["worker"])
    stub = worker_pb2_grpc.WorkerStub(ch)
    store = control_pb2_grpc.ModelStoreStub(grpc.insecure_channel(fleet.addr))
    req = worker_pb2.GenerateRequest(prompt="hi", sampling=worker_pb2.SamplingParams(max_tokens=2))
    for proof in ("", captured, stale, "garbage"):
        assert rpc_code(lambda: list(stub.Generate(req, timeout=10, metadata=_md(token, proof)))) == \
            grpc.StatusCode.UNAUTHENTICATED, proof
        assert rpc_code(lambda: list(store.Fetch(control_pb2.FetchRequest(name=walk["sha"]), timeout=10,
                                                 metadata=_md(token, proof)))) == \
            grpc.StatusCode.UNAUTHENTICATED, proof
    good = cred.make_call_proof(key, node.id, now)                      # the holder itself, for this node
    assert rpc_code(lambda: list(stub.Generate(req, timeout=30, metadata=_md(token, good)))) not in REFUSED
