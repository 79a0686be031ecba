"""The README's demo command runs to the end and shows what it promises: a real model's answers
through the SDK and the OpenAI door, the plan beside the baselines, a lost renter re-planned."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end():
    out = subprocess.run([sys.executable, "-m", "atoll", "demo"], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for name in ("dc-us-east-1", "rent-us-west-1", "edge-eu-west-1"):
        assert name in text
    assert "SmolLM2-135M-Instruct" in text and "SIMULATED" in text
    assert "RANDOM LoRA weights" in text and "NOT trained" in text          # said plainly
    assert re.search(r"total \$\d+\.\d+/h", text)
    for planner in ("milp", "greedy", "jellybean"):
        assert re.search(rf"^\s+{planner}\s", text, re.M), planner
    # real answers: through the SDK (two chat stages), and through the door with the official client
    sdk = re.search(r"Q: What is the capital of France\?\n\s+A: (.*)\n", text)
    assert sdk and "Paris" in sdk.group(1), text[-3000:]
    door = re.search(r"A \(support-bot, streamed\): (.*)\n", text)
    assert door and "Tokyo" in door.group(1), text[-3000:]
    assert re.search(r"A \(SmolLM2-135M-Instruct\.Q4_1\.gguf:tenant-a, one stage\): .*Tokyo.*\[finish: stop\]", text)
    m = re.search(r"(\d+)/(\d+) answered, (\d+) errors", text)
    assert m and m.group(1) == m.group(2) and m.group(3) == "0", text[-2000:]
    assert "LOST after" in text and "re-planned in" in text
    assert re.search(r"(\d+)/\1 answered after the loss", text)
    assert "Traceback" not in out.stderr
