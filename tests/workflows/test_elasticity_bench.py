"""The elasticity benchmark's figures: the request mix, the length-normalised SLO, and the
storm's time back to SLO (pure functions of bench/elasticity_bench.py and bench/sim_agent.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import elasticity_bench as eb  # noqa: E402
import sim_agent  # noqa: E402


def test_service_time_follows_the_requested_length():
    assert sim_agent.service_time(4, 128) > 1.9 * sim_agent.service_time(4, 64) - sim_agent.PREFILL_S
    assert sim_agent.service_time(4) == sim_agent.service_time(4, sim_agent.NEW_TOKENS)
    assert sim_agent.service_time(8, 64) > sim_agent.service_time(1, 64)      # batch-aware


def test_request_mix_and_static_sizing():
    tr = eb.make_trace(3, 100.0, 10.0)
    day = tr["day_s"]
    at_bump = tr["mix"]["hour"] / 24 * day
    assert eb.work_mix(at_bump, day, tr["mix"]) == pytest.approx(1 + tr["mix"]["height"])
    assert eb.work_mix(0.0, day, tr["mix"]) == pytest.approx(1.0, abs=1e-3)       # 00:00, far from it
    times = eb.arrivals(tr)
    toks = eb.request_tokens(tr, times)
    assert len(toks) == len(times) and toks == eb.request_tokens(tr, times)       # deterministic
    near = [n for t, n in zip(times, toks) if abs(t - at_bump) < day / 48]
    far = [n for t, n in zip(times, toks) if t < day / 8]
    assert near and far and sum(near) / len(near) > 1.4 * sum(far) / len(far)
    # the static plan is sized for the peak of work, which is at least the peak of requests
    assert tr["peak_work_rps_at_64_tokens"] >= tr["peak_rps"]
    flat = eb.make_trace(3, 100.0, 10.0, mix={**eb.MIX, "height": 0.0})
    assert flat["peak_work_rps_at_64_tokens"] == pytest.approx(flat["peak_rps"], rel=1e-3)
    assert set(eb.request_tokens(flat, times[:50])) <= set(range(51, 78))
    assert eb.slo_for(128) == pytest.approx(2 * eb.SLO_S)


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
