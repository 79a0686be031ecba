"""Hostile specs, built by hypothesis from a valid workflow and cluster: non-finite and huge
numbers, deep nesting, huge strings, wrong types, non-UTF-8 bytes. ``atoll plan`` answers each
with a plan or a one-line error (never a traceback), ``SubmitWorkflow`` with a plan or a clear
status (never INTERNAL or UNKNOWN), and the coordinator keeps serving."""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import os
import time
from pathlib import Path

import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.cli.main import main as atoll_main
from atoll.proto.v1 import control_pb2, control_pb2_grpc

from .conftest import rpc_code

CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS}
HOSTILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WORKFLOW = {"name": "fz", "sources": [{"name": "u", "rate": 2, "region": "us-east", "tier": "datacenter"}],
            "tasks": [{"name": "t", "prompt_tokens": 10, "completion_tokens": 5, "max_tokens": 4,
                       "variants": [{"name": "v", "model": "MODEL", "accuracy": 0.9, "memory_gb": 1,
                                     "throughput": {"a100": 20}},
                                    {"name": "w", "model": "MODEL", "accuracy": 0.8, "memory_gb": 1,
                                     "tokens_per_second": {"a100": 300}}]}],
            "edges": [{"from": "u", "to": "t", "size_kb": 1}], "slo": {"min_accuracy": 0.5},
            "placement": {"forbid_regions": []}}
CLUSTER = {"name": "c", "pools": [{"name": "p", "hardware": "a100", "tier": "datacenter", "region": "us-east",
                                   "price_per_hour": 2.0, "count": 3, "gpu_memory_gb": 40}],
           "links": [{"from": "us-east", "to": "us-east", "price_per_gb": 0.01, "bandwidth_mbps": 1000}]}
WF_PATHS = [("sources", 0, "rate"), ("tasks", 0, "prompt_tokens"), ("tasks", 0, "max_tokens"),
            ("tasks", 0, "variants", 0, "accuracy"), ("tasks", 0, "variants", 0, "memory_gb"),
            ("tasks", 0, "variants", 0, "throughput", "a100"), ("tasks", 0, "variants", 1, "tokens_per_second", "a100"),
            ("edges", 0, "size_kb"), ("slo", "min_accuracy"), ("tasks", 0, "name"), ("tasks", 0, "variants", 0, "name"),
            ("sources", 0, "region"), ("tasks", 0, "variants"), ("edges", 0, "to"), ("placement", "forbid_regions"),
            ("name",), ("tasks",)]
CL_PATHS = [("pools", 0, "price_per_hour"), ("pools", 0, "count"), ("pools", 0, "gpu_memory_gb"),
            ("pools", 0, "hardware"), ("links", 0, "bandwidth_mbps"), ("links", 0, "price_per_gb"), ("pools",)]
DEEP = "__deep_nesting__"
OUTCOMES: collections.Counter = collections.Counter()

