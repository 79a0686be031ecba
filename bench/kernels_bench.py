"""Benchmark of the batched-LoRA operators (shrink + expand = one LoRA op on one projection).

    .venv/bin/python bench/kernels_bench.py [--quick] [--out bench/results/kernels.json]

On a CUDA device:
  1. correctness of the Triton kernels in bf16 and fp16 against the fp32 torch reference
     (tolerances bf16 rtol 3e-2 / atol 2e-2, fp16 5e-3 / 5e-3, atol relative to max |ref|);
  2. latency of shrink+expand (dispatch, and SGMV / BGMV forced) for identical / uniform /
     distinct adapter popularity at decode batch 1..64 and for prefill shapes; hidden 4096,
     rank 16, bf16;
  3. effective bandwidth under a byte model, next to a device-to-device copy measured in the
     same run: the copy of a 1 GiB buffer (the "peak" the >= 60 % goal refers to) and a copy of
     the same number of bytes as the LoRA op (same launch overheads).
On the CPU (no CUDA): the torch backend's vectorized path against the fp32 segment-loop
reference on moderate shapes. Triton GPU figures need a GPU; the script says so.

Byte model (bytes a perfect kernel moves, e = element size, U = distinct adapters in the step):
    x: T*H_in*e  +  A: U*N*R*H_in*e  +  h: 2*N*T*R*4 (fp32 out and back)  +  B: U*H_out*R*e
    +  y: 2*T*H_out*e (read and write, in place)
Punica's model, also reported: 2*[T*(H_in + H_out) + G*H_in*H_out] with G = segments.
Effective bandwidth = model bytes / measured time. A copy moves 2 * its size (read + write).

Prints a table and writes JSON with the machine, the versions and every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

from atoll.kernels.lora import LoraMeta, expand_ref, lora_apply, shrink_ref

POPULARITIES = ("identical", "uniform", "distinct")
TOL = {torch.bfloat16: (3e-2, 2e-2), torch.float16: (5e-3, 5e-3), torch.float32: (1e-4, 1e-4)}


# ---- inputs ----------------------------------------------------------------------------------

def request_slots(popularity: str, n_req: int, rng: np.random.Generator) -> list[int]:
    """identical: one adapter; uniform: ceil(sqrt(n)) adapters drawn uniformly; distinct: one each."""
    if popularity == "identical":
        return [0] * n_req
    if popularity == "uniform":
        return [int(s) for s in rng.integers(0, math.ceil(math.sqrt(n_req)), n_req)]
    if popularity == "distinct":
        return list(range(n_req))
    raise ValueError(popularity)


def make_problem(slots: list[int], h_in: int, widths: tuple[int, ...], rank: int, dtype,
                 device, seed: int = 0, scale: float = 0.05):
    """Random x, stacked A/B, scales and y for a step with the given per-row slots."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_slots = max(max(slots) + 1, 1)
    n, h_out, t = len(widths), sum(widths), len(slots)
    offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(widths)]))

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(dtype).to(device)

    return dict(
        x=rnd(t, h_in), a=rnd(n_slots, n, rank, h_in, s=1 / math.sqrt(h_in)),
        b=rnd(n_slots, h_out, rank), scales=torch.full((n_slots,), scale, device=device),
        y=rnd(t, h_out), meta=LoraMeta.build(torch.tensor(slots, dtype=torch.int32, device=device)),
        offsets=offsets,
    )


def model_bytes(p) -> dict:
    x, a, b, meta = p["x"], p["a"], p["b"], p["meta"]
    t, h_in = x.shape
    _, n, r, _ = a.shape
    h_out = b.shape[1]
    e = x.element_size()
    slots = meta.token_slots
    u = int(torch.unique(slots[slots >= 0]).numel())
    g = int(meta.seg_slots.numel())
    ours = (t * h_in * e + u * n * r * h_in * e + 2 * n * t * r * 4 + u * h_out * r * e
            + 2 * t * h_out * e)
    punica = 2 * (t * (h_in + h_out) + g * h_in * h_out)
    return {"model_bytes": ours, "punica_bytes": punica, "distinct_adapters": u, "segments": g}


# ---- timing ----------------------------------------------------------------------------------

def time_cuda(fn, iters: int, repeats: int = 5) -> float:
    """Median seconds per call over ``repeats`` groups of ``iters`` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(out)


def time_cpu(fn, min_time: float = 0.2, repeats: int = 5) -> float:
    """Median seconds per call; each repeat runs enough calls to last about min_time / repeats."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    iters = max(1, int(min_time / repeats / one))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) / iters)
    return statistics.median(out)


