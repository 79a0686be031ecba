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
     the same number of bytes as the LoRA op (same launch overheads). The dispatched op is
     timed twice: eager (host launch overhead included) and replayed as a CUDA graph (device
     time, the figure compared with the peak).
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

from atoll.kernels.lora import LoraMeta, TritonLoraPlan, expand_ref, lora_apply, plan_step, shrink_ref

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


def graphed(fn):
    """fn captured once into a CUDA graph (after warm-up calls); returns the replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def d2d_copy_seconds(n_bytes: int, device, iters: int, timer=time_cuda) -> float:
    """Seconds per copy of an n_bytes buffer to another on the same device (moves 2 * n_bytes)."""
    src = torch.empty(max(1, n_bytes), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src), iters)


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

# Shapes of the GPU part. SMOKE runs the same code on CPU tensors under the Triton interpreter
# (--interpret): its timings mean nothing, it only shows the GPU code path runs end to end.
GPU_SHAPES = dict(dtypes=(torch.bfloat16, torch.float16), perf_dtype=torch.bfloat16,
                  corr_hidden=2049, corr_widths=(2049, 513, 513), corr_batches=(1, 7, 64),
                  corr_prefill_lens=(133, 1, 47, 301, 64), hidden=4096, rank=16,
                  batches=(1, 2, 4, 8, 16, 32, 64), quick_batches=(1, 8, 64),
                  prefill_tokens=(512, 2048, 8192), quick_prefill_tokens=(2048,),
                  peak_bytes=1 << 30, decode_iters=200, prefill_iters=20)
SMOKE_SHAPES = dict(dtypes=(torch.float16,), perf_dtype=torch.float16,
                    corr_hidden=65, corr_widths=(33, 17, 17), corr_batches=(3,),
                    corr_prefill_lens=(3, 1, 2, 4, 1), hidden=32, rank=16,
                    batches=(1, 4), quick_batches=(4,),
                    prefill_tokens=(16,), quick_prefill_tokens=(16,),
                    peak_bytes=1 << 20, decode_iters=1, prefill_iters=1)


def cpu_timer(fn, iters: int) -> float:
    """Stand-in for time_cuda on CPU tensors (interpreter smoke run)."""
    return time_cpu(fn, min_time=0.0, repeats=1)


def gpu_correctness(device, quick: bool, shapes: dict) -> list[dict]:
    """Triton (dispatch, SGMV, BGMV) in bf16/fp16 against the fp32 reference on the same inputs."""
    from atoll.kernels import triton_lora as tlr

    rows = []
    cases = [("decode", b, pop) for b in shapes["corr_batches"] for pop in POPULARITIES]
    cases += [("prefill", 0, "mixed")]
    rng = np.random.default_rng(0)
    for dtype in shapes["dtypes"]:
        for phase, batch, pop in cases:
            if phase == "decode":
                slots = request_slots(pop, batch, rng)
            else:                        # 5 requests of odd lengths, one without an adapter
                lens = shapes["corr_prefill_lens"]
                slots = [s for s, ln in zip((0, 1, -1, 2, 1), lens) for _ in range(ln)]
            p = make_problem(slots, shapes["corr_hidden"], shapes["corr_widths"],
                             shapes["rank"], dtype, device, scale=0.5)
            p32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                   for k, v in p.items()}
            h_ref = shrink_ref(p32["x"], p32["a"], p["meta"])
            y_ref = expand_ref(p32["y"].clone(), h_ref, p32["b"], p32["scales"], p["meta"],
                               p["offsets"])
            rtol, atol = TOL[dtype]
            mag = max(1.0, float(y_ref.abs().max()))
            for family, sh, ex in (("dispatch", tlr.shrink, tlr.expand),
                                   ("sgmv", tlr.sgmv_shrink, tlr.sgmv_expand),
                                   ("bgmv", tlr.bgmv_shrink, tlr.bgmv_expand)):
                h = sh(p["x"], p["a"], p["meta"])
                y = ex(p["y"].clone(), h, p["b"], p["scales"], p["meta"], p["offsets"])
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


def gpu_perf(device, quick: bool, shapes: dict, timer) -> tuple[dict, list[dict]]:
    """Latency and effective bandwidth of shrink + expand next to device-to-device copies."""
    from atoll.kernels import triton_lora as tlr

    big = shapes["peak_bytes"]
    peak_s = d2d_copy_seconds(big, device, 20, timer)
    peak = {"bytes": big, "seconds": peak_s, "bandwidth_gbs": 2 * big / peak_s / 1e9}
    h, r, dtype = shapes["hidden"], shapes["rank"], shapes["perf_dtype"]
    batches = shapes["quick_batches"] if quick else shapes["batches"]
    cases = [("decode", pop, request_slots(pop, b, np.random.default_rng(b)))
             for pop in POPULARITIES for b in batches]
    for tokens in shapes["quick_prefill_tokens"] if quick else shapes["prefill_tokens"]:
        for n_seg in (1, 4, 16):                  # equal-length segments, one adapter each
            cases.append(("prefill", f"{n_seg} segments",
                          [s for s in range(n_seg) for _ in range(tokens // n_seg)]))
    rows = []
    for phase, pop, slots in cases:
        p = make_problem(slots, h, (h,), r, dtype, device)
        mb = model_bytes(p)
        iters = shapes["decode_iters"] if phase == "decode" else shapes["prefill_iters"]
        row = dict(phase=phase, popularity=pop, tokens=len(slots), hidden=h, rank=r,
                   dtype=str(dtype).replace("torch.", ""), **mb)

        # the slice offsets go to the device once, before timing and capture, as a step plan does
        offs = TritonLoraPlan(p["meta"]).offsets(p["offsets"], device)

        def op(sh, ex, p=p, offs=offs):
            return lambda: ex(p["y"], sh(p["x"], p["a"], p["meta"]), p["b"], p["scales"],
                              p["meta"], p["offsets"], offsets=offs)

        for family, sh, ex in (("dispatch", tlr.shrink, tlr.expand),
                               ("sgmv", tlr.sgmv_shrink, tlr.sgmv_expand),
                               ("bgmv", tlr.bgmv_shrink, tlr.bgmv_expand)):
            sec = timer(op(sh, ex), iters)
            row[f"{family}_us"] = sec * 1e6
            row[f"{family}_gbs"] = mb["model_bytes"] / sec / 1e9
        if device.type == "cuda":            # device time alone: the op replayed as a CUDA graph
            try:
                sec = time_cuda(graphed(op(tlr.shrink, tlr.expand)), iters)
                row["graph_us"], row["graph_gbs"] = sec * 1e6, mb["model_bytes"] / sec / 1e9
            except Exception as e:  # report, keep the other figures
                row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
        copy_s = d2d_copy_seconds(mb["model_bytes"] // 2, device, iters, timer)  # moves model_bytes
        row["d2d_same_bytes_us"] = copy_s * 1e6
        row["d2d_same_bytes_gbs"] = mb["model_bytes"] / copy_s / 1e9
        row["dispatch_vs_peak_d2d"] = row["dispatch_gbs"] / peak["bandwidth_gbs"]
        row["dispatch_vs_same_bytes_d2d"] = row["dispatch_gbs"] / row["d2d_same_bytes_gbs"]
        if "graph_gbs" in row:
            row["graph_vs_peak_d2d"] = row["graph_gbs"] / peak["bandwidth_gbs"]
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
            step = plan_step(p["meta"], backend=backend)     # once per step, as the runtime does
            s = time_cpu(lambda: lora_apply(p["y"], p["x"], p["a"], p["b"], p["scales"],
                                            p["meta"], p["offsets"], backend=backend, plan=step))
            row[f"{backend}_us"] = s * 1e6
        row["speedup"] = row["ref_us"] / row["torch_us"]
        rows.append(row)
    return rows


def cpu_paths(quick: bool) -> list[dict]:
    """The torch backend's multi-slot paths forced one at a time, side by side (fp32, CPU): decode
    rows with distinct adapters (one row per slot, 33 stacked slots) and a uniform mix, on the
    runtime benchmark's projection shapes (hidden 512: qkv 512->1024 packed, gate_up 512->2816
    packed, down 1408->512), rank 16. Paths: a matmul per slot ("per_slot"), gather + bmm,
    grouped GEMM, padded bmm."""
    from atoll.kernels.torch_lora import HAS_GROUPED_MM, TorchLoraPlan, TorchLoraPolicy

    forced = {                       # a policy that forces each path
        "per_slot": TorchLoraPolicy(sorted=False, gather_min_slots=10**9),
        "gather": TorchLoraPolicy(sorted=False, gather_min_slots=1, gather_max_row_bytes=1 << 40,
                                  gather_max_rows_per_slot=10**9),
        "grouped": TorchLoraPolicy(sorted=True, grouped=True, padded_max_waste=0.0),
        "padded": TorchLoraPolicy(sorted=True, grouped=False, padded_max_waste=1e9),
    }
    if not HAS_GROUPED_MM:
        forced.pop("grouped")
    shapes = (("qkv", 512, (512, 256, 256)), ("gate_up", 512, (1408, 1408)), ("down", 1408, (512,)))
    rows = []
    for pop, slots in (("distinct", list(range(32))), ("uniform", [i % 6 for i in range(32)])):
        for name, h_in, widths in shapes[:1] if quick else shapes:
            p = make_problem(slots, h_in, widths, 16, torch.float32, torch.device("cpu"))
            a = torch.zeros(33, *p["a"].shape[1:])            # 33 stacked slots, as the runtime bench
            a[:p["a"].shape[0]] = p["a"]
            b = torch.zeros(33, *p["b"].shape[1:])
            b[:p["b"].shape[0]] = p["b"]
            sc = torch.ones(33)
            row = dict(popularity=pop, projection=name, tokens=len(slots), hidden_in=h_in,
                       widths=list(widths), rank=16, slots=33)
            y0 = p["y"].clone()                                # timing runs update p["y"] in place
            ref = lora_apply(y0.clone(), p["x"], a, b, sc, p["meta"], p["offsets"], backend="ref")
            for path, policy in forced.items():
                step = TorchLoraPlan(p["meta"], policy)         # one plan per step, as the runtime
                y = lora_apply(y0.clone(), p["x"], a, b, sc, p["meta"], p["offsets"], backend="torch",
                               plan=step)
                assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4), path
                row[f"{path}_us"] = time_cpu(lambda: lora_apply(
                    p["y"], p["x"], a, b, sc, p["meta"], p["offsets"], backend="torch", plan=step)) * 1e6
                row[f"{path}_ran"] = sorted(step.taken)
            rows.append(row)
    return rows


# ---- main --------------------------------------------------------------------------------------

def print_gpu(result: dict) -> None:
    corr = result["gpu_correctness"]
    bad = [c for c in corr if not c["ok"]]
    print(f"GPU correctness vs fp32 reference: {len(corr) - len(bad)}/{len(corr)} within tolerance")
    for c in bad:
        print("  FAIL", c)
    peak = result["d2d_peak"]
    print(f"\nD2D copy of {peak['bytes'] / 2**20:.0f} MiB: {peak['bandwidth_gbs']:.0f} GB/s "
          "(read + write); /peak and /copy: LoRA op bandwidth over the big copy's and over "
          "a copy of the same bytes")
    print("us: eager calls (host launch overhead included); graph: the same op replayed as a "
          "CUDA graph (device time); /peak uses the graph figure when there is one")
    print(f"{'phase':8} {'popularity':12} {'T':>5} {'U':>3} {'kernel':6} {'us':>8} "
          f"{'graph':>8} {'GB/s':>7} {'sgmv us':>8} {'bgmv us':>8} {'copy us':>8} {'/peak':>6} "
          f"{'/copy':>6}")
    for w in result["gpu_perf"]:
        graph_us = w.get("graph_us", float("nan"))
        gbs = w.get("graph_gbs", w["dispatch_gbs"])
        print(f"{w['phase']:8} {w['popularity']:12} {w['tokens']:5d} {w['distinct_adapters']:3d} "
              f"{w['family']:6} {w['dispatch_us']:8.1f} {graph_us:8.1f} {gbs:7.0f} "
              f"{w['sgmv_us']:8.1f} {w['bgmv_us']:8.1f} {w['d2d_same_bytes_us']:8.1f} "
              f"{w.get('graph_vs_peak_d2d', w['dispatch_vs_peak_d2d']):6.2f} "
              f"{w['dispatch_vs_same_bytes_d2d']:6.2f}")
        if "graph_error" in w:
            print("   graph capture failed:", w["graph_error"])


def print_cpu(result: dict) -> None:
    rows = result["cpu_torch_backend"]
    print(f"\nCPU, torch backend vs fp32 segment-loop reference (fp32, rank {rows[0]['rank']}, "
          f"{result['machine']['torch_threads']} thread(s); speedup = ref / torch)")
    print(f"{'hidden':>6} {'layout':7} {'phase':8} {'popularity':12} {'T':>4} {'U':>3} "
          f"{'torch us':>9} {'ref us':>9} {'speedup':>7}")
    for w in rows:
        print(f"{w['hidden']:6d} {w['layout']:7} {w['phase']:8} {w['popularity']:12} "
              f"{w['tokens']:4d} {w['distinct_adapters']:3d} {w['torch_us']:9.0f} "
              f"{w['ref_us']:9.0f} {w['speedup']:7.2f}")
    print("speedup geomean {geomean:.2f}, min {min:.2f}, max {max:.2f}".format(
        **result["cpu_speedup_summary"]))


def print_paths(rows: list[dict]) -> None:
    paths = [k[:-3] for k in rows[0] if k.endswith("_us")]
    print("\nCPU, torch backend paths forced side by side (us per shrink+expand, fp32, rank 16, "
          "32 decode rows, 33 stacked slots)")
    print(f"{'popularity':10} {'proj':8} " + " ".join(f"{p:>9}" for p in paths))
    for w in rows:
        print(f"{w['popularity']:10} {w['projection']:8} " + " ".join(f"{w[p + '_us']:9.0f}" for p in paths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="skip the GPU part even with CUDA")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    ap.add_argument("--out", default=None,
                    help="JSON path (default bench/results/kernels.json; none for --interpret "
                         "and --torch-paths)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: multi-threaded small ops are erratic "
                         "on a shared machine)")
    ap.add_argument("--torch-paths", action="store_true",
                    help="only the CPU side-by-side of the torch backend's multi-slot paths")
    ap.add_argument("--interpret", action="store_true",
                    help="run only the GPU part, on CPU tensors under TRITON_INTERPRET=1 with "
                         "tiny shapes: checks the script end to end, its figures mean nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.interpret:
        if "triton" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
            sys.exit("--interpret: set TRITON_INTERPRET=1 before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    use_cuda = torch.cuda.is_available() and not args.cpu and not args.interpret
    device = torch.device("cuda" if use_cuda else "cpu")
    result = {"bench": "kernels", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine_info(device)}
    status = 0
    if use_cuda or args.interpret:
        shapes, timer = (GPU_SHAPES, time_cuda) if use_cuda else (SMOKE_SHAPES, cpu_timer)
        if args.interpret:
            result["note"] = "interpreter smoke run of the GPU code path: timings mean nothing"
            print(result["note"])
        result["gpu_correctness"] = gpu_correctness(device, args.quick, shapes)
        result["d2d_peak"], result["gpu_perf"] = gpu_perf(device, args.quick, shapes, timer)
        print_gpu(result)
        status = 1 if any(not c["ok"] for c in result["gpu_correctness"]) else 0
    else:
        result["note"] = ("no CUDA device: CPU figures of the torch backend only; the Triton "
                          "kernels' GPU correctness (bf16) and bandwidth figures need a GPU")
        print(result["note"])
    if not args.interpret:
        result["cpu_torch_paths"] = cpu_paths(args.quick)
        print_paths(result["cpu_torch_paths"])
    if not args.interpret and not args.torch_paths:
        rows = cpu_perf(args.quick)
        sp = [w["speedup"] for w in rows]
        result["cpu_torch_backend"] = rows
        result["cpu_speedup_summary"] = {"geomean": float(np.exp(np.mean(np.log(sp)))),
                                         "min": min(sp), "max": max(sp)}
        print_cpu(result)
    out = args.out or (None if args.interpret or args.torch_paths else REPO / "bench" / "results" / "kernels.json")
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
