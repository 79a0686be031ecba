"""Planning is shared fairly between tenants: a queue per tenant served round-robin, no tenant
holding every planning worker, a bounded number of calls waiting per tenant.

Before this, the planning workers were first come, first served: tenant A's burst of dry runs
took both workers and queued ahead of tenant B, whose small submit waited for A's plans to end
(the tests below that time B's call fail there: B waited a whole slow call or more)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from atoll.coordinator.fairness import SYSTEM, FairQueue
from atoll.coordinator.planning import PlanWorkers
from atoll.core.errors import ResourceExhausted
from atoll.proto.v1 import control_pb2, control_pb2_grpc

from .test_attacks import big_spec, md


# ---------------------------------------------------------------------- the decision, pure
def test_the_queue_serves_callers_round_robin_and_caps_what_one_holds():
    q: FairQueue[str] = FairQueue(max_running_each=1, max_waiting_each=3)
    for i in range(3):
        q.add("a", f"a{i}")
    q.add("b", "b0")
    q.add("c", "c0")
    assert q.next() == ("a", "a0")
    assert q.next() == ("b", "b0")            # a holds its one worker: b and c go first
    assert q.next() == ("c", "c0")
    assert q.next() is None                   # only a waits, and it holds its share
    q.done("a")
    assert q.next() == ("a", "a1")
    q.done("b")
    q.done("c")
    assert q.next() is None and q.running("a") == 1 and q.waiting("a") == 1


def test_a_caller_past_its_waiting_share_is_refused_but_the_coordinator_is_not():
    q: FairQueue[int] = FairQueue(max_running_each=1, max_waiting_each=2)
    q.add("a", 1)
    q.add("a", 2)
    with pytest.raises(ResourceExhausted, match="tenant 'a' already has 2 planning calls waiting") as ei:
        q.add("a", 3)
    assert "retry" in ei.value.hint
    q.add("b", 4)                             # another tenant is not affected
    for i in range(10):
        q.add(SYSTEM, i)
    assert q.remove("a", 2) and not q.remove("a", 2)
    q.add("a", 5)                             # room again once one left


def test_a_flooding_tenant_leaves_a_worker_for_another_tenants_small_call():
    async def main():
        pw = PlanWorkers(workers=2, time_budget=60, waiting_per_tenant=3)
        try:
            await asyncio.gather(pw.run(time.sleep, 0, on_behalf_of="a"), pw.run(time.sleep, 0, on_behalf_of="b"))
            flood = [asyncio.ensure_future(pw.run(time.sleep, 6, on_behalf_of="a")) for _ in range(4)]
            await asyncio.sleep(0.5)
            with pytest.raises(ResourceExhausted, match="tenant 'a' already has 3 planning calls waiting"):
                await pw.run(time.sleep, 0, on_behalf_of="a")
            t0 = time.monotonic()
            await pw.run(time.sleep, 0, on_behalf_of="b")
            took = time.monotonic() - t0
            for f in flood:
                f.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
            assert took < 3.0, f"tenant b waited {took:.1f} s behind tenant a's 6 s calls"
            assert await pw.run(time.sleep, 0, on_behalf_of="a") is None     # cancelled calls gave their turns back
        finally:
            pw.close()

    asyncio.run(main())


# ---------------------------------------------------------------------- against a real coordinator
def planned(call) -> None:
    """Wait for a dry run: a plan, or the planner's refusal (the big spec's accuracy SLO may be
    out of reach); any other end fails the test."""
    try:
        call.result()
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT), exc


@pytest.mark.integration
def test_tenant_a_flooding_dry_runs_does_not_delay_tenant_bs_small_submit(fleet):
    big = big_spec(str(fleet.tmp / "base"))          # attack 5's spec: seconds of planning, then a plan or an error
    small = fleet.workflow("fair-b").read_text()
    ch = grpc.insecure_channel(fleet.addr)
    stub = control_pb2_grpc.ClientServiceStub(ch)

    def submit(who: str, text: str, dry_run: bool = True, timeout: float = 300):
        return stub.SubmitWorkflow.future(control_pb2.SubmitWorkflowRequest(
            spec_yaml=text, filename=f"{who}.yaml", dry_run=dry_run), timeout=timeout, metadata=md(fleet.keys[who]))

    deployed = False
    try:
        t0 = time.monotonic()
        planned(submit("a", big))               # one big plan alone: how long A's calls hold a worker
        one_big = time.monotonic() - t0
        assert one_big > 1.0, f"the big plan took {one_big:.2f} s: too quick to show anything"
        flood = [submit("a", big) for _ in range(4)]
        time.sleep(min(1.0, one_big / 4))       # A's calls hold the workers and fill the queue
        t0 = time.monotonic()
        st = submit("b", small, dry_run=False).result()
        deployed = True
        took_b = time.monotonic() - t0
        for f in flood:
            f.cancel()
        print(f"\none big plan: {one_big:.1f} s; tenant b's submit during a's flood of 4: {took_b:.2f} s")
        assert st.name == "fair-b"
        assert took_b < one_big / 2, f"tenant b waited {took_b:.1f} s behind tenant a (one big plan: {one_big:.1f} s)"
    finally:
        ch.close()
        if deployed:
            with fleet.client("b") as c:
                c.delete("fair-b")
