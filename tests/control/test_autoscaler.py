"""The autoscaler: pure decisions driven by synthetic samples (coordinator/scaling.py), and the pass
around them (coordinator/autoscaler.py) with an injected clock and a fake workflow manager. No
test sleeps."""

import asyncio
import math
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from atoll.coordinator import scaling
from atoll.coordinator.autoscaler import Autoscaler, queued, rate_over, work_ratio
from atoll.coordinator.metrics import CoordinatorMetrics
from atoll.coordinator.records import Assignment, NodeRecord, WorkflowRecord
from atoll.coordinator.scaling import Policy, Sample, State, decide, peak_floor
from atoll.core.errors import PlanInfeasible
from atoll.specs.common import parse_obj
from atoll.specs.workflow import WorkflowSpec

RHO = 3.0
H = Policy().headroom


def run(policy, samples, plan_rate=10.0, min_rate=1.0, zero=False):
    """Feed ``samples`` in order, applying each decision as the pass would."""
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


def sample(t, arrivals=8.0, work=1.0, in_flight=4.0, replicas=2, planned=None, last=None, queued=0.0,
           recent=None, previous=None, rho=RHO):
    """``recent`` / ``previous``: arrivals in the last reaction time and the one before (default:
    as many as the steady ``arrivals`` give)."""
    steady = round(arrivals * rho)
    return Sample(now=t, arrivals_per_s=arrivals, work_per_request=work, in_flight=in_flight, queued=queued,
                  ready_replicas=replicas, planned_replicas=replicas if planned is None else planned,
                  last_request_at=t if last is None else last, recent=steady if recent is None else recent,
                  previous=steady if previous is None else previous, reaction_s=rho)


# ---------------------------------------------------------------------- the demand metric
def test_steady_demand_keeps_the_plan():
    out, rate = run(Policy(), [sample(t, arrivals=9.6) for t in range(100)])    # within 5% of the plan, 10
    assert all(d.action == "keep" for d in out) and rate == 10.0
    assert "within the plan" in out[-1].reason


def test_work_per_request_counts_and_rate_only_ignores_it():
    """Same arrivals, answers 1.6x the profiled length: the demand policy plans 1.6x the work;
    the rate-only baseline does not see it."""
    samples = [sample(t, arrivals=8.0, work=1.6) for t in range(20)]
    out, rate = run(Policy(), samples)
    assert rate == pytest.approx(H * 8.0 * 1.6)
    assert out[0].signals.demand == pytest.approx(12.8) and "work 1.60" in out[0].reason
    _, rate_ro = run(Policy(metric="rate_only"), samples)
    assert rate_ro == pytest.approx(H * 8.0)        # the arrivals alone


def test_one_decision_moves_the_plan_by_at_most_max_step():
    out, rate = run(Policy(max_step=2.0), [sample(t, arrivals=100.0) for t in range(6)])
    ups = [d.rate for d in out if d.action == "scale"]
    assert ups[:3] == [20.0, 40.0, 80.0] and rate == pytest.approx(H * 100.0)
    assert "one step is at most x2" in out[0].reason
    assert all(b / a <= 2.0 + 1e-9 for a, b in zip([10.0] + ups, ups))


def test_scale_up_delay():
    out, _ = run(Policy(scale_up_delay=3), [sample(t, arrivals=20.0) for t in range(6)])
    assert [d.action for d in out[:4]] == ["keep", "keep", "keep", "scale"]
    assert "above the plan for 2 s" in out[2].reason


def test_scale_in_waits_one_pass_and_halves_at_most():
    """Demand drops to a third: the plan comes down once the drop was seen on two passes in a row
    (the default delay: one pass), by at most /2 per decision (the floor of the earlier demand
    decays meanwhile), never below min_rate."""
    high = [sample(t, arrivals=9.6) for t in range(30)]
    low = [sample(30 + t, arrivals=0.1) for t in range(80)]
    out, rate = run(Policy(), high + low, plan_rate=10.0, min_rate=2.0)
    downs = [(i, d) for i, d in enumerate(out) if d.action == "scale"]
    assert out[30].action == "keep" and "below the plan for 0 s" in out[30].reason
    assert downs[0][0] == 30 + scaling.PASS_S and downs[0][1].rate >= 10.0 / 2 - 1e-9
    assert rate == pytest.approx(2.0)               # min_rate: H x 0.1 is below it
    assert all(d.rate >= 2.0 for _, d in downs)


