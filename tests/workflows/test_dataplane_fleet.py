"""The data plane on real processes (the package's fleet: a coordinator and five agents in three
regions): requests through agents' entries follow the plan's flows with no request byte through
the coordinator; with the coordinator killed for 60 s the entries keep answering, and the
workflow re-plans normally once it is back."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from atoll.client import Client
from atoll.core.errors import AtollError
from tests.fixtures.tiny_models import _TEXT

from .conftest import wait_until
from .test_serving import bytes_by_pair, entries_taking, one_stage, split_slack, unserved_picks

pytestmark = pytest.mark.integration

TEXT = ((" ".join(_TEXT.split()) + " ") * 20)[:1500]      # 1.5 kB of text per request


def coordinator_io(pid: int) -> int:
    """Bytes the coordinator process read and wrote (sockets and files) so far."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["rchar"]) + int(io["wchar"])


def forwarded(metrics: str, workflow: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(
        r'^atoll_invoke_forwarded_total\{[^}]*workflow="' + re.escape(workflow) + r'"[^}]*\} (\S+)$', metrics, re.M))


def test_entries_follow_the_plans_flows_and_bypass_the_coordinator(harness):
    h = harness
    with h.client() as c:
        c.submit(str(h.write("wf-entry", one_stage(h, "wf-entry", 22))))
        c.wait_ready("wf-entry", 90)
        st = wait_until(lambda: (lambda s: s if all(r["state"] == "ready" for r in s.replicas) else None)(
            c.status("wf-entry")), 60, "every replica ready")
        entries = c.entries("us-east", "wf-entry")
    assert entries and entries[0]["region"] == "us-east"
    pid = h.fleet.coordinator.pid
    with Client(h.addr, timeout=30, region="us-east") as ec:      # asks the coordinator once for entries
        ec.invoke("wf-entry", {"text": "warm up"})
        each0 = h.each_agent_metrics()
        fwd0 = forwarded(h.metrics(), "wf-entry")
        io0, t0 = coordinator_io(pid), time.monotonic()
        time.sleep(5.0)                                         # the coordinator's own traffic, idle
        idle_rate = (coordinator_io(pid) - io0) / (time.monotonic() - t0)
        io1, t1 = coordinator_io(pid), time.monotonic()
        ok, errors = run_many_text(ec, "wf-entry", 1000)
        io_run, dur = coordinator_io(pid) - io1, time.monotonic() - t1
    assert not errors, errors[:3]
    assert {r["stages"][0]["node"] for r in ok} == {r["node"] for r in st.replicas}
    sent = 1000 * len(TEXT.encode())
    # no request passed the coordinator: nothing forwarded, and its traffic during the run is its
    # idle traffic (heartbeats, the store) within a small share of the requests' bytes
    assert forwarded(h.metrics(), "wf-entry") == fwd0
    assert io_run - idle_rate * dur < 0.1 * sent, (io_run, idle_rate * dur, sent)
    # bytes per region pair, measured by the agents, follow the plan's flows: the calls each pair
    # carried (every input is TEXT) are the plan's share of the requests within the cycles'
    # rounding, give or take the picks that served no request (hedges, retries; see split_slack:
    # a hedge to an idle replica moves a request, and its bytes, to another location)
    each1 = h.each_agent_metrics()
    before, after = (bytes_by_pair("\n".join(e.values()), "wf-entry") for e in (each0, each1))
    measured = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
    extra = unserved_picks("\n".join(each0.values()), "\n".join(each1.values()), "wf-entry")
    took = entries_taking(each0, each1, "wf-entry")
    assert sum(took.values()) == len(ok), took
    total = sum(measured.values())
    assert total >= sent
    flows: dict[tuple[str, str], float] = {}
    for f in st.plan["routes"]:
        pair = (f["from_location"].split("/")[0], f["to_location"].split("/")[0])
        flows[pair] = flows.get(pair, 0.0) + f["rate"]
    ftotal = sum(flows.values())
    assert set(measured) == {k for k, v in flows.items() if v > 0}, (measured, flows)
    slack = split_slack(len(ok), extra, sum(1 for v in took.values() if v > 0), len(flows))
    for pair, rate in flows.items():
        calls = measured.get(pair, 0.0) / len(TEXT.encode())
        assert abs(calls - len(ok) * rate / ftotal) <= slack, (pair, calls, measured, flows, extra, took)
    with h.client() as c:
        c.delete("wf-entry")


