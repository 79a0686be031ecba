"""Hostile input: every RPC of the coordinator, and the agent's Worker service, gets generated
malformed messages (hypothesis) and raw garbage bytes. Each must answer with a clear status
(never INTERNAL or UNKNOWN), the servers keep serving, and stored state stays intact.
The number of inputs tried per handler is printed (run with -s to see it)."""

from __future__ import annotations

import sqlite3
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.proto.v1 import control_pb2, worker_pb2
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

from .fuzzing import message

pytestmark = pytest.mark.integration
TOKEN = "fuzz-token-123"
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
           grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE}
TRIED: Counter = Counter()
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    p = Proc(["coordinator", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
              "--state-dir", str(tmp / "state"), "--join-token", TOKEN], tmp / "c.log")
    agent = Proc(["agent", "--coordinator", f"127.0.0.1:{port}", "--config",
                  str(node_yaml(tmp / "n.yaml", name="fuzz-node")), "--state-dir", str(tmp / "a"),
                  "--join-token", TOKEN], tmp / "a.log")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    from atoll.proto.v1 import control_pb2_grpc

    stub = control_pb2_grpc.ClientServiceStub(ch)
    wait_for(lambda: len(stub.ListNodes(control_pb2.ListNodesRequest(), timeout=2).nodes) == 1, 30)
    yield ch, p, tmp
    ch.close()
    agent.stop()
    p.stop()
    print("\nfuzz inputs tried per handler: " + ", ".join(f"{k}={v}" for k, v in sorted(TRIED.items())))


def call(ch, service: str, method, req_bytes: bytes, streaming_in: bool, streaming_out: bool):
    path = f"/atoll.v1.{service}/{method.name}"
    try:
        if streaming_in and streaming_out:
            fn = ch.stream_stream(path, request_serializer=None, response_deserializer=None)
            list(fn(iter([req_bytes]), timeout=5))
        elif streaming_in:
            fn = ch.stream_unary(path, request_serializer=None, response_deserializer=None)
            fn(iter([req_bytes]), timeout=5)
        elif streaming_out:
            fn = ch.unary_stream(path, request_serializer=None, response_deserializer=None)
            list(fn(req_bytes, timeout=5))
        else:
            fn = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
            fn(req_bytes, timeout=5)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


SERVICES = [("ClientService", control_pb2), ("AgentService", control_pb2), ("ModelStore", control_pb2)]
METHODS = [(svc, m) for svc, mod in SERVICES for m in mod.DESCRIPTOR.services_by_name[svc].methods]


@pytest.mark.parametrize("svc,method", METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_coordinator_handlers_survive_hostile_messages(coordinator, svc, method):
    ch, proc, tmp = coordinator

    @FUZZ
    @given(msg=message(method.input_type), junk=st.binary(max_size=64), use_junk=st.booleans())
    def run(msg, junk, use_junk):
        data = junk if use_junk else msg.SerializeToString()
        code, details = call(ch, svc, method, data, method.client_streaming, method.server_streaming)
        TRIED[f"{svc}.{method.name}"] += 1
        assert code in ALLOWED, (code, details, msg)

    run()
    assert proc.alive(), proc.log()[-2000:]


def test_state_intact_after_fuzzing(coordinator):
    ch, proc, tmp = coordinator
    from atoll.proto.v1 import control_pb2_grpc

    nodes = control_pb2_grpc.ClientServiceStub(ch).ListNodes(control_pb2.ListNodesRequest(), timeout=5).nodes
    assert "fuzz-node" in {n.spec.name for n in nodes}
    db = sqlite3.connect(str(tmp / "state" / "atoll.db"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "Traceback" not in proc.log()


def test_worker_handlers_survive_hostile_messages(tmp_path):
    """The agent's Worker service with a real (tiny, random) model behind it."""
    import asyncio

    from atoll.agent.runtime import Engine
    from atoll.agent.worker import WorkerService
    from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama

    build_tiny_llama(tmp_path / "base")
    build_tiny_adapter(tmp_path / "ad", tmp_path / "base", rank=4)
    engine = Engine(tmp_path / "base", device="cpu", dtype="float32", lora_backend="torch",
                    kv_cache_tokens=2048, max_waiting=64)
    engine.add_adapter("ad", str(tmp_path / "ad"))
    svc = WorkerService(engine)
    loop = asyncio.new_event_loop()

    async def make():
        srv = grpc.aio.server()
        svc.add_to_server(srv)
        p = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        return srv, p

    server, port = loop.run_until_complete(make())
    import threading
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    tried = Counter()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            for m in worker_pb2.DESCRIPTOR.services_by_name["Worker"].methods:
                @settings(max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
                @given(msg=message(m.input_type), junk=st.binary(max_size=64), use_junk=st.booleans())
                def run(msg, junk, use_junk):
                    if m.name == "Generate" and not use_junk:      # keep generations short
                        if msg.sampling.max_tokens > 8 or msg.sampling.max_tokens < 0:
                            msg.sampling.max_tokens = 4
                    data = junk if use_junk else msg.SerializeToString()
                    code, details = call(ch, "Worker", m, data, False, m.server_streaming)
                    tried[m.name] += 1
                    assert code in ALLOWED, (m.name, code, details)
                run()
            # still serving
            ok = ch.unary_stream("/atoll.v1.Worker/Generate", request_serializer=worker_pb2.GenerateRequest.SerializeToString,
                                 response_deserializer=worker_pb2.GenerateResponse.FromString)
            out = list(ok(worker_pb2.GenerateRequest(prompt="hello", sampling=worker_pb2.SamplingParams(max_tokens=3)),
                          timeout=30))
            assert out[-1].finished
    finally:
        loop.call_soon_threadsafe(loop.stop)
        engine.stop()
    print("\nworker fuzz inputs tried: " + ", ".join(f"{k}={v}" for k, v in sorted(tried.items())))