def test_recent_peak_floor_holds_capacity_through_a_lull():
    """A peak at 20 req/s, then a lull at 5: the floor from the peak decays with half-life 2ρ, so
    the plan stays above H x 5 for a while and follows the decayed peak down."""
    peak = [sample(t, arrivals=20.0) for t in range(10)]
    lull = [sample(10 + t, arrivals=5.0) for t in range(40)]
    out, _ = run(Policy(), peak + lull, plan_rate=21.0)
    d = out[10 + 6]                                         # 6 s into the lull
    half = scaling.FLOOR_REACTIONS * RHO
    assert scaling.FLOOR_REACTIONS == 2.0
    assert d.signals.floor == pytest.approx(20.0 * 0.5 ** ((6 + 1) / half), rel=1e-6)
    assert d.signals.target_rate == pytest.approx(H * d.signals.floor)
    plan = 21.0
    for i, d in enumerate(out):
        if d.action == "scale":
            plan = d.rate
        if i >= 10:
            assert plan >= H * 20.0 * 0.5 ** ((i - 9) / half) * (1 - scaling.DOWN_BAND) - 1e-9   # the band
    # without the floor (a tiny half-life) the same lull's first scale-in goes as far as one step allows
    out2, _ = run(Policy(peak_half_life=0.01), peak + lull, plan_rate=21.0)
    first, first2 = (next(d for d in o if d.action == "scale") for o in (out, out2))
    assert first2.rate == pytest.approx(10.5) and first.rate > 14.0 and "recent-peak floor" in first.reason


def test_scale_in_waits_for_a_plan_still_starting():
    """The plan was raised and one of its replicas is still starting when the demand drops: the
    plan is not judged too big before it exists; it comes down once every replica serves, or 2ρ
    after the delay if one never does (so a replica stuck loading does not pin the plan)."""
    low = [sample(t, arrivals=3.0, replicas=2, planned=3) for t in range(20)]
    out, _ = run(Policy(peak_half_life=0.01), low, plan_rate=10.0, min_rate=1.0)
    first = next(i for i, d in enumerate(out) if d.action == "scale")
    assert "still starting" in out[1].reason and out[1].action == "keep"
    assert first == math.ceil(scaling.PASS_S + 2 * RHO)
    served = [sample(0, arrivals=3.0, replicas=2, planned=3), sample(1, arrivals=3.0, replicas=3, planned=3)]
    out, _ = run(Policy(peak_half_life=0.01), served, plan_rate=10.0, min_rate=1.0)
    assert [d.action for d in out] == ["keep", "scale"]


def test_peak_floor():
    assert peak_floor(((0.0, 10.0), (5.0, 4.0)), 10.0, 10.0) == pytest.approx(5.0)
    assert peak_floor(((0.0, 10.0), (5.0, 8.0)), 10.0, 10.0) == pytest.approx(8.0 * 0.5 ** 0.5)
    assert peak_floor((), 1.0, 1.0) == 0.0


def test_a_recent_rise_counts_only_beyond_noise():
    """The last reaction time's arrivals stand for the demand only when they are more than z = 1.25
    Poisson deviations above the long window: 36 in 3 s (12/s) against 10/s is not, 60 (20/s) is."""
    assert Policy().noise_z == 1.25
    d = decide(Policy(), sample(0, arrivals=10.0, recent=36, previous=30), H * 10.0, 1.0, State())
    assert d.signals.demand == pytest.approx(10.0) and d.signals.trend == 0.0 and d.action == "keep"
    d = decide(Policy(), sample(0, arrivals=10.0, recent=60, previous=30), H * 10.0, 1.0, State())
    assert d.signals.demand == pytest.approx(20.0) and d.action == "scale"
    # a stricter z ignores what the default takes
    d = decide(Policy(noise_z=2.0), sample(0, arrivals=10.0, recent=39, previous=30), H * 10.0, 1.0, State())
    assert d.signals.demand == pytest.approx(10.0)


