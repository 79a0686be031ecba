"""The README's demo command runs to the end and shows what it promises."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end():
    out = subprocess.run([sys.executable, "-m", "atoll", "demo"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for name in ("dc-us-east-1", "rent-us-west-1", "edge-eu-west-1"):
        assert name in text
    assert "RANDOM weights" in text and "SIMULATED" in text
    assert re.search(r"total \$\d+\.\d+/h", text)
    for planner in ("milp", "greedy", "jellybean"):
        assert re.search(rf"^\s+{planner}\s", text, re.M), planner
    m = re.search(r"(\d+)/300 answered, (\d+) errors", text)
    assert m and int(m.group(1)) == 300, text[-2000:]
    assert "re-planned in" in text and "50/50 answered after the loss" in text
    assert "Traceback" not in out.stderr