VALUES = st.one_of(
    st.floats(min_value=1e-300, max_value=1e9),          # valid but extreme: the planner must cope
    st.floats(min_value=0.01, max_value=1.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 10 ** 400, -(10 ** 30), 0, -1]),
    st.integers(),
    st.text(max_size=30),
    st.sampled_from(["x" * 300_000, "\x00", "a100 ", "../../etc/passwd", "🙂" * 2000, DEEP, "a10O"]),
    st.none(), st.booleans(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _set(doc, path, value):
    """Put ``value`` at ``path``; a path an earlier change cut off is left alone."""
    cur = doc
    try:
        for p in path[:-1]:
            cur = cur[p]
        cur[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


def _render(doc, depth: int) -> str:
    text = yaml.safe_dump(doc, sort_keys=False, width=10 ** 9)
    return text.replace(DEEP, "[" * depth + "]" * depth)


@st.composite
def hostile(draw, base, paths, model: str):
    doc = copy.deepcopy(base)
    for v in doc.get("tasks", [{}])[0].get("variants", []):
        v["model"] = model
    for _ in range(draw(st.integers(1, 3))):
        _set(doc, draw(st.sampled_from(paths)), draw(VALUES))
    text = _render(doc, draw(st.sampled_from([3, 70, 900, 5000])))
    if draw(st.integers(0, 9)) == 0:                         # now and then: not UTF-8 at all
        return text.encode()[:40] + b"\xff\xfe" + text.encode()[40:]
    return text


def run_cli(*args) -> tuple[int, str, str]:
    """``atoll ARGS`` in this process; the environment is restored after (the CLI quiets gRPC's
    own logging through it, which processes started later must not inherit)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = atoll_main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama

    d = tmp_path_factory.mktemp("hostile")
    build_tiny_llama(d / "base")
    return d


def _write(path: Path, data) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


@given(data=st.data())
@HOSTILE
def test_atoll_plan_answers_hostile_specs_with_a_plan_or_one_line(files, data):
    wf = data.draw(hostile(WORKFLOW, WF_PATHS, str(files / "base")))
    cl = data.draw(st.one_of(st.just(yaml.safe_dump(CLUSTER)), hostile(CLUSTER, CL_PATHS, "")))
    _write(files / "wf.yaml", wf)
    _write(files / "cluster.yaml", cl)
    code, out, err = run_cli("plan", "--workflow", str(files / "wf.yaml"), "--cluster", str(files / "cluster.yaml"),
                             "--time-limit", "5")
    assert "Traceback" not in err and "internal error" not in err, err
    OUTCOMES["plan", code] += 1
    if code == 0:
        assert "total $" in out
    else:
        assert code == 2, (code, err)
        lines = [ln for ln in err.splitlines() if not ln.startswith("note: ")]
        assert len(lines) == 1 and lines[0].startswith("atoll plan: error: "), err


def test_the_reported_plan_inputs_are_refused_clearly(files):
    def plan(wf_over=None, cl_over=None):
        wf, cl = copy.deepcopy(WORKFLOW), copy.deepcopy(CLUSTER)
        for v in wf["tasks"][0]["variants"]:
            v["model"] = str(files / "base")
        for path, val in (wf_over or {}).items():
            _set(wf, path, val)
        for path, val in (cl_over or {}).items():
            _set(cl, path, val)
        _write(files / "wf.yaml", yaml.safe_dump(wf))
        _write(files / "cluster.yaml", yaml.safe_dump(cl))
        return run_cli("plan", "--workflow", str(files / "wf.yaml"), "--cluster", str(files / "cluster.yaml"))

    code, _, err = plan({("tasks", 0, "variants", 0, "throughput", "a100"): float("inf")})
    assert code == 2 and "finite" in err
    code, _, err = plan({("edges", 0, "size_kb"): float("inf")})
    assert code == 2 and "edges[0].size_kb" in err and "finite" in err
    code, _, err = plan(cl_over={("links", 0, "bandwidth_mbps"): float("inf")})
    assert code == 2 and "bandwidth_mbps" in err
    code, _, err = plan(cl_over={("pools", 0, "hardware"): "a10O"})                     # a typo of a100
    assert code == 2 and "unknown hardware class 'a10O'" in err and "did you mean 'a100'" in err
    code, _, err = plan(cl_over={("pools",): [CLUSTER["pools"][0], {**CLUSTER["pools"][0], "name": "q",
                                                                    "hardware": "tpu-v9"}]})
    assert code == 0 and "note: pool 'q'" in err and "tpu-v9" in err                   # not a typo: a note
    _write(files / "wf.yaml", b"name: \xff\xfe\n")
    code, _, err = run_cli("plan", "--workflow", str(files / "wf.yaml"), "--cluster", str(files / "cluster.yaml"))
    assert code == 2 and "not UTF-8" in err and len(err.splitlines()) == 1
    _write(files / "wf.yaml", "tasks: " + "[" * 900 + "]" * 900 + "\n")
    code, _, err = run_cli("plan", "--workflow", str(files / "wf.yaml"), "--cluster", str(files / "cluster.yaml"))
    assert code == 2 and "nests deeper than" in err and len(err.splitlines()) == 1


def test_a_50_mb_cluster_file_is_refused_before_it_is_read(files):
    big = files / "big-cluster.yaml"
    with open(big, "wb") as f:
        f.write(b"pools:\n")
        line = b"  - {name: p, hardware: a100, tier: datacenter, region: r, price_per_hour: 1, count: 1}\n"
        f.write(line * (50_000_000 // len(line)))
    _write(files / "wf.yaml", yaml.safe_dump(WORKFLOW))
    t0 = time.monotonic()
    code, _, err = run_cli("plan", "--workflow", str(files / "wf.yaml"), "--cluster", str(big))
    assert time.monotonic() - t0 < 2.0
    assert code == 2 and "bytes, more than the" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def stub(fleet):
    ch = grpc.insecure_channel(fleet.addr)
    yield control_pb2_grpc.ClientServiceStub(ch), (("authorization", f"Bearer {fleet.keys['a']}"),)
    ch.close()


@given(data=st.data())
@HOSTILE
def test_submit_workflow_answers_hostile_specs_with_a_clear_status(fleet, stub, data):
    s, md = stub
    text = data.draw(hostile(WORKFLOW, WF_PATHS, str(fleet.tmp / "base")))
    if isinstance(text, bytes):          # a gRPC string is UTF-8: send the undecodable bytes escaped
        text = text.decode("utf-8", "replace")
    req = control_pb2.SubmitWorkflowRequest(spec_yaml=text, filename="hostile.yaml", dry_run=True)
    err = {}

    def call():
        try:
            s.SubmitWorkflow(req, timeout=120, metadata=md)
        except grpc.RpcError as exc:
            err["details"] = exc.details() or ""
            raise
    code = rpc_code(call)
    OUTCOMES["submit", code.name] += 1
    assert code in CLEAR, (code, err)
    assert "\n" not in err.get("details", "") and "Traceback" not in err.get("details", "")


def test_the_coordinator_survived_the_hostile_specs(fleet):
    assert fleet.coord.alive() and "Traceback" not in fleet.coord.log()
    print("\nhostile spec outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items(), key=str)))
