"""The Worker gRPC service on a real grpc.aio server over loopback."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from atoll.agent.runtime import Engine, SamplingParams
from atoll.proto.v1 import worker_pb2, worker_pb2_grpc
from tests.fixtures.tiny_models import build_tiny_adapter


@pytest.fixture(scope="module")
def worker_engine(tiny_dir):
    eng = Engine(tiny_dir, lora_backend="torch", max_lora_rank=8, max_adapters_on_device=3, kv_cache_tokens=256)
    yield eng
    eng.close()


async def _serve(engine, registry):
    from atoll.agent.worker import WorkerService

    server = grpc.aio.server()
    svc = WorkerService(engine, registry=registry)
    svc.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_worker_service_end_to_end(worker_engine, tiny_dir, tmp_path):
    ad = build_tiny_adapter(tmp_path / "ad", tiny_dir, rank=4)
    bad = build_tiny_adapter(tmp_path / "bad", tiny_dir, rank=4, extra_config={"use_dora": True})
    registry = CollectorRegistry()

    async def main():
        server, port = await _serve(worker_engine, registry)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = worker_pb2_grpc.WorkerStub(ch)
                info = await stub.LoadAdapter(worker_pb2.LoadAdapterRequest(name="t", path=str(ad)))
                assert info.rank == 4 and info.alpha == 16 and "q_proj" in info.target_modules
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.LoadAdapter(worker_pb2.LoadAdapterRequest(name="d", path=str(bad)))
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "DoRA" in ei.value.details()
                lst = await stub.ListAdapters(worker_pb2.ListAdaptersRequest())
                assert [a.name for a in lst.adapters] == ["t"]

                sp = worker_pb2.SamplingParams(max_tokens=6, temperature=0.0)
                msgs = [m async for m in stub.Generate(worker_pb2.GenerateRequest(
                    prompt="the cat sat", adapter="t", sampling=sp))]
                assert msgs[-1].finished and msgs[-1].finish_reason in ("length", "stop")
                ids = [t for m in msgs for t in m.token_ids]
                offline = worker_engine.generate(["the cat sat"], adapters=["t"],
                                                 sampling=__import__("atoll.agent.runtime", fromlist=["x"])
                                                 .SamplingParams(max_tokens=6))[0]
                assert ids == offline.token_ids and "".join(m.text for m in msgs) == offline.text

                async def code_of(req):
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        async for _ in stub.Generate(req):
                            pass
                    return e.value.code()

                assert await code_of(worker_pb2.GenerateRequest(prompt="x", adapter="nope")) == grpc.StatusCode.NOT_FOUND
                assert await code_of(worker_pb2.GenerateRequest(
                    prompt="x", sampling=worker_pb2.SamplingParams(temperature=-2))) == grpc.StatusCode.INVALID_ARGUMENT
                assert await code_of(worker_pb2.GenerateRequest(prompt="")) == grpc.StatusCode.INVALID_ARGUMENT
                assert await code_of(worker_pb2.GenerateRequest(
                    prompt_token_ids=[1] * 200, sampling=worker_pb2.SamplingParams(max_tokens=100))) \
                    == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert await code_of(worker_pb2.GenerateRequest(prompt="x", model="other")) == grpc.StatusCode.NOT_FOUND

                # client cancellation cancels the engine request
                call = stub.Generate(worker_pb2.GenerateRequest(
                    request_id="c1", prompt_token_ids=[1, 2, 3],
                    sampling=worker_pb2.SamplingParams(max_tokens=150, temperature=0.0)))
                first = await call.read()
                assert first.token_ids
                call.cancel()
                for _ in range(200):
                    if "c1" not in worker_engine.inbox:
                        break
                    await asyncio.sleep(0.01)
                assert "c1" not in worker_engine.inbox

                emb = await stub.Embed(worker_pb2.EmbedRequest(text="hello world"))
                assert len(emb.embedding) == worker_engine.cfg.hidden_size and emb.tokens > 0

                un = await stub.UnloadAdapter(worker_pb2.UnloadAdapterRequest(name="t"))
                assert un.unloaded
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.UnloadAdapter(worker_pb2.UnloadAdapterRequest(name="t"))
                assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(None)

    asyncio.run(main())
    text = generate_latest(registry).decode()
    for name in ("atoll_time_to_first_token_seconds_count", "atoll_time_per_output_token_seconds_count",
                 "atoll_generated_tokens_total", "atoll_running_requests", "atoll_waiting_requests",
                 "atoll_kv_cache_usage_ratio", "atoll_adapter_slot_hits_total", "atoll_adapter_slot_misses_total",
                 "atoll_adapter_load_seconds_count"):
        assert name in text, name
    gen = [ln for ln in text.splitlines() if ln.startswith("atoll_generated_tokens_total")][0]
    assert float(gen.split()[-1]) >= 7


def test_shutdown_drains_then_refuses_and_stop_never_strands_a_request(tiny_dir):
    """A replaced engine finishes the requests it has (within the drain time), answers new ones
    UNAVAILABLE (over gRPC too, so a router retries elsewhere), and one stopped with work left
    ends those streams with UNAVAILABLE at once instead of leaving them open until a deadline."""
    from atoll.agent.runtime import SamplingParams
    from atoll.core.errors import Unavailable

    sp = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    eng = Engine(tiny_dir, lora_backend="torch", kv_cache_tokens=256).start()
    try:
        hs = [eng.submit([1, 5, 9 + i], None, sp) for i in range(3)]
        assert eng.shutdown(drain_timeout=60) == 0                   # drained: nothing failed
        assert all(len(h.result(1).token_ids) == 24 for h in hs)
        with pytest.raises(Unavailable, match="shutting down"):
            eng.submit([1, 5, 9], None, sp)

        async def main():                                          # the same answer over gRPC
            server, port = await _serve(eng, CollectorRegistry())
            eng.shutdown(0)                                        # WorkerService started it again
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    stub = worker_pb2_grpc.WorkerStub(ch)
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        async for _ in stub.Generate(worker_pb2.GenerateRequest(prompt="the cat", sampling=(
                                worker_pb2.SamplingParams(max_tokens=4)))):
                            pass
                    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                await server.stop(None)

        asyncio.run(main())

        eng.start()                                                # serving again after start()
        long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        h = eng.submit([1, 5, 9], None, long)
        assert h.result(60).token_ids                              # the loop serves once more
        hs = [eng.submit([1, 5, 9 + i], None, long) for i in range(4)]
        failed = eng.shutdown(drain_timeout=0)                     # no drain: cut off, not stranded
        assert all(h.finished for h in hs)                         # no handle is left waiting
        assert failed >= 1 and failed == sum(h.finish_reason == "error" for h in hs)
        for h in hs:
            if h.finish_reason == "error":
                with pytest.raises(Unavailable, match="stopped before this request finished"):
                    h.result(0)
            else:
                assert len(h.result(0).token_ids) == 200
        assert eng.stats()["running"] == 0 and eng.stats()["waiting"] == 0
        assert eng.kv.num_free == eng.kv.num_blocks                # their KV blocks came back
    finally:
        eng.close()


def test_a_workers_prompt_is_bounded_as_a_filled_stage_prompt_is():
    """Other agents call Generate and Embed with a prompt they built: at most MAX_PROMPT_CHARS
    characters (or token ids), as the data plane's own fill() allows."""
    from atoll.agent.dataplane.chain import MAX_PROMPT_CHARS
    from atoll.agent.worker import WorkerService
    from atoll.core.errors import InvalidArgument

    names = ("prompt", "prompt_token_ids")
    assert WorkerService._text_or_ids("x" * MAX_PROMPT_CHARS, [], names, "empty") == "x" * MAX_PROMPT_CHARS
    with pytest.raises(InvalidArgument, match=f"prompt holds {MAX_PROMPT_CHARS + 1} items"):
        WorkerService._text_or_ids("x" * (MAX_PROMPT_CHARS + 1), [], names, "empty")
    with pytest.raises(InvalidArgument, match="prompt_token_ids holds"):
        WorkerService._text_or_ids("", [1] * (MAX_PROMPT_CHARS + 1), names, "empty")


def test_a_callers_request_id_is_bounded_and_kept_in_its_own_name(worker_engine):
    """A request id a caller sends was the engine's own id, unbounded: 8 MiB ids copied per
    choice took an agent from 308 MiB to 1.2 GiB, and a caller could take the ids the engine
    gives out itself (``req-N``) or another caller's. It is at most 64 printable characters, and
    the engine runs it as ``node:<caller>/<id>``."""
    async def main():
        server, port = await _serve(worker_engine, CollectorRegistry())
        busy = worker_engine.submit("the cat", None, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = worker_pb2_grpc.WorkerStub(ch)
                for bad in ("x" * 65, "a\nb", "\x1b[2J"):
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        async for _ in stub.Generate(worker_pb2.GenerateRequest(prompt="x", request_id=bad)):
                            pass
                    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request_id" in e.value.details()
                sp = worker_pb2.SamplingParams(max_tokens=2, n=2)
                msgs = [m async for m in stub.Generate(worker_pb2.GenerateRequest(
                    prompt="x", request_id=busy.request_id, sampling=sp))]     # the engine's own id, in use
                assert sum(m.finished for m in msgs) == 2
        finally:
            worker_engine.cancel(busy.request_id)
            await server.stop(None)

    asyncio.run(main())
