"""bench/cpu_ops_bench.py end to end in its quick mode: every section measured, the kernels'
outputs agreeing with the torch paths they are timed against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.kernels import cpu_ops

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not cpu_ops.available(), reason=f"no CPU kernel here: {cpu_ops.why_not()}")
def test_cpu_ops_bench_quick(tmp_path):
    out = tmp_path / "cpu_ops.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "cpu_ops_bench.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    r = doc["results"]["smollm2-135m"]
    assert [row["rows"] for row in r["linear"]] == [1, 32]
    assert all(v > 0 for row in r["linear"] for v in row["seconds"].values())
    assert r["stream"]["panel"]["gb_s"] > 0
    assert r["stream"]["panel"]["gflop_s_32_rows"] > 0
    assert [row["requests"] for row in r["attention"]] == [1, 32]
    assert all(row["max_abs_diff"] < 1e-4 for row in r["attention"] + r["lora"])
    assert {row["projection"] for row in r["lora"]} == {"qkv", "gate_up"}
    assert "decode attention" in proc.stdout and "wrote" in proc.stdout