def test_the_last_pass_shows_a_sharp_rise_first():
    """A rise that began within the last second: 19 arrivals in the last pass against 10/s over the
    long window and the last ρ is beyond noise (a one-second window needs z + 0.75 = 2 deviations:
    19 - 2 sqrt(19) = 10.3 > 10), 17 is not; the larger of the two short windows stands for the
    demand."""
    def one(last_pass, recent=30):
        s = replace(sample(0, arrivals=10.0, recent=recent, previous=30), last_pass=last_pass)
        return decide(Policy(), s, H * 10.0, 1.0, State())
    assert one(-1).signals.demand == pytest.approx(10.0)
    assert one(17).signals.demand == pytest.approx(10.0) and one(17).action == "keep"
    d = one(19)
    assert d.signals.demand == pytest.approx(19.0) and d.action == "scale" and d.rate == pytest.approx(19.0)
    assert one(19, recent=60).signals.demand == pytest.approx(20.0)      # the ρ window is larger
    assert one(25, recent=60).signals.demand == pytest.approx(25.0)      # the last pass is larger


def test_forecast_plans_one_reaction_ahead_on_a_significant_rise_and_is_capped():
    """With ``forecast_cap`` 0.25: 90 arrivals in the last 3 s after 60 in the 3 s before: a rise
    (30 > 1.25 sqrt(150)), 3.33 req/s per second, one reaction time ahead (+10) but at most a
    quarter of the demand (30 req/s). Off by default: the same samples plan the demand alone."""
    pol = Policy(max_step=100, forecast_cap=0.25)
    d = decide(pol, sample(0, arrivals=20.0, recent=90, previous=60), 5.0, 1.0, State())
    assert d.signals.demand == pytest.approx(30.0) and d.signals.trend == pytest.approx(30 / 9)
    assert d.signals.forecast == pytest.approx(30.0 + min(10.0, 0.25 * 30.0))
    assert d.rate == pytest.approx(H * d.signals.forecast) and "forecast" in d.reason
    d = decide(Policy(max_step=100), sample(0, arrivals=20.0, recent=90, previous=60), 5.0, 1.0, State())
    assert d.signals.forecast == pytest.approx(30.0) and d.rate == pytest.approx(30.0) and "forecast" not in d.reason
    # the same difference on counts too small to tell from noise is no trend
    d = decide(pol, sample(0, arrivals=2.0, recent=10, previous=6), 5.0, 1.0, State())     # 4 < 1.25 x 4
    assert d.signals.trend == 0.0
    # the rate-only baseline never forecasts
    d = decide(Policy(metric="rate_only", forecast_cap=0.25), sample(0, arrivals=20.0, recent=90, previous=60),
               5.0, 1.0, State())
    assert d.signals.trend == 0.0 and d.signals.forecast == pytest.approx(30.0)


def test_queued_requests_add_demand_only_once_replicas_are_ready():
    settled = decide(Policy(), sample(0, arrivals=8.0, queued=12.0, replicas=2), 10.0, 1.0, State())
    assert settled.signals.backlog == pytest.approx(12.0 / RHO)
    assert settled.action == "scale" and settled.rate == pytest.approx(H * (8.0 + 4.0))
    assert "12 queued" in settled.reason
    starting = decide(Policy(), sample(0, arrivals=8.0, queued=12.0, replicas=2, planned=4), 10.0, 1.0, State())
    assert starting.signals.backlog == 0.0 and starting.action == "keep"


def test_default_floor_follows_the_measured_reaction_time():
    """The same peak and lull: the recent-peak floor (half-life 2ρ) holds the plan ten times longer
    for a fleet whose replicas start in 20 s than for one where they start in 2 s."""
    first = {}
    for rho in (2.0, 20.0):
        peak = [sample(t, arrivals=20.0, rho=rho) for t in range(10)]
        lull = [sample(10 + t, arrivals=2.0, rho=rho) for t in range(300)]
        out, _ = run(Policy(), peak + lull, plan_rate=20.0)
        # seconds into the lull until the plan is halved: one floor half-life, 2ρ (+ one pass)
        first[rho] = next(i for i, d in enumerate(out) if d.action == "scale" and d.rate <= 10.0) - 9
    assert 2 * 2.0 <= first[2.0] <= 2 * 2.0 + 2 and 2 * 20.0 <= first[20.0] <= 2 * 20.0 + 2


