"""The elasticity benchmark's pure parts: the trace shapes and request mix, the length-normalised
SLO, a run's figures, the storm's time back to SLO, the worst case over a suite and its picture
(bench/elasticity_bench.py, elasticity_traces.py, elasticity_plot.py, sim_agent.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import elasticity_bench as eb  # noqa: E402
import elasticity_plot  # noqa: E402
import elasticity_traces as traces  # noqa: E402
import sim_agent  # noqa: E402


def test_service_time_follows_the_requested_length():
    assert sim_agent.service_time(4, 128) > 1.9 * sim_agent.service_time(4, 64) - sim_agent.PREFILL_S
    assert sim_agent.service_time(4) == sim_agent.service_time(4, sim_agent.NEW_TOKENS)
    assert sim_agent.service_time(8, 64) > sim_agent.service_time(1, 64)      # batch-aware


def test_request_mix_and_static_sizing():
    tr = traces.make("diurnal", 3, 100.0, 10.0)
    day = tr["day_s"]
    at_bump = tr["mix"]["hour"] / 24 * day
    assert traces.work_mix(tr, at_bump) == pytest.approx(1 + tr["mix"]["height"])
    assert traces.work_mix(tr, 0.0) == pytest.approx(1.0, abs=1e-3)          # 00:00, far from it
    times = traces.arrivals(tr)
    toks = traces.request_tokens(tr, times)
    assert len(toks) == len(times) and toks == traces.request_tokens(tr, times)      # deterministic
    near = [n for t, n in zip(times, toks) if abs(t - at_bump) < day / 48]
    far = [n for t, n in zip(times, toks) if t < day / 8]
    assert near and far and sum(near) / len(near) > 1.4 * sum(far) / len(far)
    # the static plan is sized for the peak of work, which is at least the peak of requests
    assert tr["peak_work_rps_at_64_tokens"] >= tr["peak_rps"]
    flat = traces.make("diurnal", 3, 100.0, 10.0, constant_mix=True)
    assert flat["peak_work_rps_at_64_tokens"] == pytest.approx(flat["peak_rps"], rel=1e-3)
    assert set(traces.request_tokens(flat, times[:50])) <= set(range(51, 78))
    assert eb.slo_for(128) == pytest.approx(2 * eb.SLO_S)


def test_the_diurnal_shape_is_the_one_seeds_were_reported_on():
    """Seeds 11 and 23 give the traces issue 18 reported (peaks of requests and of work)."""
    t11, t23 = traces.make("diurnal", 11, 150.0, 18.0), traces.make("diurnal", 23, 150.0, 18.0)
    assert (t11["peak_rps"], t11["peak_work_rps_at_64_tokens"]) == (31.186, 37.411)
    assert (t23["peak_rps"], t23["peak_work_rps_at_64_tokens"]) == (23.114, 28.287)
    assert len(traces.arrivals(t11)) == 1656 and len(traces.arrivals(t23)) == 1717


def test_spikes_are_rare_and_large_on_a_flat_load():
    tr = traces.make("spikes", 1, 150.0, 18.0)
    assert len(tr["bursts"]) == 3 and tr["mix"]["height"] == 0.0
    quiet = [traces.rate(tr, t) for t in range(150)
             if all(abs(24 * t / 150 - h) > 4 * w for h, _, w in tr["bursts"])]
    assert quiet and max(quiet) == pytest.approx(9.0, rel=1e-3) and min(quiet) == pytest.approx(9.0, rel=1e-3)
    assert 2.2 * 9.0 <= tr["peak_rps"] <= 3.05 * 9.0
    assert tr["peak_work_rps_at_64_tokens"] == pytest.approx(tr["peak_rps"])
    # most of the day is flat: the mean is close to the flat load
    assert tr["mean_rps"] < 1.25 * 9.0


def test_the_week_ramps_up_then_down():
    tr = traces.make("week", 1, 60.0, 18.0)
    assert tr["duration_s"] == 420.0 and tr["days"] == 7
    peaks = [max(traces.rate(tr, d * 60.0 + i * 0.1) for i in range(600)) for d in range(7)]
    lows = [min(traces.rate(tr, d * 60.0 + i * 0.1) for i in range(600)) for d in range(7)]
    assert peaks.index(max(peaks)) in (3, 4)                   # Thursday or Friday
    assert peaks[0] < peaks[2] < peaks[4] and peaks[4] > peaks[5] > peaks[6]
    assert all(lo < 0.5 * hi for lo, hi in zip(lows, peaks))    # each day has its night
    assert 4 * 60.0 <= tr["busiest_s"] < 5 * 60.0 or 3 * 60.0 <= tr["busiest_s"] < 4 * 60.0
    times = traces.arrivals(tr)
    assert times == sorted(times) and times[-1] < 420.0 and len(times) > 2000


def test_trace_lists():
    assert traces.parse("diurnal:11,23;spikes:1") == [("diurnal", 11), ("diurnal", 23), ("spikes", 1)]
    assert len(traces.parse(eb.SUITE)) >= 12 and {s for s, _ in traces.parse(eb.SUITE)} == set(traces.SHAPES)
    assert sum(1 for s, _ in traces.parse(eb.SUITE) if s == "diurnal") >= 8
    with pytest.raises(ValueError, match="SHAPE:SEED"):
        traces.parse("sawtooth:1")
    with pytest.raises(ValueError, match="unknown trace shape"):
        traces.make("sawtooth", 1, 10.0, 1.0)


def test_time_back_counts_only_requests_sent_after_the_storm():
    ok = lambda at: (at, 0.5, True, "", 2.0)             # noqa: E731
    miss = lambda at: (at, 5.0, True, "", 2.0)           # noqa: E731
    # misses just before the storm must not count against the recovery
    before = [miss(99.0 + i / 10) for i in range(10)]
    after = [ok(100.0 + i / 4) for i in range(120)]
    assert eb.time_back([r for r in before + after if r[0] >= 100.0], 100.0) == 0.0
    # a dip after the storm: back once the 5 s windows no longer hold a miss
    dip = [miss(103.0), (104.0, 0.1, False, "UNAVAILABLE", 2.0)] + after
    t = eb.time_back(dip, 100.0)
    assert 8.5 <= t <= 9.25                             # last window holding t=104 ends at 109


def run_figures(policy="atoll", costs=(1.0, 1.0, 3.0), events=None):
    results = [(float(i), 0.5, True, "", 2.0) for i in range(90)] + [(50.0, 3.0, True, "", 2.0),
                                                                     (60.0, 0.1, False, "UNAVAILABLE: x", 2.0)]
    timeline = {"t": [0.0, 50.0, 100.0], "ready": [1, 2, 3], "cost": list(costs)}
    final = SimpleNamespace(autoscale_decisions=[{"action": "keep"}, {"action": "up", "rate": 5.0}], cold_starts=[])
    return eb.figures(policy, {}, 4.0, {}, results, timeline, events or {}, final, 100.0, 101.0)


def test_a_runs_figures():
    r = run_figures()
    assert r["requests"] == 92 and r["slo_misses"] == 2 and r["failed"] == 1 and r["errors"] == {"UNAVAILABLE": 1}
    assert r["slo_share"] == pytest.approx(90 / 92, abs=1e-5) and r["miss_times"] == [50.0, 60.0]
    assert r["mean_cost_per_hour"] == pytest.approx(1.0) and r["cost_per_day"] == pytest.approx(24.0)
    assert r["max_ready_replicas"] == 3 and r["last_decisions"] == [{"action": "up", "rate": 5.0}]
    s = run_figures("atoll-storm", events={"storm_at_s": 55.0, "killed": []})["storm"]
    assert s["slo_misses_after_storm"] == 1 and s["slo_misses_before_storm"] == 1 and s["lost_requests"] == 1


def test_comparisons_and_the_worst_case():
    def run(cost, misses, share, storm=None):
        r = {"mean_cost_per_hour": cost, "slo_misses": misses, "slo_share": share}
        if storm:
            r["storm"] = {"lost_requests_whole_run": storm[0], "time_back_to_slo_s": storm[1]}
        return r

    a = eb.compare({"atoll": run(1.0, 3, 0.998), "static-peak": run(2.0, 0, 1.0), "rate-only": run(0.9, 40, 0.97),
                    "atoll-storm": run(1.2, 9, 0.995, (0, 4.0))})
    b = eb.compare({"atoll": run(1.4, 12, 0.991), "static-peak": run(2.0, 0, 1.0), "rate-only": run(1.0, 10, 0.99),
                    "atoll-storm": run(1.5, 30, 0.98, (1, 12.5))})
    assert a["cheaper_than_static"] == 0.5 and a["fewer_misses_than_rate_only"] and a["storm_back_s"] == 4.0
    assert b["cheaper_than_static"] == pytest.approx(0.3) and not b["fewer_misses_than_rate_only"]
    w = eb.worst({"diurnal-1": a, "spikes-1": b})
    assert (w["cheaper_than_static"], w["cheaper_than_static_at"]) == (pytest.approx(0.3), "spikes-1")
    assert (w["slo_share"], w["storm_back_s"], w["storm_lost"]) == (0.991, 12.5, 1)
    assert w["traces_with_fewer_misses_than_rate_only"] == "1/2"
    assert w["targets_met"] == {"cheaper_than_static_35pct": False, "within_slo_99pct": True,
                                "fewer_misses_than_rate_only_everywhere": False, "storm_no_request_lost": False,
                                "storm_back_to_slo_under_10s": False}
    assert all(eb.worst({"diurnal-1": a})["targets_met"].values())
    assert "| diurnal-1 | +50.0% | 99.80% | 3 / 40 | 99.50% | 4.0 | 0 |" in eb.table({"diurnal-1": a})


def test_each_trace_draws_one_picture(tmp_path):
    tr = traces.make("diurnal", 3, 60.0, 10.0)
    runs = {p: run_figures(p, events={"storm_at_s": 30.0, "killed": []} if p == "atoll-storm" else None)
            for p in eb.ALL_POLICIES}
    out = elasticity_plot.draw(tr, runs, tmp_path / "x.png", "diurnal-3: atoll $1.20/day, static-peak $2.00/day",
                               eb.load_curve(tr, 60))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert elasticity_plot.buckets([0.5, 1.0, 2.5, 9.0], 4.0) == ([0.0, 2.0, 4.0], [2, 1, 0])


def test_a_trace_keeps_the_runs_of_an_earlier_invocation(tmp_path, monkeypatch):
    """``--resume`` with more policies: the runs already stored are kept (not run again) and
    compared, with the new ones, in the trace's row and picture; only the missing policies run."""
    ran = []

    async def fake_run(policy, tr, quick, tmp, log_level="warning"):
        ran.append(policy)
        return run_figures(policy)

    monkeypatch.setattr(eb, "run_policy", fake_run)
    earlier = {"runs": {"atoll": run_figures("atoll"), "atoll-storm": run_figures(
        "atoll-storm", events={"storm_at_s": 30.0, "killed": []})}, "wall_s": 300.0}
    out = eb.run_trace("diurnal", 3, True, ["atoll", "atoll-storm", "static-peak", "rate-only"], tmp_path, None,
                       "warning", False, earlier)
    assert ran == ["static-peak", "rate-only"] and list(out["runs"]) == ["atoll", "atoll-storm", "static-peak",
                                                                          "rate-only"]
    assert out["runs"]["atoll"] is earlier["runs"]["atoll"] and out["wall_s"] >= 300.0
    assert out["row"]["rate_only_misses"] == out["runs"]["rate-only"]["slo_misses"]
    assert "cheaper_than_static" in out["row"] and (tmp_path / "elasticity_diurnal_3_quick.png").exists()


