"""Bounded work, in process: archives refused from their member headers before anything is
inflated; the planning worker's time and memory budgets; errors crossing the worker intact;
a tenant's narrowed view of a node."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
import tracemalloc

import pytest

from atoll.coordinator.planning import PlanWorkers
from atoll.coordinator.records import Assignment, NodeRecord, WorkflowRecord
from atoll.coordinator.tenancy import node_view, scope_of
from atoll.core.archive import Limits, archive_dir, check_archive, safe_extract
from atoll.core.errors import InvalidArgument, PlanInfeasible, ResourceExhausted, SpecError

from .test_attacks import gzip_bomb


def test_a_bomb_is_refused_from_its_headers_with_flat_memory(tmp_path):
    bomb = gzip_bomb(1 << 30)                 # 1 GiB of zeros in about 1 MiB
    (tmp_path / "bomb.tar.gz").write_bytes(bomb)
    tracemalloc.start()
    t0 = time.monotonic()
    with pytest.raises(InvalidArgument, match="unpacks to more than"):
        safe_extract(tmp_path / "bomb.tar.gz", tmp_path / "out")
    took = time.monotonic() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert took < 2.0 and peak < 16 << 20, (took, peak)
    assert sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file()) < 1 << 20
    with pytest.raises(InvalidArgument, match="unpacks to more than"):
        check_archive(bomb)


def test_file_count_special_members_and_lying_sizes_are_refused(tmp_path):
    def tar(members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for info, data in members:
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()

    many = [(tarfile.TarInfo(f"f{i}"), b"") for i in range(50)]
    with pytest.raises(InvalidArgument, match="more than 10 files"):
        check_archive(tar(many), Limits(max_files=10))
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for bad in (link, tarfile.TarInfo("../escape"), tarfile.TarInfo("/abs")):
        with pytest.raises(InvalidArgument, match="not a plain file inside"):
            safe_extract(tar([(bad, b"" if bad.type != tarfile.SYMTYPE else None)]), tmp_path / "x")
    with pytest.raises(InvalidArgument, match="not a tar archive"):
        check_archive(b"plain bytes, not a tar")
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "weights.bin").write_bytes(b"\x01" * 300_000)
    data = archive_dir(d)
    assert check_archive(data) == 2                   # a real push passes: a plain tar is never bigger unpacked
    safe_extract(data, tmp_path / "ok")
    assert (tmp_path / "ok" / "weights.bin").stat().st_size == 300_000


def _slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def _hog(mib: int) -> int:
    return len(bytearray(mib << 20))


def _infeasible() -> None:
    raise PlanInfeasible("throughput 9 asked, 3 reachable", slo="throughput", asked=9.0, reachable=3.0,
                         hint="add nodes")


def _spec_error() -> None:
    raise SpecError("bad", source="wf.yaml", path="tasks[0]", hint="fix it")


def _bug() -> None:
    return [][1]


def test_the_planning_worker_keeps_its_budgets_and_the_errors_types():
    async def main():
        pw = PlanWorkers(workers=1, time_budget=3.0, memory_bytes=512 << 20)
        try:
            assert await pw.run(_slow, 0.1) == "done"
            t0 = time.monotonic()
            with pytest.raises(ResourceExhausted, match="longer than 3 s"):
                await pw.run(_slow, 60)
            assert time.monotonic() - t0 < 10
            assert await pw.run(_slow, 0.0) == "done"                 # a fresh worker took its place
            with pytest.raises(ResourceExhausted, match="more than 512 MiB"):
                await pw.run(_hog, 2048)
            with pytest.raises(PlanInfeasible) as ei:
                await pw.run(_infeasible)
            assert (ei.value.slo, ei.value.asked, ei.value.reachable, ei.value.hint) == ("throughput", 9.0, 3.0,
                                                                                         "add nodes")
            with pytest.raises(SpecError) as es:
                await pw.run(_spec_error)
            assert (es.value.source, es.value.path, es.value.code) == ("wf.yaml", "tasks[0]", "INVALID_ARGUMENT")
            with pytest.raises(Exception, match="the planner failed: IndexError"):
                await pw.run(_bug)
            assert await pw.run(_slow, 0.0) == "done"
        finally:
            pw.close()

    asyncio.run(main())


def test_a_user_sees_only_what_its_tenant_put_on_a_node():
    mine = Assignment("wa.chat.v.n1", "wa", "chat", "v", "n1", "sha256:" + "a" * 64, "ad-a", "sha256:" + "b" * 64,
                      "llm", 1.0, "g")
    theirs = Assignment("wb.chat.v.n1", "wb", "chat", "v", "n1", "sha256:" + "c" * 64, "ad-b",
                        "sha256:" + "d" * 64, "llm", 1.0, "g")
    recs = [WorkflowRecord("wa", "", tenant="team-a", assignments=(mine,)),
            WorkflowRecord("wb", "", tenant="team-b", assignments=(theirs,))]
    node = NodeRecord(id="n1", name="n1", spec={}, status={
        "worker_address": "10.0.0.1:1", "replica_states": {"wa.chat.v.n1": "ready", "wb.chat.v.n1": "ready"},
        "replica_messages": {"wb.chat.v.n1": "x"}, "replica_load_seconds": {"wa.chat.v.n1/load": 1.0,
                                                                            "wb.chat.v.n1/load": 2.0},
        "measured_throughput": {"ad-a": 1.0, "ad-b": 2.0}, "replica_queue_depth": {"wa.chat.v.n1": 1, "wb.chat.v.n1": 3},
        "cached_models": ["sha256:" + "a" * 64, "sha256:" + "c" * 64, "sha256:" + "d" * 64],
        "loaded": [{"base_model": "sha256:" + "a" * 64, "adapters": ["ad-a", "ad-b"], "state": "ready"}]})
    v = node_view(node, scope_of(recs, "team-a")).status
    assert v["replica_states"] == {"wa.chat.v.n1": "ready"} and v["replica_messages"] == {}
    assert v["replica_load_seconds"] == {"wa.chat.v.n1/load": 1.0} and v["replica_queue_depth"] == {"wa.chat.v.n1": 1}
    assert v["measured_throughput"] == {"ad-a": 1.0} and v["cached_models"] == ["sha256:" + "a" * 64]
    assert v["loaded"] == [{"base_model": "sha256:" + "a" * 64, "adapters": ["ad-a"], "state": "ready"}]
    assert "wb" not in repr(node_view(node, scope_of(recs, "team-c")).status)
    assert node.status["replica_states"] != v["replica_states"]         # the record itself is untouched


def test_a_call_whose_caller_went_away_never_answers_the_next_one():
    async def main():
        pw = PlanWorkers(workers=1, time_budget=30)
        try:
            slow = asyncio.ensure_future(pw.run(_slow, 2.0))
            await asyncio.sleep(0.5)
            slow.cancel()                                 # the RPC's client went away mid-plan
            await asyncio.gather(slow, return_exceptions=True)
            assert await pw.run(_echo, "second") == "second"
        finally:
            pw.close()

    asyncio.run(main())


def _echo(x):
    return x