# ---------------------------------------------------------------------- the other metrics
def test_in_flight_sees_queueing_that_the_rate_does_not():
    """Same arrival rate, requests piling up (slower replicas): the in_flight policy reacts, bounded by
    max_step per decision; the rate-only baseline does not."""
    samples = [sample(t, arrivals=8, in_flight=40) for t in range(5)]
    out, rate_if = run(Policy(metric="in_flight", target=4), samples)
    assert out[0].rate == pytest.approx(20.0) and rate_if > 20.0 and "utilisation" in out[0].reason
    _, rate_ro = run(Policy(metric="rate_only"), samples)
    assert rate_ro == pytest.approx(H * 8.0)


def test_queue_delay_metric():
    p = Policy(metric="queue_delay", target=0.2)
    s = sample(0, arrivals=10.0, queued=3.0)                   # 3 / 10 = 0.3 s of queueing: U = 1.5
    d = decide(p, s, 10.0, 1.0, State())
    assert s.queue_delay_s == pytest.approx(0.3) and d.signals.utilisation == pytest.approx(1.5)
    assert d.action == "scale" and math.isclose(d.rate, 10.0 * 1.5 * H)


# ---------------------------------------------------------------------- scale to zero
def test_scale_to_zero_and_back():
    p = Policy(scale_to_zero=True, idle_seconds=60)
    out, _ = run(p, [sample(t, arrivals=0, in_flight=0, last=0) for t in range(0, 70, 5)])
    assert [d.action for d in out].count("to_zero") == 1 and out[-2].action == "to_zero"
    d = decide(p, sample(100, arrivals=0, in_flight=1), 0.0, 2.0, State(), scaled_to_zero=True)
    assert d.action == "from_zero" and d.rate == 2.0
    d = decide(p, sample(100, arrivals=4, in_flight=1, work=1.5), 0.0, 2.0, State(), scaled_to_zero=True)
    assert d.rate == pytest.approx(H * 4 * 1.5)
    d = decide(p, sample(100, arrivals=0, in_flight=0), 0.0, 2.0, State(), scaled_to_zero=True)
    assert d.action == "keep"


# ---------------------------------------------------------------------- the pass
class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


SPEC = parse_obj(WorkflowSpec, {
    "name": "wf", "sources": [{"name": "u", "rate": 10, "region": "r"}],
    "tasks": [{"name": "gen", "max_tokens": 64, "variants": [
        {"name": "v", "model": "/m", "accuracy": 0.9, "memory_gb": 1, "throughput": {"a100": 5}}]}],
    "edges": [{"from": "u", "to": "gen"}], "autoscaling": {}}, source="test")


def view(rid, state="ready", task="gen", node_state="READY"):
    return {"replica_id": rid, "task": task, "state": state, "node_state": node_state, "node_name": "n",
            "fetch_seconds": 0.1, "load_seconds": 0.2, "warmup_seconds": 0.05}


def test_idle_time_counts_from_readiness_or_the_last_request():
    """A workflow still deploying is not idle; once ready, idle time runs from then, and a request
    starts it again (the samples the autoscaling pass builds for ``decide``)."""
    clock = Clock()
    auto = Autoscaler(clock=clock, wall=lambda: 1e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="DEPLOYING", created=1e9 - 50)
    policy = Policy(scale_to_zero=True, min_replicas=0, idle_seconds=2)

    def action():
        s = auto.sample(rec, SPEC, [], {}, clock.t)
        return decide(policy, s, 1.0, 0.05, State()).action

    auto.observe(rec, [], "DEPLOYING")
    clock.t = 200.0
    assert auto.sample(rec, SPEC, [], {}, clock.t).last_request_at == 200.0 and action() == "keep"
    auto.observe(rec, [], "READY")
    clock.t = 201.5
    assert action() == "keep"
    clock.t = 202.0
    assert auto.sample(rec, SPEC, [], {}, clock.t).last_request_at == 200.0 and action() == "to_zero"
    auto.request_started("wf")
    auto.request_finished("wf")
    clock.t = 203.0
    assert action() == "keep"
    auto.observe(rec, [], "DEGRADED")          # still serving: idle time keeps running from the request
    clock.t = 204.0
    assert action() == "to_zero"


