"""The autoscaler's pure decisions, driven by synthetic samples."""

import math

from atoll.coordinator.autoscaler import Autoscaler, Policy, Sample, State, decide
from atoll.coordinator.records import WorkflowRecord


def run(policy, samples, plan_rate=10.0, min_rate=1.0, zero=False):
    st, out = State(), []
    for s in samples:
        d = decide(policy, s, plan_rate, min_rate, st, zero)
        st = d.state
        out.append(d)
        if d.action == "scale":
            plan_rate = d.rate
        if d.action == "to_zero":
            zero = True
        if d.action == "from_zero":
            zero, plan_rate = False, d.rate
    return out, plan_rate


def sample(t, arrivals=10.0, in_flight=4.0, replicas=2, last=0.0, qd=0.0):
    return Sample(now=t, arrivals_per_s=arrivals, in_flight=in_flight, queue_delay_s=qd, ready_replicas=replicas,
                  last_request_at=last)


def test_in_band_keeps_the_plan():
    out, rate = run(Policy(target=4), [sample(t, in_flight=6) for t in range(100)])
    assert all(d.action == "keep" for d in out) and rate == 10.0


def test_sustained_pressure_scales_out_only_after_the_delay():
    p = Policy(target=2, scale_up_delay=5)
    out, rate = run(p, [sample(t, in_flight=12, last=t) for t in range(10)])
    first = next(i for i, d in enumerate(out) if d.action == "scale")
    assert first == 5 and rate > 10.0
    # a spike shorter than the delay changes nothing
    out, rate = run(p, [sample(t, in_flight=12 if t < 3 else 2, last=t) for t in range(20)])
    assert all(d.action == "keep" for d in out)


def test_in_flight_sees_queueing_that_the_rate_does_not():
    """Same arrival rate, but requests pile up (slower replicas): only the in-flight policy reacts."""
    samples = [sample(t, arrivals=10, in_flight=20, last=t) for t in range(30)]
    _, rate_if = run(Policy(target=4, scale_up_delay=5), samples)
    _, rate_ro = run(Policy(metric="rate_only", scale_up_delay=5), samples)
    assert rate_if > 10.0 and rate_ro == 10.0


def test_scale_in_after_the_longer_delay_and_never_below_min():
    p = Policy(target=4, scale_down_delay=30)
    out, rate = run(p, [sample(t, arrivals=1, in_flight=0.5, last=t) for t in range(40)], plan_rate=40, min_rate=3)
    i = next(i for i, d in enumerate(out) if d.action == "scale")
    assert i == 30 and 3.0 <= rate < 40


def test_scale_to_zero_and_back():
    p = Policy(scale_to_zero=True, idle_seconds=60)
    out, _ = run(p, [sample(t, arrivals=0, in_flight=0, last=0) for t in range(0, 70, 5)])
    assert out[-1].action == "to_zero" or any(d.action == "to_zero" for d in out)
    d = decide(p, sample(100, arrivals=0, in_flight=1), 0.0, 2.0, State(), scaled_to_zero=True)
    assert d.action == "from_zero" and d.rate >= 2.0
    d = decide(p, sample(100, arrivals=0, in_flight=0), 0.0, 2.0, State(), scaled_to_zero=True)
    assert d.action == "keep"


def test_queue_delay_metric():
    p = Policy(metric="queue_delay", target=0.2, scale_up_delay=0)
    d = decide(p, sample(0, qd=0.5), 10.0, 1.0, State())
    assert d.action == "scale" and math.isclose(d.rate, 10.0 * 2.5 * 1.25)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_idle_time_counts_from_readiness_or_the_last_request():
    """A workflow still deploying is not idle; once ready, idle time runs from then, and a request
    starts it again (the samples the autoscaling pass builds for ``decide``)."""
    clock = Clock()
    auto = Autoscaler(clock=clock, wall=lambda: 1e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="DEPLOYING", created=1e9 - 50)
    policy = Policy(scale_to_zero=True, min_replicas=0, idle_seconds=2)

    def action():
        s = auto.sample(rec, [], {}, clock.t)
        return decide(policy, s, 1.0, 0.05, State()).action

    auto.observe(rec, [], "DEPLOYING")
    clock.t = 200.0
    assert auto.sample(rec, [], {}, clock.t).last_request_at == 200.0 and action() == "keep"
    auto.observe(rec, [], "READY")
    clock.t = 201.5
    assert action() == "keep"
    clock.t = 202.0
    assert auto.sample(rec, [], {}, clock.t).last_request_at == 200.0 and action() == "to_zero"
    auto.request_started("wf")
    auto.request_finished("wf")
    clock.t = 203.0
    assert action() == "keep"
    auto.observe(rec, [], "DEGRADED")          # still serving: idle time keeps running from the request
    clock.t = 204.0
    assert action() == "to_zero"
