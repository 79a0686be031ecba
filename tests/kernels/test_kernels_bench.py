"""bench/kernels_bench.py runs its GPU code path end to end (interpreter, tiny shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_path_runs_under_interpreter(tmp_path):
    out = tmp_path / "kernels.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "kernels_bench.py"), "--interpret",
                           "--quick", "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["machine"]["torch"] and res["machine"]["triton"]
    assert res["gpu_correctness"] and all(c["ok"] for c in res["gpu_correctness"])
    assert {c["family"] for c in res["gpu_correctness"]} == {"dispatch", "sgmv", "bgmv"}
    perf = res["gpu_perf"]
    assert {w["phase"] for w in perf} == {"decode", "prefill"}
    for w in perf:
        assert w["model_bytes"] > 0 and w["dispatch_us"] > 0 and w["d2d_same_bytes_us"] > 0
