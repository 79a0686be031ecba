"""A hostile host for the security tests: it joins with its own node key and the bootstrap join
token, keeps a heartbeat stream in a thread and reports whatever status it likes (an entry
address of its own choosing, say); and a gRPC server that records every call's metadata and
answers UNAVAILABLE, so that a caller fails over without noticing."""

from __future__ import annotations

import base64
import threading
import time
from concurrent import futures

import grpc

from atoll.core import credentials as cred
from atoll.core.rpc import CHANNEL_OPTIONS
from atoll.wire.agent_service import agent_stub, heartbeat_request, instruction_from_pb, register_request
from tests.control.helpers import wait_for

CAP = dict(gpus=[dict(index=0, name="NVIDIA A100", memory_total_bytes=80 << 30, memory_free_bytes=80 << 30)],
           cpu_cores=16, memory_bytes=64 << 30, disk_bytes=500 << 30, simulated=True)


class HostileAgent:
    def __init__(self, addr: str, spec: dict, join_token: str, status: dict | None = None):
        self.addr, self.spec, self.status, self.join_token = addr, dict(spec), dict(status or {}), join_token
        self.key = cred.new_private_key()
        self.node_id = self.session = ""
        self.token = ""
        self.coordinator_key: cred.PublicKey | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> None:
        self.ch = grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS)
        self.stub = agent_stub(self.ch)
        resp = self.stub.Register(register_request(
            join_token=self.join_token, node_id="", spec=self.spec, capacity=CAP, status=self.status,
            proof=cred.make_proof(self.key, "", time.time())), timeout=10)
        self.node_id, self.session = resp.node_id, resp.session_token
        self.coordinator_key = cred.public_from_bytes(bytes(resp.coordinator_public_key))

    def _beats(self):
        seq = 0
        while not self._stop.is_set():
            seq += 1
            yield heartbeat_request(node_id=self.node_id, session_token=self.session, seq=seq, draining=False,
                                    generation=0, price=None, capacity=None, status=self.status,
                                    sent_unix=time.time())
            self._stop.wait(0.5)

    def start(self) -> None:
        def run():
            try:
                for resp in self.stub.Heartbeat(self._beats()):
                    for ins in resp.instructions:
                        d = instruction_from_pb(ins)
                        if "credential" in d:
                            self.token = d["credential"][0]
            except grpc.RpcError:
                pass
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.token, 15, what="the hostile host's node token")

    def stop(self) -> None:
        self._stop.set()
        self.ch.close()


class Recorder(grpc.GenericRpcHandler):
    """Records (method, authorization) of every call and refuses it as UNAVAILABLE."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def service(self, details):
        self.calls.append((details.method, dict(details.invocation_metadata).get("authorization", "")))

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        if details.method.endswith("/Describe"):
            return grpc.unary_unary_rpc_method_handler(refuse)
        return grpc.unary_stream_rpc_method_handler(refuse)


def recording_server() -> tuple[grpc.Server, Recorder, str]:
    rec = Recorder()
    srv = grpc.server(futures.ThreadPoolExecutor(4))
    srv.add_generic_rpc_handlers((rec,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, rec, f"127.0.0.1:{port}"


# A node key the tests name as a node token's holder, and how such a token is presented: with
# the key's proof for the callee (a node id, or cred.COORDINATOR_AUDIENCE), as an agent does.
HOLDER = cred.new_private_key()
HOLDER_B64 = base64.urlsafe_b64encode(cred.public_bytes(HOLDER)).decode()


def presented(token: str, callee: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),
            (cred.PROOF_METADATA, cred.make_call_proof(HOLDER, callee, time.time())))