def test_arrival_windows_adapt_to_the_rate():
    times = [float(t) / 10 for t in range(1000)]            # 10/s over 100 s
    rate, window = rate_over(times, 100.0, 128, 40.0)
    assert window == pytest.approx(12.8, abs=0.11) and rate == pytest.approx(10.0, rel=0.02)
    sparse = [0.0, 50.0, 90.0]                               # few arrivals: the longest window
    assert rate_over(sparse, 100.0, 128, 40.0) == (pytest.approx(1 / 40.0), 40.0)
    assert rate_over([], 5.0, 16, 3.0) == (0.0, 3.0)


def test_work_per_request_from_completion_tokens():
    assert work_ratio(SPEC, {}) == 1.0
    assert work_ratio(SPEC, {"gen": 96.0}) == pytest.approx(1.5)
    assert work_ratio(SPEC, {"gen": 32.0}) == 1.0         # only max_tokens declared: never below 1
    declared = parse_obj(WorkflowSpec, {**SPEC.dump(), "tasks": [{**SPEC.dump()["tasks"][0],
                                                                  "completion_tokens": 64}]}, source="t")
    assert work_ratio(declared, {"gen": 32.0}) == pytest.approx(0.5)
    auto = Autoscaler(clock=Clock())
    for _ in range(200):
        auto.request_started("wf")
        auto.request_finished("wf", {"gen": 128})
    auto.request_finished("wf", None)                      # a failed request: no tokens
    rec = WorkflowRecord(name="wf", spec_yaml="")
    assert auto.sample(rec, SPEC, [], {}, 100.0).work_per_request == pytest.approx(2.0)


def assignment(rid, node):
    return Assignment(replica_id=rid, workflow="wf", task="gen", variant="v", node_id=node, base_model="/m",
                      adapter="", adapter_source="", kind="llm", weight=1.0, group="g")


def test_queue_is_per_workflow_with_a_per_node_fallback():
    rec = WorkflowRecord(name="wf", spec_yaml="", assignments=(assignment("r1", "a"), assignment("r2", "b")))
    nodes = {"a": NodeRecord(id="a", name="a", spec={}, status={"queue_depth": 9,
                                                                "replica_queue_depth": {"r1": 2, "other": 7}}),
             "b": NodeRecord(id="b", name="b", spec={}, status={"queue_depth": 3}),
             "c": NodeRecord(id="c", name="c", spec={}, status={"queue_depth": 50})}
    assert queued(rec, nodes) == 2 + 3                     # another workflow's 7 on node a do not count
    nodes["b"].state = "LOST"
    assert queued(rec, nodes) == 2


def test_reaction_time_is_measured_from_replica_starts():
    clock = Clock(0.0)
    auto = Autoscaler(clock=clock)
    rec = WorkflowRecord(name="wf", spec_yaml="")
    assert auto.reaction_s("wf") == scaling.REACTION_DEFAULT_S + scaling.PASS_S
    for i, took in enumerate((2.0, 3.0, 4.0)):
        auto.observe(rec, [view(f"r{i}", "loading")], "DEPLOYING")
        clock.t += took
        auto.observe(rec, [view(f"r{i}", "ready")], "READY")
    assert auto.reaction_s("wf") == pytest.approx(3.0 + scaling.PASS_S)
    auto.observe(rec, [view("old", "ready")], "READY")      # seen ready first: not timed
    assert auto.reaction_s("wf") == pytest.approx(3.0 + scaling.PASS_S)


def drive(auto, wm, *args, **kw):
    """One autoscaling pass, to its end."""
    return asyncio.run(auto.run(wm, *args, **kw))


