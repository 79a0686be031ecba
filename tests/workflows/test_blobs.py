"""The content-addressed store and the agent's fetcher, in process."""

import asyncio
import hashlib

import grpc
import pytest

from atoll.agent.fetch import resolve_source
from atoll.core.archive import archive_dir, safe_extract
from atoll.coordinator.blobs import BlobStore
from atoll.coordinator.model_store_api import ModelStoreApi
from atoll.coordinator.store import SqliteStore
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound
from atoll.proto.v1 import control_pb2
from atoll.core.rpc import add_service


def make_dir(p, n=3, size=3 << 20):
    p.mkdir(parents=True)
    for i in range(n):
        (p / f"f{i}.bin").write_bytes(bytes([i]) * (size // n))
    (p / "sub").mkdir()
    (p / "sub" / "config.json").write_text("{}")
    return p


def test_archive_is_deterministic_and_extracts(tmp_path):
    d = make_dir(tmp_path / "m")
    a1, a2 = archive_dir(d), archive_dir(d)
    assert a1 == a2
    safe_extract(a1, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "config.json").read_text() == "{}"


def test_store_put_read_and_errors(tmp_path):
    store = BlobStore(tmp_path / "blobs", SqliteStore(tmp_path / "s.db"))
    data = archive_dir(make_dir(tmp_path / "m"))
    info = store.put(iter([(data[:1000], "m", "model"), (data[1000:], "", "")]))
    assert info["name"] == "sha256:" + hashlib.sha256(data).hexdigest() and info["size_bytes"] == len(data)
    assert b"".join(c for c, _, _ in store.read(info["name"])) == data
    assert b"".join(c for c, _, _ in store.read(info["name"], 5000)) == data[5000:]
    with pytest.raises(NotFound):
        store.info("sha256:" + "1" * 64)
    with pytest.raises(InvalidArgument):
        store.info("not-a-name")
    with pytest.raises(InvalidArgument):
        store.put(iter([(b"definitely not a tar archive" * 100, "x", "model")]))


def test_fetch_over_grpc_verifies_and_resumes(tmp_path):
    async def main():
        store = BlobStore(tmp_path / "blobs", SqliteStore(tmp_path / "s.db"))
        data = archive_dir(make_dir(tmp_path / "m"))
        name = store.put(iter([(data, "m", "model")]))["name"]
        server = grpc.aio.server()
        add_service(server, ModelStoreApi(store), control_pb2.DESCRIPTOR.services_by_name["ModelStore"])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                cache = tmp_path / "cache"
                cache.mkdir()
                hexd = name.split(":")[1]
                (cache / f"{hexd}.part").write_bytes(data[:12345])        # a partial earlier download
                seen = []
                path = await resolve_source(name, channel=ch, cache_dir=cache,
                                            progress=lambda d, t: seen.append((d, t)))
                assert (path / "sub" / "config.json").exists()
                assert seen[0][0] > 12345 and seen[-1] == (len(data), len(data))
                # a corrupted partial download is detected by the checksum and discarded
                other = tmp_path / "cache2"
                other.mkdir()
                (other / f"{hexd}.part").write_bytes(b"x" * 12345)
                with pytest.raises(FailedPrecondition, match="checksum"):
                    await resolve_source(name, channel=ch, cache_dir=other)
                assert not (other / f"{hexd}.part").exists()
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await resolve_source("sha256:" + "2" * 64, channel=ch, cache_dir=other)
                assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_plain_paths_are_checked(tmp_path):
    with pytest.raises(NotFound):
        asyncio.run(resolve_source(str(tmp_path / "missing"), channel=None, cache_dir=tmp_path))


def test_a_node_cannot_ask_whether_an_unassigned_blob_is_stored(tmp_path):
    """A node token fetches only what its assignments name, and a blob it was not assigned gets
    the same answer whether or not it is stored (before: "is assigned to node" for a stored blob,
    "push it first" for an absent one, so any host could ask which hashes tenants had pushed)."""
    from atoll.coordinator import auth

    store = BlobStore(tmp_path / "blobs", SqliteStore(tmp_path / "s.db"))
    stored = store.put(iter([(archive_dir(make_dir(tmp_path / "m", size=3000)), "m", "model")]))["name"]
    absent = "sha256:" + "1" * 64
    api = ModelStoreApi(store, references=lambda node_id: {stored} if node_id == "assigned" else set())

    def answer(node: str, name: str) -> tuple[str, str, str]:
        token = auth.current.set(auth.NodeCaller(node, ("store.fetch",)))
        try:
            api._info(name)
        except NotFound as exc:
            return exc.code, str(exc).replace(name, "NAME"), exc.hint
        finally:
            auth.current.reset(token)
        return "OK", "", ""

    assert answer("renter", stored) == answer("renter", absent)
    assert answer("renter", stored)[0] == "NOT_FOUND"
    assert answer("assigned", stored) == ("OK", "", "")
    token = auth.current.set(auth.NodeCaller("renter", ("store.fetch",)))
    try:
        with pytest.raises(InvalidArgument):
            api._info("not-a-name")
    finally:
        auth.current.reset(token)


def test_fetch_reads_the_disk_off_the_event_loop(tmp_path):
    """A slow disk (here 0.3 s per chunk) slows only the fetch, not every other call: the event
    loop keeps ticking while chunks are read."""
    import time

    class SlowBlobs:
        def info_for(self, name, tenant):
            return {"kind": "model", "size_bytes": 3}

        def read(self, name, offset=0):
            for i in range(3):
                time.sleep(0.3)
                yield b"x", i, 3

    class Req:
        name, offset = "sha256:" + "1" * 64, 0

    async def main():
        api = ModelStoreApi(SlowBlobs())
        lags = []

        async def ticker():
            while True:
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - t0 - 0.01)

        tick = asyncio.ensure_future(ticker())
        chunks = [c async for c in api.Fetch(Req(), None)]
        tick.cancel()
        return chunks, lags

    chunks, lags = asyncio.run(main())
    assert [c.offset for c in chunks] == [0, 1, 2]
    assert len(lags) > 30 and max(lags) < 0.2, f"the loop stalled {max(lags):.2f} s while the disk was read"


def test_stalled_pushes_are_bounded_end_by_themselves_and_hold_no_shared_thread(tmp_path, monkeypatch):
    """A push that sends a chunk and then nothing held a thread of asyncio's default executor
    for ever: 8 of them from one user key stopped every tenant's planning and every fetch. Pushes
    write on the store's own threads, at most MAX_PUSHES at once and MAX_PUSHES_PER_TENANT of one
    tenant (RESOURCE_EXHAUSTED past either), and one idle for PUSH_IDLE_S ends, DEADLINE_EXCEEDED."""
    from concurrent.futures import ThreadPoolExecutor

    import atoll.coordinator.model_store_api as msa

    monkeypatch.setattr(msa, "MAX_PUSHES", 3)
    monkeypatch.setattr(msa, "MAX_PUSHES_PER_TENANT", 2)
    monkeypatch.setattr(msa, "PUSH_IDLE_S", 1.5)
    data = archive_dir(make_dir(tmp_path / "m", size=3 << 10))

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))   # as small as a host's
        store = BlobStore(tmp_path / "blobs", SqliteStore(tmp_path / "s.db"))
        server = grpc.aio.server()
        add_service(server, ModelStoreApi(store), control_pb2.DESCRIPTOR.services_by_name["ModelStore"])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        never = asyncio.Event()

        async def stalled():
            yield control_pb2.BlobChunk(data=data[:1024], name="m", kind="model")
            await never.wait()

        async def whole():
            yield control_pb2.BlobChunk(data=data, name="m", kind="model")

        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                push = ch.stream_unary("/atoll.v1.ModelStore/Push", control_pb2.BlobChunk.SerializeToString,
                                       control_pb2.BlobInfo.FromString)
                held = [push(stalled()) for _ in range(2)]
                await asyncio.sleep(0.3)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await push(whole())
                assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "already has 2" in ei.value.details()
                monkeypatch.setattr(msa, "MAX_PUSHES_PER_TENANT", 10)
                held.append(push(stalled()))
                await asyncio.sleep(0.3)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await push(whole())
                assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "3 pushes" in ei.value.details()
                assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 1.0) == 42   # shared threads free
                codes = []
                for call in held:
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        await asyncio.wait_for(call, 10)
                    codes.append(ei.value.code())
                assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 3
                info = await push(whole())                         # the slots came back
                assert info.size_bytes == len(data)
                assert not list((tmp_path / "blobs").glob(".incoming-*"))
        finally:
            never.set()
            await server.stop(None)

    asyncio.run(main())
