"""The README's demo command runs to the end and shows what it promises."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_and_shows_the_fleet():
    out = subprocess.run([sys.executable, "-m", "atoll", "demo"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for name in ("dc-us-east-1", "rent-us-west-1", "edge-eu-west-1"):
        assert name in text
    assert "rent-us-west-1 is LOST" in text
    assert "SIMULATED" in text and "Traceback" not in out.stderr