class FakeManager:
    """The workflow manager as the pass sees it; ``fit`` is the largest scale a plan fits."""

    def __init__(self, rec, fit=100.0, per_replica=1.0):
        self.records = {rec.name: rec}
        self.fit, self.per_replica = fit, per_replica
        self.deployed = []
        self.turns = []
        self.lock = asyncio.Lock()

    def spec(self, name):
        return SPEC

    def replica_views(self, rec):
        return [view(a.replica_id) for a in rec.assignments]

    def placing(self, tenant=None):
        self.turns.append(tenant)                     # whose turn each placement took
        return self.lock

    async def place(self, rec, scale, unavailable=()):
        assert self.lock.locked()                     # the autoscaler plans in its turn
        self.unavailable = set(unavailable)
        if scale > self.fit:
            raise PlanInfeasible("too much", slo="throughput", asked=scale, reachable=self.fit)
        n = max(1, math.ceil(scale * 10 / 5 / self.per_replica))
        free = [f"n{i}" for i in range(n + len(self.unavailable)) if f"n{i}" not in self.unavailable]

        class P:
            assignments = tuple(assignment(f"r{i}", node) for i, node in enumerate(free[:n]))

            class plan:
                total_cost_per_hour = 0.5 * n
        return P

    def deploy(self, rec, placement, autoscale):
        rec.assignments = placement.assignments
        rec.generation += 1
        rec.deployment = type(rec.deployment)(autoscale=autoscale)
        self.deployed.append(autoscale)

    def idle(self, rec, autoscale, message):
        raise AssertionError("not expected")


def test_the_pass_carries_decisions_out_logs_and_exports_them():
    clock = Clock(0.0)
    metrics = CoordinatorMetrics(CollectorRegistry())
    auto = Autoscaler(metrics, clock=clock, wall=lambda: 1.7e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY", assignments=(assignment("r0", "n0"),),
                         tenant="team-a")
    wm = FakeManager(rec)
    for _ in range(300):                                   # 30/s for 10 s, answers 1.5x the profile
        clock.t += 1 / 30
        auto.request_started("wf")
        auto.request_finished("wf", {"gen": 96})
    done = drive(auto, wm, {}, clock.t)
    assert done == [("wf", "scale")] and wm.deployed[-1].rate == pytest.approx(20.0)   # x2 at most
    assert wm.turns == ["team-a"]                          # placed in its tenant's turn, not the coordinator's
    d = auto.decisions_of("wf")[-1]
    assert d.action == "up" and d.previous_rate == 10.0 and d.rate == pytest.approx(20.0)
    assert d.signals["work"] == pytest.approx(1.5) and d.signals["arrivals"] == pytest.approx(30.0, rel=0.05)
    assert d.outcome.startswith("planned 20.00 req/s: 4 replica(s)") and "demand" in d.reason
    value = metrics.registry.get_sample_value
    assert value("atoll_autoscaler_decisions_total", {"workflow": "wf", "action": "up"}) == 1
    assert value("atoll_autoscaler_signal", {"workflow": "wf", "signal": "work"}) == pytest.approx(1.5)
    # the next pass keeps (already 2x), and the kept decision shows after the changes
    drive(auto, wm, {}, clock.t + 0.5)
    shown = auto.decisions_of("wf")
    assert [x.action for x in shown][-1] in ("up", "keep")
    # a workflow deleted from the manager is forgotten
    wm.records.clear()
    drive(auto, wm, {}, clock.t + 1)
    assert auto.decisions_of("wf") == []


def test_the_pass_backs_off_when_no_plan_fits_or_replicas_would_exceed_the_cap():
    clock = Clock(0.0)
    auto = Autoscaler(clock=clock, wall=lambda: 1.7e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY", assignments=(assignment("r0", "n0"),))
    wm = FakeManager(rec, fit=1.6)
    for _ in range(300):
        clock.t += 1 / 30
        auto.request_started("wf")
    drive(auto, wm, {}, clock.t)
    assert wm.deployed[-1].scale == pytest.approx(1.5)      # 2.0 did not fit, 0.75 x 2.0 did
    wm.fit = 0.0
    drive(auto, wm, {}, clock.t + 1)
    d = auto.decisions_of("wf")[-1]
    assert d.outcome.startswith("no plan") and d.rate == d.previous_rate


def test_replicas_whose_heartbeats_stopped_are_replaced_before_the_nodes_are_lost():
    """A node whose heartbeat stream was open and closed (its agent died), or that is SUSPECT, puts
    its replicas at risk: the pass re-plans at the same rate without it, at once."""
    from atoll.coordinator.autoscaler import at_risk

    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY",
                         assignments=(assignment("r0", "n0"), assignment("r1", "n1"), assignment("r2", "n2")))
    nodes = {f"n{i}": NodeRecord(id=f"n{i}", name=f"host{i}", spec={}) for i in range(4)}
    seen = {"n0", "n1", "n2"}
    assert at_risk(rec, nodes, {"n0", "n1", "n2"}, seen) == set()
    assert at_risk(rec, nodes, {"n0", "n2"}, seen) == {"n1"}               # n1's stream closed
    assert at_risk(rec, nodes, {"n0", "n2"}, {"n0", "n2"}) == set()        # never seen open: not judged
    nodes["n2"].state = "SUSPECT"
    assert at_risk(rec, nodes, None, seen) == {"n2"}
    nodes["n2"].state = "LOST"                                            # the manager re-plans LOST nodes
    assert at_risk(rec, nodes, None, seen) == set()

    nodes["n2"].state = "READY"
    auto = Autoscaler(clock=Clock(0.0), wall=lambda: 1.7e9)
    wm = FakeManager(rec)
    assert drive(auto, wm, nodes, 1.0, connected={"n0", "n1", "n2"}) == []
    assert drive(auto, wm, nodes, 2.0, connected={"n0", "n2"}) == [("wf", "replace")]
    assert wm.unavailable == {"n1"} and wm.deployed[-1].scale == 1.0       # same rate, without n1
    d = auto.decisions_of("wf")[-1]
    assert d.action == "replace" and "host1" in d.reason and d.signals["at_risk"] == 1.0
    assert drive(auto, wm, nodes, 3.0, connected={"n0", "n2"}) == []         # n1 no longer holds a replica