def test_the_autoscaler_replay_follows_load_and_compares_settings():
    """bench/autoscaler_replay.py drives the coordinator's own decide() through its queueing model:
    a flat load needs no more than the flat replicas, a spike makes it scale out and back in, the
    cost lies between the floor of one replica and the static plan, and the comparison of two
    settings comes out per trace (a policy that never scales up misses more, and costs less)."""
    import autoscaler_replay as rp
    from atoll.coordinator.scaling import Policy

    fleet = rp.Fleet()
    tr = traces.make("spikes", 1, 150.0, 18.0)
    out = rp.replay(tr, Policy(), fleet, seed=0, slowdown=1.0)
    assert out["requests"] == len(traces.arrivals(tr)) and 0 <= out["misses"] < out["requests"]
    assert min(fleet.prices) <= out["cost_per_hour"] < fleet.static_cost(tr) * 1.5
    assert out == rp.replay(tr, Policy(), fleet, seed=0, slowdown=1.0)              # deterministic
    stuck = rp.replay(tr, Policy(noise_z=10.0, max_step=1.0001), fleet, seed=0, slowdown=1.0)   # barely moves
    assert stuck["misses"] > out["misses"] and stuck["cost_per_hour"] < out["cost_per_hour"]
    res = rp.evaluate('{"noise_z": 2.0, "last_pass_window": false}', [("spikes", 1)], 2, 1.0, fleet)
    assert set(res["traces"]) == {"spikes-1"} and len(res["traces"]["spikes-1"]["misses"]) == 2
    assert res["policy"] == {"noise_z": 2.0, "last_pass_window": False}
    assert rp.S.LAST_PASS_EXTRA_Z == 0.75 and rp.S.DOWN_BAND == 0.05     # restored after the evaluation
    oracle = res["traces"]["spikes-1"]["oracle_cheaper_than_static"]
    assert res["traces"]["spikes-1"]["cheaper_than_static"] < oracle < 1      # nothing beats knowing the future
    # per-replica queues (the default): requests left waiting where the spike found them miss,
    # unless they move to replicas with room (hedged calls); one shared queue is the ideal router
    slow = rp.replay(tr, Policy(), fleet, seed=0, slowdown=1.2)
    unhedged = rp.replay(tr, Policy(), fleet, seed=0, slowdown=1.2, hedge_s=float("inf"))
    shared = rp.replay(tr, Policy(), fleet, seed=0, slowdown=1.2, queues="shared")
    assert shared["misses"] <= slow["misses"] < unhedged["misses"]
    assert unhedged["misses"] >= 3 * max(slow["misses"], 1)
