"""The engine's windowed figures that agents report in their heartbeats."""

from __future__ import annotations

import time

import pytest

from atoll.agent.runtime.metrics import EngineMetrics


def test_ttft_is_the_mean_over_the_recent_window():
    m = EngineMetrics(window_s=0.2)
    assert m.ttft_seconds() == 0.0
    m.observe_ttft(0.2)
    m.observe_ttft(0.4)
    assert m.ttft_seconds() == pytest.approx(0.3)
    time.sleep(0.25)
    m.observe_ttft(1.0)
    assert m.ttft_seconds() == pytest.approx(1.0)       # the older two left the window
    time.sleep(0.25)
    assert m.ttft_seconds() == 0.0