def test_a_workflow_changed_while_the_pass_planned_keeps_what_it_has():
    """The pass plans in a worker, so others act meanwhile: a workflow re-planned (or deleted) by
    someone else after the decision keeps that plan; the next pass decides again."""
    clock = Clock(0.0)
    auto = Autoscaler(clock=clock, wall=lambda: 1.7e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY", assignments=(assignment("r0", "n0"),))

    class Racing(FakeManager):
        async def place(self, rec, scale, unavailable=()):
            p = await super().place(rec, scale, unavailable)
            self.race(rec)                          # what another placement did meanwhile
            return p

    for race in (lambda r: setattr(r, "generation", r.generation + 1), lambda r: wm.records.clear()):
        rec.generation = 1
        wm = Racing(rec)
        wm.race = race
        for _ in range(300):
            clock.t += 1 / 30
            auto.request_started("wf")
        assert drive(auto, wm, {}, clock.t) == []
        assert wm.deployed == [] and rec.assignments == (assignment("r0", "n0"),)
    d = auto.decisions_of("wf")[-1]
    assert d.action == "up" and d.outcome.startswith("no plan: superseded") and d.rate == d.previous_rate


def test_a_replacement_on_a_rising_load_scales_up_at_once():
    """A storm on the ramp: the pass that replaces the lost replicas also carries out the scale-up
    decided on the same sample, instead of holding it back until the replacement is done."""
    clock = Clock(0.0)
    auto = Autoscaler(clock=clock, wall=lambda: 1.7e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY",
                         assignments=(assignment("r0", "n0"), assignment("r1", "n1")))
    nodes = {f"n{i}": NodeRecord(id=f"n{i}", name=f"host{i}", spec={}) for i in range(4)}
    wm = FakeManager(rec)
    assert drive(auto, wm, nodes, clock.t, connected={"n0", "n1"}) == []
    for _ in range(300):                                   # 30/s: the plan is sized for 10
        clock.t += 1 / 30
        auto.request_started("wf")
    assert drive(auto, wm, nodes, clock.t, connected={"n0"}) == [("wf", "replace")]
    assert wm.unavailable == {"n1"} and wm.deployed[-1].scale == pytest.approx(2.0)   # x2 at most, without n1
    d = auto.decisions_of("wf")[-1]
    assert d.action == "replace" and d.previous_rate == 10.0 and d.rate == pytest.approx(20.0)
    assert "host1" in d.reason and "and up: " in d.reason and d.signals["arrivals"] == pytest.approx(30.0, rel=0.05)


def test_a_storm_at_steady_load_plans_the_lost_share_again_for_the_backlog():
    """Three of four replicas lost while the load matches the plan: until the replacements serve,
    three quarters of the arrivals queue on the survivor. The replacing pass plans the lost share
    once more (10 + 0.75 x 10), so the backlog drains instead of waiting for a later pass to see
    the queue; with no demand it replaces at the planned rate only."""
    from atoll.coordinator.autoscaler import surge

    clock = Clock(0.0)
    auto = Autoscaler(clock=clock, wall=lambda: 1.7e9)
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY",
                         assignments=tuple(assignment(f"r{i}", f"n{i}") for i in range(4)))
    nodes = {f"n{i}": NodeRecord(id=f"n{i}", name=f"host{i}", spec={}) for i in range(6)}
    wm = FakeManager(rec)
    every = {f"n{i}" for i in range(4)}
    assert drive(auto, wm, nodes, clock.t, connected=every) == []
    for _ in range(200):                                   # 10/s: what the plan is sized for
        clock.t += 1 / 10
        auto.request_started("wf")
        auto.request_finished("wf", {"gen": 64})
    assert drive(auto, wm, nodes, clock.t, connected={"n3"}) == [("wf", "replace")]
    assert wm.unavailable == {"n0", "n1", "n2"} and wm.deployed[-1].scale == pytest.approx(1.75, rel=0.03)
    d = auto.decisions_of("wf")[-1]
    assert d.action == "replace" and d.signals["surge"] == pytest.approx(7.5, rel=0.03)
    assert "for the backlog" in d.reason
    # the share is the largest any task lost, by the plan's weights; demand above the plan counts as the plan
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY",
                         assignments=tuple(assignment(f"r{i}", f"n{i}") for i in range(4)))
    assert surge(rec, {"n0"}, 10.0, 40.0) == pytest.approx(2.5)
    assert surge(rec, {"n0"}, 10.0, 0.0) == 0.0
    assert surge(rec, {"elsewhere"}, 10.0, 10.0) == 0.0


