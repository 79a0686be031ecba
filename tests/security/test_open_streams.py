"""Health and reflection answer callers without credentials, and their streams stay open as long
as the caller keeps them: each server holds a bounded number of them, and a health Watch for a
service the server does not have ends at once instead of keeping a waiter keyed by its name."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from atoll.core import rpc

H = health_pb2.HealthCheckResponse


async def _server():
    server = grpc.aio.server(options=rpc.SERVER_OPTIONS)
    hs = rpc.add_health_and_reflection(server, ["atoll.v1.Worker"])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await rpc.set_serving(hs, ["atoll.v1.Worker"], True)
    return server, hs, port


def test_watch_streams_are_bounded_and_unknown_services_are_not_watched(monkeypatch):
    monkeypatch.setattr(rpc, "MAX_OPEN_WATCHES", 4)

    async def main():
        server, hs, port = await _server()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=rpc.CHANNEL_OPTIONS) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="x" * (1 << 20)))
            assert (await unknown.read()).status == H.SERVICE_UNKNOWN
            assert await unknown.read() is grpc.aio.EOF          # the stream ended: nothing kept for it
            assert "x" * (1 << 20) not in hs._server_watchers
            open_ = [stub.Watch(health_pb2.HealthCheckRequest(service=s)) for s in ("", "atoll.v1.Worker") * 2]
            assert [(await c.read()).status for c in open_] == [H.SERVING] * 4
            extra = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await extra.read()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status == H.SERVING
            open_[0].cancel()                                       # a slot comes back when one leaves
            for _ in range(100):
                if hs._open < 4:
                    break
                await asyncio.sleep(0.02)
            again = stub.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await again.read()).status == H.SERVING
            await rpc.set_serving(hs, ["atoll.v1.Worker"], False)   # open watchers still see changes
            assert (await open_[1].read()).status == H.NOT_SERVING
            for c in (*open_, again):
                c.cancel()
        await server.stop(0)

    asyncio.run(main())


def test_reflection_streams_are_bounded(monkeypatch):
    monkeypatch.setattr(rpc, "MAX_OPEN_REFLECTIONS", 3)

    async def main():
        server, hs, port = await _server()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=rpc.CHANNEL_OPTIONS) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            calls = []
            for _ in range(3):
                c = stub.ServerReflectionInfo()
                await c.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                names = {s.name for s in (await c.read()).list_services_response.service}
                assert "atoll.v1.Worker" in names
                calls.append(c)
            extra = stub.ServerReflectionInfo()
            await extra.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await extra.read()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await calls[0].done_writing()
            assert await calls[0].read() is grpc.aio.EOF
            for _ in range(100):
                c = stub.ServerReflectionInfo()
                await c.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                try:
                    await c.read()
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("the slot of a closed stream never came back")
            for c in (*calls, c):
                c.cancel()
        await server.stop(0)

    asyncio.run(main())
