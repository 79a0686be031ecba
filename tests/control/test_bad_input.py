"""Bad input: one-line errors with exit code 2 from the CLI; INVALID_ARGUMENT from the server."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

from atoll.core import credentials as cred
from atoll.proto.v1 import common_pb2, control_pb2, control_pb2_grpc
from atoll.wire.agent_service import register_request

from .helpers import Proc, free_port, node_yaml, wait_for

TOKEN = "bad-input-token"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "atoll", *args], capture_output=True, text=True, timeout=30)


def assert_one_line_error(out, *needles):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_agent_missing_config(tmp_path):
    assert_one_line_error(run_cli("agent", "--config", str(tmp_path / "none.yaml"), "--join-token", "x"),
                          "file not found")
    assert_one_line_error(run_cli("agent", "--join-token", "x"), "--config")


def test_agent_unknown_tier_and_negative_price(tmp_path):
    p = node_yaml(tmp_path / "n.yaml", tier="cloud")
    assert_one_line_error(run_cli("agent", "--config", str(p), "--join-token", "x"), "tier", "datacenter")
    p = node_yaml(tmp_path / "m.yaml", price_per_hour=-1)
    assert_one_line_error(run_cli("agent", "--config", str(p), "--join-token", "x"), "price_per_hour")


def test_malformed_addresses():
    assert_one_line_error(run_cli("nodes", "--coordinator", "not-an-address"), "HOST:PORT")
    assert_one_line_error(run_cli("coordinator", "--listen", "1.2.3.4"), "--listen", "HOST:PORT")
    out = run_cli("coordinator", "--heartbeat-interval", "-3")
    assert out.returncode == 2 and "must be > 0" in out.stderr


def test_unreachable_coordinator_is_a_clear_error():
    out = run_cli("nodes", "--coordinator", f"127.0.0.1:{free_port()}")
    assert_one_line_error(out, "cannot reach the coordinator")


@pytest.fixture
def coordinator(tmp_path):
    port = free_port()
    p = Proc(["coordinator", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
              "--state-dir", str(tmp_path / "s"), "--join-token", TOKEN], tmp_path / "c.log")
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    wait_for(lambda: control_pb2_grpc.ClientServiceStub(ch).ListNodes(control_pb2.ListNodesRequest(), timeout=1)
             is not None, 20)
    yield ch, p
    ch.close()
    p.stop()


def test_hostile_rpcs_get_invalid_argument_and_server_survives(coordinator):
    ch, proc = coordinator
    agent = control_pb2_grpc.AgentServiceStub(ch)
    client = control_pb2_grpc.ClientServiceStub(ch)

    def code_of(fn, req):
        with pytest.raises(grpc.RpcError) as ei:
            fn(req, timeout=5)
        return ei.value.code()

    spec = common_pb2.NodeSpec(name="ok", tier="edge", region="r")
    bad = [
        control_pb2.RegisterRequest(join_token=TOKEN, spec=common_pb2.NodeSpec(name="x" * 10000, tier="edge", region="r")),
        control_pb2.RegisterRequest(join_token=TOKEN, spec=common_pb2.NodeSpec(name="ok", tier="martian", region="r")),
        control_pb2.RegisterRequest(join_token=TOKEN, spec=common_pb2.NodeSpec(name="ok", tier="edge", region="r",
                                                                                price_per_hour=-5)),
        control_pb2.RegisterRequest(join_token=TOKEN, spec=spec,
                                    capacity=common_pb2.NodeCapacity(memory_bytes=-1)),
        control_pb2.RegisterRequest(join_token=TOKEN, spec=spec, node_id="../../etc/passwd"),
    ]
    for req in bad:
        assert code_of(agent.Register, req) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(agent.Register, control_pb2.RegisterRequest(join_token="wrong", spec=spec)) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert code_of(client.ListNodes, control_pb2.ListNodesRequest(state=99)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(client.ListNodes, control_pb2.ListNodesRequest(tier="moon")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(client.GetNode, control_pb2.GetNodeRequest(node="")) == grpc.StatusCode.INVALID_ARGUMENT

    # raw garbage bytes where a protobuf message is expected
    raw = ch.unary_unary("/atoll.v1.ClientService/ListNodes", request_serializer=None, response_deserializer=None)
    for junk in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as ei:
            raw(junk, timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # a heartbeat stream with a forged session
    hb = agent.Heartbeat(iter([control_pb2.HeartbeatRequest(node_id="abcdefgh12", session_token="forged")]), timeout=5)
    with pytest.raises(grpc.RpcError) as ei:
        list(hb)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # still serving, nothing stored from the bad requests
    assert proc.alive()
    assert list(client.ListNodes(control_pb2.ListNodesRequest(), timeout=5).nodes) == []
    assert code_of(agent.Register, control_pb2.RegisterRequest(join_token=TOKEN, spec=spec)) == \
        grpc.StatusCode.UNAUTHENTICATED                     # no node key, no entry
    proof = cred.make_proof(cred.new_private_key(), "", time.time())
    ok = agent.Register(register_request(join_token=TOKEN, node_id="", spec={"name": "ok", "tier": "edge",
                                                                             "region": "r"},
                                         capacity={}, status=None, proof=proof), timeout=5)
    assert len(ok.node_id) >= 8
    assert "Traceback" not in proc.log()


def test_invoke_at_the_coordinator_bounds_max_tokens_as_the_entries_do(coordinator):
    """The coordinator forwards Invoke to an entry, so it takes every budget an entry takes
    (atoll.core.openai_api.MAX_TOKENS) and refuses the rest itself."""
    from atoll.core.openai_api import MAX_TOKENS
    from atoll.wire import dataplane

    ch, proc = coordinator
    client = control_pb2_grpc.ClientServiceStub(ch)

    def invoke(max_tokens: int) -> grpc.RpcError:
        req = dataplane.invoke_request(workflow="absent", input_json='{"text": "hi"}', stream=False,
                                       timeout_seconds=5, request_id="")
        req.max_tokens = max_tokens
        with pytest.raises(grpc.RpcError) as ei:
            list(client.Invoke(req, timeout=5))
        return ei.value

    over = invoke(MAX_TOKENS + 1)
    assert over.code() == grpc.StatusCode.INVALID_ARGUMENT and f"0..{MAX_TOKENS}" in over.details()
    for ok in (8193, MAX_TOKENS):            # the budget passes; what is missing is the workflow
        assert invoke(ok).code() == grpc.StatusCode.NOT_FOUND
    assert proc.alive()
