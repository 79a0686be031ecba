"""Bounded work, in process: archives refused from their member headers before anything is
inflated; the planning worker's time and memory budgets; errors crossing the worker intact;
a tenant's narrowed view of a node."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from atoll.coordinator.planning import PlanWorkers
from atoll.coordinator.records import Assignment, NodeRecord, WorkflowRecord
from atoll.coordinator.tenancy import node_view, scope_of
from atoll.core import archive
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


# Extended headers: tarfile reads a PAX ('x', 'g') or GNU long-name ('L', 'K') header's whole
# declared payload in one read, before any member reaches the caps above. The code before this
# test read 1.5 GiB for a 1.5 MB push (the coordinator peaked at 12.4 GiB) and raised a bare
# OSError on the agent; each case below runs in a child limited to 1.5 GiB of address space,
# where that code dies of MemoryError.

_ADDRESS_SPACE = 1536 << 20
_CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))
from pathlib import Path
from atoll.core.archive import check_archive, safe_extract
src, how = Path(sys.argv[1]), sys.argv[2]
t0 = time.monotonic()
try:
    if how == "check-bytes":
        check_archive(src.read_bytes())
    elif how == "check-file":
        check_archive(src)                          # the coordinator's BlobStore.put
    else:
        safe_extract(src, src.parent / "out")      # the agent's fetch
    error, message = None, ""
except BaseException as exc:
    error, message = type(exc).__name__, str(exc)
# VmHWM: this process's own peak. (getrusage's ru_maxrss survives exec on Linux, so in a child of
# a large test process it reports the parent's size.)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"error": error, "message": message[:300], "seconds": time.monotonic() - t0,
                  "peak_mib": hwm >> 10}))
""" % (_ADDRESS_SPACE, _ADDRESS_SPACE)