def test_a_pass_is_due_each_second_or_at_once_when_a_heartbeat_stream_ends():
    from atoll.coordinator.autoscaler import PassTimer

    t = PassTimer(closed=3)
    assert t.due(0.0, 3)                       # the first pass
    t.started(0.0, 3)
    assert not t.due(0.25, 3) and not t.due(0.99, 3) and t.due(1.0, 3)
    assert t.due(0.25, 4)                      # an agent's stream ended: at once, not at 1.0
    t.started(0.25, 4)
    assert not t.due(0.5, 4) and t.due(1.25, 4)


def test_no_plan_goes_to_a_node_whose_heartbeats_stopped_while_it_is_not_lost_yet():
    """Two renters of a storm stop one pass apart. n1 stays READY (until SUSPECT) after its stream
    closed, so the second re-plan must leave it out as well as n2: were a replacement put back on
    n1, the next pass would find it at risk and replace it once more (adding a surge each time)."""
    rec = WorkflowRecord(name="wf", spec_yaml="", state="READY",
                         assignments=(assignment("r0", "n0"), assignment("r1", "n1")))
    nodes = {f"n{i}": NodeRecord(id=f"n{i}", name=f"host{i}", spec={}) for i in range(6)}
    every = set(nodes)
    auto = Autoscaler(clock=Clock(0.0), wall=lambda: 1.7e9)
    wm = FakeManager(rec)
    assert drive(auto, wm, nodes, 1.0, connected=every) == []
    assert ("wf", "replace") in drive(auto, wm, nodes, 2.0, connected=every - {"n1"})
    assert wm.unavailable == {"n1"} and {a.node_id for a in rec.assignments} == {"n0", "n2"}
    assert ("wf", "replace") in drive(auto, wm, nodes, 3.0, connected=every - {"n1", "n2"})
    assert wm.unavailable == {"n1", "n2"} and not {a.node_id for a in rec.assignments} & {"n1", "n2"}
    drive(auto, wm, nodes, 4.0, connected=every - {"n1", "n2"})
    assert [d.action for d in auto.decisions_of("wf")].count("replace") == 2    # once per node lost
    assert not {a.node_id for a in rec.assignments} & {"n1", "n2"}
    from atoll.coordinator.autoscaler import at_risk_nodes
    nodes["n1"].state = "LOST"                 # the manager's business from here; n2 is still left out
    assert at_risk_nodes(nodes, every - {"n1", "n2"}, every) == {"n2"}
    nodes["n3"].state = "SUSPECT"
    assert at_risk_nodes(nodes, None, every) == {"n3"}
