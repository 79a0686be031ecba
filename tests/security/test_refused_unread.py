"""A caller the coordinator's or an agent's interceptor refuses is refused from its headers: its
request is never read nor decoded.

gRPC reads and decodes a unary request (up to 16 MiB) before the handler runs, and the
interceptors used to refuse inside the call: 8 strangers sending 16 MiB SubmitWorkflow requests in
a loop took a real coordinator from 101 to 1,793 MiB and another tenant's ListWorkflows from a
p50 of 2.2 ms to 133 ms, and an agent's Worker.Generate from 71 to 2,382 MiB (audit 7); refused from
the headers, 890 MiB and 64 ms (what is left is gRPC's flow-control window, docs/security.md) and
128 MiB. Here a counting deserializer stands for the
decode: the refused calls below decoded their 4 MiB request before, and now never do."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from atoll.agent.dataplane.entry import EntryGuard, Keys as EntryKeys
from atoll.agent.guard import WorkerGuard
from atoll.core.apikeys import Identity, KeyEntry, key_set, secret_hash
from atoll.core.errors import Unauthenticated
from atoll.coordinator import auth
from atoll.coordinator.auth import AuthInterceptor

BIG = b"\x0a" + b"\x80\x80\x80\x02" + b"x" * (4 << 20)      # field 1, 4 MiB of bytes


class Keys:
    """Keys are enforced; only "good" is a key (tenant team-a's user)."""

    def enabled(self) -> bool:
        return True

    def check(self, key: str) -> Identity:
        if key != "good":
            raise Unauthenticated("unknown API key")
        return Identity("k1", "team-a", "user")


async def call_with(interceptor, service: str, method: str, metadata=()) -> tuple[grpc.StatusCode, list[int], list]:
    decoded: list[int] = []
    seen: list = []

    def deserialize(raw: bytes) -> bytes:
        decoded.append(len(raw))
        return raw

    async def handle(request, context):
        seen.append(auth.current.get())
        return b""

    server = grpc.aio.server(interceptors=[interceptor],
                             options=[("grpc.max_receive_message_length", 16 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
        method: grpc.unary_unary_rpc_method_handler(handle, request_deserializer=deserialize,
                                                    response_serializer=lambda b: b)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                             options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
            call = ch.unary_unary(f"/{service}/{method}", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            try:
                await call(BIG, metadata=metadata, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
    finally:
        await server.stop(None)
    return code, decoded, seen


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)], ids=["anonymous", "bad-key"])
def test_the_coordinator_refuses_a_caller_without_a_key_before_reading_its_request(metadata):
    code, decoded, _ = asyncio.run(call_with(AuthInterceptor(Keys(), issuer=None), "atoll.v1.ClientService",
                                             "SubmitWorkflow", metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert decoded == [], f"the refused caller's request was decoded ({decoded} bytes)"


def test_the_coordinator_still_reads_an_admitted_callers_request_and_knows_the_caller():
    code, decoded, seen = asyncio.run(call_with(AuthInterceptor(Keys(), issuer=None), "atoll.v1.ClientService",
                                                "SubmitWorkflow", (("authorization", "Bearer good"),)))
    assert code == grpc.StatusCode.OK and decoded == [len(BIG)]
    assert seen == [Identity("k1", "team-a", "user")]


def test_a_user_key_refused_a_method_of_admins_is_refused_before_reading_too():
    code, decoded, _ = asyncio.run(call_with(AuthInterceptor(Keys(), issuer=None), "atoll.v1.ClientService",
                                             "CreateKey", (("authorization", "Bearer good"),)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and decoded == []


def test_an_agent_refuses_a_caller_without_a_token_before_reading_its_request():
    guard = WorkerGuard(lambda: (None, "node-1"))
    code, decoded, _ = asyncio.run(call_with(guard, "atoll.v1.Worker", "Generate"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert decoded == [], f"the refused caller's request was decoded ({decoded} bytes)"


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer atoll_k1_wrong"),)], ids=["anonymous", "bad-key"])
def test_an_entry_refuses_an_invoke_without_a_valid_key_before_reading_its_request(metadata):
    """An agent's entry port takes API keys and caller tokens, and its handler checks them; before
    it had no interceptor, so every Invoke was decoded first (8 strangers' 16 MiB Invokes took a
    real agent from 71 to 3,776 MiB, kept after; now 388 MiB)."""
    keys = EntryKeys()
    keys.set(key_set([KeyEntry("k1", "team-a", "user", secret_hash("right"))]))
    code, decoded, _ = asyncio.run(call_with(EntryGuard(keys), "atoll.v1.Entry", "Invoke", metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert decoded == [], f"the refused caller's request was decoded ({decoded} bytes)"
    code, decoded, _ = asyncio.run(call_with(EntryGuard(keys), "atoll.v1.Entry", "Invoke",
                                             (("authorization", "Bearer atoll_k1_right"),)))
    assert code == grpc.StatusCode.OK and decoded == [len(BIG)]