def d2d_copy_seconds(n_bytes: int, device, iters: int) -> float:
    src = torch.empty(max(1, n_bytes), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_cuda(lambda: dst.copy_(src), iters)


# ---- machine ---------------------------------------------------------------------------------

def machine_info(device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "triton": None, "device": str(device), "device_name": "cpu",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(device_name=prop.name, device_memory_gib=round(prop.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, sm_count=prop.multi_processor_count)
    return info


# ---- GPU ---------------------------------------------------------------------------------------

def gpu_correctness(device, quick: bool) -> list[dict]:
    """Triton (dispatch, SGMV, BGMV) in bf16/fp16 against the fp32 reference on the same inputs."""
    from atoll.kernels import triton_lora as tlr

    rows = []
    shapes = [("decode", b, pop) for b in (1, 7, 64) for pop in POPULARITIES]
    shapes += [("prefill", 0, "uniform")]
    rng = np.random.default_rng(0)
    for dtype in (torch.bfloat16, torch.float16):
        for phase, batch, pop in shapes:
            if phase == "decode":
                slots = request_slots(pop, batch, rng)
            else:                                            # 5 requests of odd lengths
                lens = (133, 1, 47, 301, 64)
                slots = [s for s, ln in zip((0, 1, -1, 2, 1), lens) for _ in range(ln)]
            p = make_problem(slots, 2049, (2049, 513, 513), 16, dtype, device, scale=0.5)
            p32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                   for k, v in p.items()}
            h_ref = shrink_ref(p32["x"], p32["a"], p["meta"])
            y_ref = expand_ref(p32["y"].clone(), h_ref, p32["b"], p32["scales"], p["meta"],
                               p["offsets"])
            for family, sh, ex in (("dispatch", tlr.shrink, tlr.expand),
                                   ("sgmv", tlr.sgmv_shrink, tlr.sgmv_expand),
                                   ("bgmv", tlr.bgmv_shrink, tlr.bgmv_expand)):
                h = sh(p["x"], p["a"], p["meta"])
                y = ex(p["y"].clone(), h, p["b"], p["scales"], p["meta"], p["offsets"])
                rtol, atol = TOL[dtype]
                mag = max(1.0, float(y_ref.abs().max()))
                err = (y.float() - y_ref).abs()
                bound = atol * mag + rtol * y_ref.abs()
                h_err = float((h - h_ref).abs().max() / max(1.0, float(h_ref.abs().max())))
                rows.append(dict(dtype=str(dtype).replace("torch.", ""), phase=phase,
                                 batch=len(slots), popularity=pop, family=family,
                                 max_abs_err=float(err.max()), max_ref=mag,
                                 h_rel_err=h_err, ok=bool((err <= bound).all())))
            if quick:
                break
    return rows


def gpu_perf(device, quick: bool) -> tuple[dict, list[dict]]:
    from atoll.kernels import triton_lora as tlr

    big = 1 << 30
    peak_s = d2d_copy_seconds(big, device, iters=20)
    peak = {"bytes": big, "seconds": peak_s, "bandwidth_gbs": 2 * big / peak_s / 1e9}
    h, r, dtype = 4096, 16, torch.bfloat16
    cases = [("decode", pop, b, [s for s in request_slots(pop, b, np.random.default_rng(b))])
             for pop in POPULARITIES for b in ((1, 8, 64) if quick else (1, 2, 4, 8, 16, 32, 64))]
    for tokens in ((2048,) if quick else (512, 2048, 8192)):
        for n_seg in (1, 4, 16):                  # equal-length segments, one adapter each
            cases.append(("prefill", f"{n_seg} segments", tokens,
                          [s for s in range(n_seg) for _ in range(tokens // n_seg)]))
    rows = []
    for phase, pop, batch, slots in cases:
        p = make_problem(slots, h, (h,), r, dtype, device)
        mb = model_bytes(p)
        iters = 200 if phase == "decode" else 20
        row = dict(phase=phase, popularity=pop, tokens=len(slots), hidden=h, rank=r,
                   dtype="bfloat16", **mb)

        def op(sh, ex):
            return lambda: ex(p["y"], sh(p["x"], p["a"], p["meta"]), p["b"], p["scales"],
                              p["meta"], p["offsets"])

        for family, sh, ex in (("dispatch", tlr.shrink, tlr.expand),
                               ("sgmv", tlr.sgmv_shrink, tlr.sgmv_expand),
                               ("bgmv", tlr.bgmv_shrink, tlr.bgmv_expand)):
            s = time_cuda(op(sh, ex), iters)
            row[f"{family}_us"] = s * 1e6
            row[f"{family}_gbs"] = mb["model_bytes"] / s / 1e9
        copy_s = d2d_copy_seconds(mb["model_bytes"] // 2, device, iters)   # moves model_bytes
        row["d2d_same_bytes_us"] = copy_s * 1e6
        row["d2d_same_bytes_gbs"] = mb["model_bytes"] / copy_s / 1e9
        row["dispatch_vs_peak_d2d"] = row["dispatch_gbs"] / peak["bandwidth_gbs"]
        row["dispatch_vs_same_bytes_d2d"] = row["dispatch_gbs"] / row["d2d_same_bytes_gbs"]
        row["family"] = "bgmv" if tlr.use_bgmv(p["meta"]) else "sgmv"
        rows.append(row)
    return peak, rows


# ---- CPU ---------------------------------------------------------------------------------------

def cpu_perf(quick: bool) -> list[dict]:
    """torch backend (vectorized) vs the fp32 segment-loop reference ('ref'), fp32 on the CPU.

    hidden 256 (small model: per-op overhead dominates) and 2048 (weights dominate); decode
    rows are in request order (unsorted), prefill rows in equal segments of 256 tokens."""
    rows = []
    r = 16
    cases = []
    for h in (256, 2048):
        for layout, widths in (("single", (h,)), ("qkv", (h, h // 4, h // 4))):
            for pop in POPULARITIES:
                for batch in ((1, 64) if quick else (1, 8, 64)):
                    cases.append((h, layout, widths, "decode", pop, request_slots(
                        pop, batch, np.random.default_rng(batch))))
            for n_seg in (1, 4):
                cases.append((h, layout, widths, "prefill", f"{n_seg} segments",
                              [s for s in range(n_seg) for _ in range(256 // n_seg)]))
    for h, layout, widths, phase, pop, slots in cases:
        p = make_problem(slots, h, widths, r, torch.float32, torch.device("cpu"))
        row = dict(layout=layout, phase=phase, popularity=pop, tokens=len(slots), hidden=h,
                   rank=r, dtype="float32", **model_bytes(p))
        for backend in ("torch", "ref"):
            s = time_cpu(lambda: lora_apply(p["y"], p["x"], p["a"], p["b"], p["scales"],
                                            p["meta"], p["offsets"], backend=backend))
            row[f"{backend}_us"] = s * 1e6
        row["speedup"] = row["ref_us"] / row["torch_us"]
        rows.append(row)
    return rows


# ---- main --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="skip the GPU part even with CUDA")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "kernels.json"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: multi-threaded small ops are erratic "
                         "on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    result = {"bench": "kernels", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(device)}
    if device.type == "cuda":
        result["gpu_correctness"] = gpu_correctness(device, args.quick)
        bad = [c for c in result["gpu_correctness"] if not c["ok"]]
        print(f"GPU correctness vs fp32 reference: {len(result['gpu_correctness']) - len(bad)}"
              f"/{len(result['gpu_correctness'])} within tolerance")
        for c in bad:
            print("  FAIL", c)
        peak, rows = gpu_perf(device, args.quick)
        result["d2d_peak"], result["gpu_perf"] = peak, rows
        print(f"\nD2D copy of 1 GiB: {peak['bandwidth_gbs']:.0f} GB/s (read + write)")
        print(f"{'phase':8} {'popularity':12} {'T':>5} {'U':>3} {'kernel':6} {'us':>8} "
              f"{'GB/s':>7} {'sgmv us':>8} {'bgmv us':>8} {'copy us':>8} {'/peak':>6} {'/copy':>6}")
        for w in rows:
            print(f"{w['phase']:8} {w['popularity']:12} {w['tokens']:5d} {w['distinct_adapters']:3d} "
                  f"{w['family']:6} {w['dispatch_us']:8.1f} {w['dispatch_gbs']:7.0f} "
                  f"{w['sgmv_us']:8.1f} {w['bgmv_us']:8.1f} {w['d2d_same_bytes_us']:8.1f} "
                  f"{w['dispatch_vs_peak_d2d']:6.2f} {w['dispatch_vs_same_bytes_d2d']:6.2f}")
    else:
        result["note"] = ("no CUDA device: CPU figures of the torch backend only; the Triton "
                          "kernels' GPU correctness (bf16) and bandwidth figures need a GPU")
        print(result["note"])
    rows = cpu_perf(args.quick)
    result["cpu_torch_backend"] = rows
    sp = [w["speedup"] for w in rows]
    result["cpu_speedup_summary"] = {"geomean": float(np.exp(np.mean(np.log(sp)))),
                                     "min": min(sp), "max": max(sp)}
    print(f"\nCPU, torch backend vs fp32 segment-loop reference (fp32, rank {rows[0]['rank']}, "
          f"{torch.get_num_threads()} thread(s); speedup = ref / torch)")
    print(f"{'hidden':>6} {'layout':7} {'phase':8} {'popularity':12} {'T':>4} {'U':>3} "
          f"{'torch us':>9} {'ref us':>9} {'speedup':>7}")
    for w in rows:
        print(f"{w['hidden']:6d} {w['layout']:7} {w['phase']:8} {w['popularity']:12} {w['tokens']:4d} "
              f"{w['distinct_adapters']:3d} {w['torch_us']:9.0f} {w['ref_us']:9.0f} "
              f"{w['speedup']:7.2f}")
    print("speedup geomean {geomean:.2f}, min {min:.2f}, max {max:.2f}".format(
        **result["cpu_speedup_summary"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