def run_many_text(client, name: str, n: int):
    import concurrent.futures as cf

    ok, errors = [], []
    with cf.ThreadPoolExecutor(16) as ex:
        for f in cf.as_completed([ex.submit(client.invoke, name, {"text": TEXT}, timeout=60) for _ in range(n)]):
            try:
                ok.append(f.result())
            except Exception as exc:  # noqa: BLE001 - every failure must be a clear error
                errors.append(exc)
    return ok, errors


def describe(entry: str):
    """An entry's Describe, and its gRPC health for the service ``atoll.v1.Coordinator``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from atoll.wire import dataplane as dp

    with grpc.insecure_channel(entry) as ch:
        info = dp.entry_from_pb(dp.entry_stub(ch).Describe(dp.describe_request(), timeout=5))
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="atoll.v1.Coordinator"),
                                                 timeout=5)
    return info, health_pb2.HealthCheckResponse.ServingStatus.Name(h.status)


def test_coordinator_killed_for_60_s_entries_keep_serving(harness):
    h = harness
    with h.client() as c:
        c.submit(str(h.write("wf-outage", one_stage(h, "wf-outage", 6, max_tokens=1))))
        c.wait_ready("wf-outage", 90)
        wait_until(lambda: (lambda s: s if all(r["state"] == "ready" for r in s.replicas) else None)(
            c.status("wf-outage")), 60, "every replica ready")
        entry = c.entries("us-east")[0]["address"]
    ok, errors, stop = [0], [], threading.Event()
    ec = Client(h.addr, timeout=30, region="us-east")
    ec.invoke("wf-outage", {"text": "warm up"})                 # entries known before the outage

    def stream():
        while not stop.is_set():
            try:
                ec.invoke("wf-outage", {"text": "steady"}, timeout=10)
                ok[0] += 1
            except AtollError as exc:
                errors.append(exc)
            time.sleep(0.02)
    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        h.fleet.coordinator.send_signal(signal.SIGKILL)
        h.fleet.coordinator.wait(10)
        time.sleep(5)
        text = h.agent_metrics()                                 # degraded, and saying so
        assert re.search(r"^atoll_dataplane_degraded 1\.0$", text, re.M)
        assert re.search(r"^atoll_dataplane_coordinator_connected 0\.0$", text, re.M)
        info, health = describe(entry)
        assert info.degraded and "coordinator" in info.degraded_reason and info.workflows >= 1
        assert health == "NOT_SERVING"                          # the entry's health for atoll.v1.Coordinator
        time.sleep(55)                                           # 60 s without a coordinator
        during = ok[0]
        h.fleet.start_coordinator()
        with h.client() as c:
            wait_until(lambda: c.status("wf-outage").state == "READY", 60, "READY after the restart")
        wait_until(lambda: (lambda info, health: health == "SERVING" and not info.degraded)(*describe(entry)),
                   15, "the entry back in touch with the coordinator")
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        ec.close()
    total = ok[0] + len(errors)
    assert during > 200 and ok[0] / total >= 0.999, (ok[0], total, errors[:3])
    assert all(str(e) for e in errors)
    # re-planning works again: a node holding a replica now is lost, the workflow moves off it
    with h.client() as c:
        now = c.status("wf-outage")
        nodes = [r["node"] for r in now.replicas]
        victim = "rent-1" if "rent-1" in nodes else nodes[-1]
        try:
            h.fleet.kill9(victim)
            s2 = wait_until(lambda: (lambda s: s if s.generation > now.generation and s.state == "READY" else None)(
                c.status("wf-outage")), 60, "a re-plan after the restart")
            assert victim not in {r["node"] for r in s2.replicas}
            assert c.invoke("wf-outage", {"text": "after"})["output"]["text"] is not None
        finally:
            c.delete("wf-outage")
            h.restart_agent(victim)
            h.wait_nodes_ready([victim], 60)