def _header(name: str, size: int, typeflag: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, typeflag
    return info.tobuf(tarfile.USTAR_FORMAT)


def _gzip_fill(head: bytes, fill: int, tail: bytes) -> bytes:
    """A gzip stream of ``head``, ``fill`` bytes of b"a" padded to a block, then ``tail``, built in
    milliseconds: a MiB of b"a" deflated between two full flushes refers to nothing before it, so
    the same compressed bytes stand for every MiB. (The trailer's CRC is left zero: the readers
    under test stop long before it.)"""
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = co.compress(head) + co.flush(zlib.Z_FULL_FLUSH)
    mib = co.compress(b"a" * (1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    last = co.compress(b"a" * (fill % (1 << 20)) + b"\0" * (-fill % 512) + tail) + co.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + mib * (fill >> 20) + last + b"\0" * 8


def _extended_bomb(typeflag: bytes, declared: int = 2 << 30) -> bytes:
    """A gzip'd tar whose first header is an extended header declaring ``declared`` bytes (of
    b"a"), then one small file: about 2 MB for 2 GiB."""
    name = "././@PaxHeader" if typeflag == tarfile.XHDTYPE else "././@LongLink"
    end = _header("x", 1, tarfile.REGTYPE) + b"x".ljust(512, b"\0") + b"\0" * 1024
    return _gzip_fill(_header(name, declared, typeflag), declared, end)


def _in_a_small_address_space(tmp_path, data: bytes, how: str) -> dict:
    src = tmp_path / f"blob-{how}.tar"
    src.write_bytes(data)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _CHILD, str(src), how], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_pax_header_declaring_2_gib_is_refused_before_tarfile_reads_it(tmp_path):
    bomb = _extended_bomb(tarfile.XHDTYPE)
    assert len(bomb) < 3 << 20
    for how in ("check-bytes", "check-file"):
        r = _in_a_small_address_space(tmp_path, bomb, how)
        assert r["error"] == "InvalidArgument", r
        assert "extended headers (PAX) declare 2147483648 bytes; at most 1048576" in r["message"], r
        assert r["seconds"] < 2.0 and r["peak_mib"] < 256, r


def test_a_gnu_long_name_bomb_is_refused_before_tarfile_reads_it(tmp_path):
    bomb = _extended_bomb(tarfile.GNUTYPE_LONGNAME)
    r = _in_a_small_address_space(tmp_path, bomb, "check-file")
    assert r["error"] == "InvalidArgument", r
    assert "extended headers (GNU long name) declare 2147483648 bytes" in r["message"], r
    assert r["seconds"] < 2.0 and r["peak_mib"] < 256, r
    # the same refusal in process, and for a long link, from the header alone
    for typeflag in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
        t0 = time.monotonic()
        with pytest.raises(InvalidArgument, match=r"extended headers \(GNU long (name|link)\) declare 536870912"):
            check_archive(_extended_bomb(typeflag, 512 << 20))
        assert time.monotonic() - t0 < 2.0


def test_the_agents_extract_refuses_extended_header_bombs_with_invalid_argument(tmp_path):
    for typeflag in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
        r = _in_a_small_address_space(tmp_path, _extended_bomb(typeflag), "extract")
        assert r["error"] == "InvalidArgument", r             # the code before: MemoryError (OSError at 512 MiB)
        assert "extended headers" in r["message"] and r["peak_mib"] < 256, r
        assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
    # a name the file system cannot take is refused as the archive's fault, not raised as OSError
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("n" * 300)
        t.addfile(info, io.BytesIO(b""))
    for walk in (check_archive, lambda data: safe_extract(data, tmp_path / "long")):
        with pytest.raises(InvalidArgument, match="is too long"):
            walk(buf.getvalue())
    with pytest.raises(InvalidArgument, match="cannot be written"):   # a file where a directory goes
        safe_extract(_tar([("a", b"1"), ("a/b", b"2")]), tmp_path / "clash")


def _tar(files, fmt=tarfile.PAX_FORMAT, pax_headers=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as t:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extended_headers_are_bounded_in_number_in_all_and_in_the_stream(tmp_path, monkeypatch):
    end = _header("f", 0, tarfile.REGTYPE) + b"\0" * 1024
    long_name = _header("././@LongLink", 10, tarfile.GNUTYPE_LONGNAME) + b"a" * 10 + b"\0" * 502
    with pytest.raises(InvalidArgument, match="more than 8 extended headers"):   # tarfile recurses once per header
        check_archive(long_name * 2000 + end)
    comment = b"4014 comment=" + b"c" * 4000 + b"\n"                              # one 4014-byte pax record
    pax = b"".join(_header("././@PaxHeader", len(comment), tarfile.XHDTYPE) + comment.ljust(4096, b"\0")
                   + _header(f"f{i}", 0, tarfile.REGTYPE) for i in range(40)) + b"\0" * 1024
    assert check_archive(pax) == 40
    with pytest.raises(InvalidArgument, match="declare more than 65536 bytes in all"):
        check_archive(pax, Limits(max_headers_bytes=64 << 10))
    with pytest.raises(InvalidArgument, match="global PAX headers declare more than 8192"):
        check_archive(_tar([("a", b"1")], pax_headers={"comment": "c" * 9000}))
    sparse = _header("s", 0, tarfile.GNUTYPE_SPARSE) + b"\0" * 1024
    with pytest.raises(InvalidArgument, match="not a plain file"):
        check_archive(sparse)
    # the stream tarfile reads answers no read over 1 MiB even if the header checks were skipped,
    monkeypatch.setattr(archive._Header, "_proc_member", tarfile.TarInfo._proc_member)
    with pytest.raises(InvalidArgument, match="asks to read 536870912 bytes at once"):
        check_archive(_extended_bomb(tarfile.GNUTYPE_LONGNAME, 512 << 20))
    # and inflates no more than the unpacked budget plus the headers' room
    stream = archive._TarStream(io.BytesIO(gzip.compress(bytes(8 << 20))), 1 << 20, 2 << 20)
    with pytest.raises(InvalidArgument, match="inflates to more than 2097152 bytes"):
        stream.seek(6 << 20)
    assert stream.tell() <= 3 << 20


def test_archives_that_tools_make_today_are_still_accepted(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / ("long-" * 40 + ".bin")).write_bytes(b"\x02" * 70_000)     # a PAX path record
    (d / "sub" / "ünïcode.json").write_text("{}")
    (d / "config.json").write_text("{}")
    data = archive_dir(d)
    gnu = _tar([("a/" + "b" * 150, b"hi"), ("c" * 200, b"x" * 1000)], tarfile.GNU_FORMAT)    # L headers
    git = _tar([("a", b"1")], pax_headers={"comment": "0" * 40})                              # git archive's 'g'
    for blob, files in ((data, 3), (gzip.compress(data), 3), (bz2.compress(data), 3), (lzma.compress(data), 3),
                        (gzip.compress(data[:10240]) + gzip.compress(data[10240:]), 3), (gnu, 2), (git, 1)):
        assert check_archive(blob) == files
        out = tmp_path / f"out-{len(blob)}-{files}"
        safe_extract(blob, out)
        assert sum(1 for p in out.rglob("*") if p.is_file()) == files
    assert (tmp_path / f"out-{len(data)}-3" / ("long-" * 40 + ".bin")).stat().st_size == 70_000


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


def test_stop_strings_are_bounded_at_every_door():
    """The decoder holds back as much text as the longest stop string and searches for every stop
    each token, on the engine's one thread: stop strings are at most 256 characters everywhere
    (a workflow stage, an entry's request, the Worker's sampling), and a request takes at most 20."""
    from atoll.agent.dataplane.entry import check_sink
    from atoll.agent.runtime import SamplingParams
    from atoll.specs.workflow import TaskSpec
    from atoll.wire.dataplane import Sink

    SamplingParams(stop=["x" * 256] * 20).validate()
    for stop in (["x" * 257], ["x"] * 21, [""]):
        with pytest.raises(InvalidArgument, match="stop"):
            SamplingParams(stop=stop).validate()
    TaskSpec(name="t", variants=["m"], stop=["x" * 256] * 16)
    with pytest.raises(Exception, match="stop strings must be 1 to 256"):
        TaskSpec(name="t", variants=["m"], stop=["x" * 257])
    check_sink(Sink(stop=("x" * 256,) * 4))
    for stop in (("x" * 257,), ("x",) * 5):
        with pytest.raises(InvalidArgument, match="stop"):
            check_sink(Sink(stop=stop))


def test_log_probability_volume_is_bounded_at_every_door():
    """Every log-probability of an answer is kept until it is whole and written out at once: 16
    choices x 2,000 tokens x 21 (a 41 MiB answer) held the coordinator's event loop 4-6 s. One
    request gets at most MAX_LOGPROB_ITEMS = choices x max_tokens x (1 + top alternatives), the
    context's bound standing in for a max_tokens not given."""
    from atoll.agent.dataplane.entry import check_sink
    from atoll.core.openai_api import MAX_LOGPROB_ITEMS, RequestError, parse_chat, parse_completion
    from atoll.wire.dataplane import Sink

    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(RequestError, match="16 choice\\(s\\) x 2000 tokens x 21 log-probabilities each is 672000"):
        parse_chat({"model": "m", "messages": msgs, "n": 16, "max_tokens": 2000, "logprobs": True, "top_logprobs": 20})
    with pytest.raises(RequestError, match="set a smaller max_tokens"):
        parse_chat({"model": "m", "messages": msgs, "logprobs": True, "top_logprobs": 5})     # up to the context
    assert parse_chat({"model": "m", "messages": msgs, "max_tokens": 3000, "logprobs": True, "top_logprobs": 20})
    assert parse_chat({"model": "m", "messages": msgs, "n": 16, "max_tokens": 2000})          # no logprobs: no bound
    with pytest.raises(RequestError, match="logprobs"):
        parse_completion({"model": "m", "prompt": ["a", "b"], "n": 8, "max_tokens": 1000, "logprobs": 5})
    assert parse_completion({"model": "m", "prompt": "a", "logprobs": 5})                    # 16 tokens by default
    check_sink(Sink(n=1, max_tokens=3000, logprobs=True, top_logprobs=20))
    assert 1 * 3000 * 21 <= MAX_LOGPROB_ITEMS
    for sink in (Sink(n=16, max_tokens=2000, logprobs=True, top_logprobs=20),
                 Sink(n=2, no_max_tokens=True, logprobs=True, top_logprobs=1),
                 Sink(n=1, logprobs=True, top_logprobs=20)):                                  # the stage's, up to 8192
        with pytest.raises(InvalidArgument, match="log-probabilities each is"):
            check_sink(sink)
