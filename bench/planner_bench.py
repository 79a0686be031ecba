"""Planner benchmark: cost of every planner on three scenario families, and MILP scaling.

    .venv/bin/python bench/planner_bench.py [--quick] [--target-seeds 0,1,2,3] [--target-runs 3]

Writes bench/results/planner.json (machine, versions, load average, every figure) and prints
the tables. The target row (10,000 nodes, 8 tasks of 8 variants) is also run --target-runs
times on each of --target-seeds; the target counts as met when, on every seed, the median run
takes at most 5 s and proves a gap of at most 1%.

Figures are approximate public numbers, rounded; each constant names its source:
- AWS on-demand, us-east-1 (aws.amazon.com/ec2/pricing/on-demand, 2024-25): g4dn.xlarge (T4)
  $0.526/h, g5.xlarge (A10G) $1.006/h, g6.xlarge (L4) $0.805/h, p4d.24xlarge (8x A100 40GB)
  $32.77/h -> $4.10 per GPU-hour, p5.48xlarge (8x H100) $98.32/h -> $12.29 per GPU-hour.
  Data transfer: $0.09/GB to the internet, $0.02/GB between regions, $0.01/GB across AZs,
  ingress free (aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer).
- Marketplace rentals (Vast.ai / RunPod community listings, 2024-25 ranges): RTX 4090
  $0.30-0.50/h, A100 80GB $0.80-1.50/h, H100 $1.90-2.80/h; bandwidth often $0.00-0.02/GB.
- Edge box: NVIDIA Jetson AGX Orin 64GB dev kit, about $2,000 (NVIDIA store) over three years
  plus ~40 W -> about $0.08/h.
- Vision throughputs: Ultralytics YOLOv8 model table (docs.ultralytics.com/models/yolov8),
  TensorRT T4 latency n/s/m/l/x 1.47/2.66/5.86/9.06/14.37 ms, COCO mAP50-95
  37.3/44.9/50.2/52.9/53.9; Jetson figures from Ultralytics' Jetson guide (AGX Orin, TensorRT
  FP16, roughly 3-4x slower than a T4 per model). ResNet top-1 69.8/76.1/78.3 (torchvision
  weights); ResNet-50 about 2,000 img/s fp16 on a T4 (NVIDIA Deep Learning Performance page).
  A10G taken as 1.6x a T4, RTX 4090 as 3x a T4 (relative FP16 tensor throughput).
- LLM throughputs: vLLM serving benchmarks and vendor blog posts for Llama-3-8B (fp16) at high
  batch: about 3,000 tokens/s on an A100 80GB, 5,500 on an H100, 900 on an L4, 800 on an A10G,
  1,800 on an RTX 4090; AWQ int4 about 1.3x those on small GPUs. BGE embedding models: about
  4,000 (small) / 1,500 (base) / 600 (large) passages/s on a T4-class GPU (sentence-transformers
  benchmarks). Accuracy proxies: MTEB retrieval scores (bge-small/base/large 51.7/53.3/54.3)
  and MMLU for generators (Llama-3-8B 66.6, Llama-3-70B 79.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atoll.core.errors import PlanInfeasible  # noqa: E402
from atoll.planner.api import (PLANNERS, Edge, Network, PlanOptions, PlanProblem, Pool,  # noqa: E402
                           Source, Task, Variant)

# ---------------------------------------------------------------- hardware (see docstring)
# class: (tier, $/h low, $/h high, speed relative to a T4, GPU memory GB)
HARDWARE = {
    "t4":        ("datacenter", 0.526, 0.526, 1.0, 16),    # AWS g4dn.xlarge
    "l4":        ("datacenter", 0.805, 0.805, 1.3, 24),    # AWS g6.xlarge
    "a10g":      ("datacenter", 1.006, 1.006, 1.6, 24),    # AWS g5.xlarge
    "a100":      ("datacenter", 4.10, 4.10, 3.5, 40),      # AWS p4d.24xlarge / 8
    "h100":      ("datacenter", 12.29, 12.29, 6.0, 80),    # AWS p5.48xlarge / 8
    "rtx3090":   ("renter", 0.20, 0.30, 1.8, 24),          # Vast.ai-style listings
    "rtx4090":   ("renter", 0.30, 0.50, 3.0, 24),
    "a100-80g":  ("renter", 0.80, 1.50, 3.7, 80),
    "h100-m":    ("renter", 1.90, 2.80, 6.0, 80),
    "orin":      ("edge", 0.08, 0.08, 0.3, 64),            # Jetson AGX Orin, amortized
    "orin-nano": ("edge", 0.02, 0.02, 0.08, 8),
}
REGION_PRICE = {"us-east": 1.0, "us-west": 1.05, "eu-west": 1.10, "ap-south": 1.15}
AWS_INTERNET_GB, AWS_INTER_REGION_GB, AWS_CROSS_AZ_GB = 0.09, 0.02, 0.01


def network(regions, edge_uplink_mbps=None) -> Network:
    """AWS-like transfer prices: ingress free, egress to the internet (edge, renters) $0.09/GB,
    between regions $0.02/GB; renters charge ~$0.01/GB egress; edge uplinks may be capped."""
    links = []
    for r in regions:
        links += [((r, "edge"), (r, "datacenter"), 0.0, edge_uplink_mbps),
                  ((r, "edge"), (r, "renter"), 0.0, edge_uplink_mbps),
                  ((r, "datacenter"), (r, "edge"), AWS_INTERNET_GB, None),
                  ((r, "datacenter"), (r, "renter"), AWS_INTERNET_GB, None),
                  ((r, "renter"), (r, "datacenter"), 0.01, None),
                  ((r, "renter"), (r, "edge"), 0.01, None)]
        for r2 in regions:
            if r2 != r:
                links += [((r, "datacenter"), (r2, None), AWS_INTER_REGION_GB, None),
                          ((r, "renter"), (r2, None), 0.01, None),
                          ((r, "edge"), (r2, None), 0.0, edge_uplink_mbps)]
    return Network(same_location_per_gb=0.0, intra_region_per_gb=AWS_CROSS_AZ_GB,
                   inter_region_per_gb=AWS_INTER_REGION_GB, links=tuple(links))


def pool(pid, hw, region, count, rng=None) -> Pool:
    tier, lo, hi, _, mem = HARDWARE[hw]
    price = lo if rng is None else rng.uniform(lo, hi)
    return Pool(pid, hw, tier, region, round(price * REGION_PRICE[region], 3), count,
                preemptible=(tier == "renter"), gpu_memory_gb=mem)


def rps(t4_rate: float, classes) -> dict:
    return {hw: round(t4_rate * HARDWARE[hw][3], 2) for hw in classes}


def chain(sources, tasks_variants, ratios, sizes, name, pools, net, min_acc, model="profile"):
    rate = {s.name: s.rate for s in sources}
    tasks, edges = [], []
    names = [t for t, _ in tasks_variants]
    for i, (t, vs) in enumerate(tasks_variants):
        parents = [s.name for s in sources] if i == 0 else [names[i - 1]]
        rate[t] = sum(rate[p] for p in parents) if i == 0 else rate[names[i - 1]] * ratios[i]
        tasks.append(Task(t, rate[t], tuple(vs), tuple(parents)))
        for p in parents:
            e_rate = rate[p] if i == 0 else rate[t]
            size = sizes[i]
            edges.append(Edge(p, t, e_rate, size if isinstance(size, float) else size[0],
                              () if isinstance(size, float) else size[1]))
    return PlanProblem(name=name, sources=tuple(sources), tasks=tuple(tasks), edges=tuple(edges),
                       pools=tuple(pools), network=net, min_accuracy=min_acc, accuracy_model=model)


# ---------------------------------------------------------------- scenario families
YOLO = [  # name, T4 frames/s (1000 / TensorRT ms), relative accuracy (mAP / 53.9), memory GB
    ("yolov8n", 680, 0.692, 1.0), ("yolov8s", 376, 0.833, 1.5), ("yolov8m", 171, 0.931, 2.0),
    ("yolov8l", 110, 0.981, 3.0), ("yolov8x", 70, 1.0, 4.0)]
RESNET = [  # name, T4 img/s fp16, top-1 relative to 80%, memory GB
    ("resnet18", 5000, 0.873, 0.5), ("resnet34", 3000, 0.916, 0.6), ("resnet50", 2000, 0.951, 0.8),
    ("resnet101", 1200, 0.968, 1.0), ("resnet152", 850, 0.979, 1.2)]


def vision(scale: float = 1.0) -> PlanProblem:
    """JellyBean-style video analytics: cameras at the edge of two regions, detection, then a
    per-object classifier (2.5 objects per frame) and a light tracker; 200 KB frames, 20 KB
    crops, 1 KB tracks; edge uplinks capped at 500 Mbit/s per region."""
    regions = ["us-east", "us-west"]
    vis = ["t4", "a10g", "rtx4090", "orin"]
    sources = [Source("cams-east", 600 * scale, ("us-east", "edge")),    # 20 cameras at 30 fps
               Source("cams-west", 390 * scale, ("us-west", "edge"))]    # 13 cameras at 30 fps
    detect = [Variant(n, a, rps(r, vis), memory_gb=m) for n, r, a, m in YOLO]
    classify = [Variant(n, a, rps(r, vis), memory_gb=m) for n, r, a, m in RESNET]
    track = [Variant("bytetrack", 0.99, rps(3000, vis), memory_gb=0.2),
             Variant("deepsort", 0.995, rps(600, vis), memory_gb=0.6)]
    pools = []
    for r in regions:
        k = 6 if r == "us-east" else 4
        pools += [pool(f"orin-{r}", "orin", r, k), pool(f"g4dn-{r}", "t4", r, 20),
                  pool(f"g5-{r}", "a10g", r, 20)]
    pools.append(pool("vast-4090-us-east", "rtx4090", "us-east", int(8 * scale) + 2))
    return chain(sources, [("detect", detect), ("classify", classify), ("track", track)],
                 [1.0, 2.5, 1.0], [200.0, 20.0, 1.0], "vision", pools, network(regions, 500 * scale),
                 min_acc=0.85)


def rag(scale: float = 1.0) -> PlanProblem:
    """RAG with LoRA adapters across three regions: embed -> rerank -> generate -> guard.
    generate and guard are LoRA adapters on one Llama-3-8B base, so they can share hosts."""
    regions = ["us-east", "eu-west", "ap-south"]
    llm_hw = ["l4", "a10g", "a100", "h100", "rtx4090", "a100-80g", "h100-m"]
    sources = [Source(f"users-{r}", q * scale, (r, "datacenter"))
               for r, q in zip(regions, [40, 25, 15])]
    # tokens/s (prompt + completion) on a T4-class GPU; the speed factors scale them per class
    tok = lambda t4_tps, n: rps(t4_tps / n, llm_hw)  # noqa: E731
    gen_tokens = 1500 + 250
    embed = [Variant("bge-small", 0.517 / 0.543, rps(4000, llm_hw), memory_gb=0.5),
             Variant("bge-base", 0.533 / 0.543, rps(1500, llm_hw), memory_gb=0.8),
             Variant("bge-large", 1.0, rps(600, llm_hw), memory_gb=1.5)]
    rerank = [Variant("minilm-rerank", 0.95, rps(900, llm_hw), memory_gb=0.3),
              Variant("bge-reranker-base", 0.98, rps(400, llm_hw), memory_gb=1.1),
              Variant("bge-reranker-large", 1.0, rps(150, llm_hw), memory_gb=2.2)]
    generate = [
        Variant("llama3-8b-rag-lora", 0.70, tok(2600, gen_tokens), group="llama-3-8b@fp16",
                adapter="rag-ft", memory_gb=16, adapter_memory_gb=0.3),
        Variant("llama3-8b-awq-rag-lora", 0.68, tok(3400, gen_tokens), group="llama-3-8b@int4",
                adapter="rag-ft", memory_gb=6, adapter_memory_gb=0.3),
        Variant("llama3-70b-awq", 0.795, {h: x for h, x in tok(450, gen_tokens).items()
                                          if HARDWARE[h][4] >= 40}, group="llama-3-70b@int4", memory_gb=40),
    ]
    guard = [
        Variant("guard-lora-8b", 0.97, tok(2600, 600), group="llama-3-8b@fp16", adapter="guard",
                memory_gb=16, adapter_memory_gb=0.3),
        Variant("guard-lora-8b-awq", 0.96, tok(3400, 600), group="llama-3-8b@int4", adapter="guard",
                memory_gb=6, adapter_memory_gb=0.3),
        Variant("guard-1b", 0.92, tok(20000, 600), group="llama-guard-1b@fp16", memory_gb=3),
    ]
    pools = []
    for r in regions:
        pools += [pool(f"g6-{r}", "l4", r, 16), pool(f"g5-{r}", "a10g", r, 16),
                  pool(f"p4d-{r}", "a100", r, 16), pool(f"p5-{r}", "h100", r, 8)]
    pools += [pool("vast-a100-us-east", "a100-80g", "us-east", 8), pool("vast-4090-eu-west", "rtx4090", "eu-west", 12),
              pool("vast-h100-us-east", "h100-m", "us-east", 4)]
    return chain(sources, [("embed", embed), ("rerank", rerank), ("generate", generate), ("guard", guard)],
                 [1.0, 1.0, 1.0, 1.0], [2.0, 12.0, 14.0, 3.0], "rag", pools, network(regions),
                 min_acc=0.60)


def scaling_problem(nodes: int, n_pools: int, n_tasks: int, n_variants: int, seed: int = 0,
                    load: float = 0.35) -> PlanProblem:
    """A random fleet of ``nodes`` nodes in ``n_pools`` pools (datacenter, marketplace, edge in
    four regions, prices drawn from the ranges above) and a chain of ``n_tasks`` tasks with
    ``n_variants`` variants each; sources at the edge; load sized to ``load`` of the fleet."""
    rng = random.Random(seed)
    regions = list(REGION_PRICE)
    classes = list(HARDWARE)
    pools, left = [], nodes
    for i in range(n_pools):
        hw = classes[i % len(classes)] if i < len(classes) else rng.choice(classes)
        count = max(1, left // (n_pools - i)) if i < n_pools - 1 else max(1, left)
        count = max(1, int(count * rng.uniform(0.6, 1.4))) if i < n_pools - 1 else count
        count = min(count, max(1, left - (n_pools - i - 1)))
        left -= count
        pools.append(pool(f"pool{i:03d}-{hw}", hw, regions[i % len(regions)], count, rng))
    tasks_variants = []
    for t in range(n_tasks):
        vs = []
        shared = t >= 2 and t % 2 == 0
        for j in range(n_variants):
            acc = round(0.80 + 0.2 * (j + 1) / n_variants - rng.uniform(0, 0.02), 4)
            speed = 2000 / (1.6 ** j) * rng.uniform(0.8, 1.2)
            mem = round(1 + 3 * j, 1)
            hw = [h for h in classes if HARDWARE[h][4] >= mem and (HARDWARE[h][0] != "edge" or j < 4)]
            if shared and j < 3:
                vs.append(Variant(f"t{t}-v{j}", acc, rps(speed / 8, hw), group=f"llm{j}@fp16",
                                  adapter=f"t{t}-lora", memory_gb=mem + 8, adapter_memory_gb=0.3))
            else:
                vs.append(Variant(f"t{t}-v{j}", acc, rps(speed, hw), memory_gb=mem))
        tasks_variants.append((f"t{t}", vs))
    sizes = [200.0] + [(rng.choice([5.0, 20.0, 50.0]), tuple((f"t{t - 1}-v{j}", None, 5.0 + 10 * j)
                                                            for j in range(0, n_variants, 3)))
                       for t in range(1, n_tasks)]
    ratios = [1.0] + [round(rng.uniform(0.8, 1.25), 2) for _ in range(1, n_tasks)]
    # size the load so that middle variants of every task fill about `load` of the fleet
    mult, acc = [], 1.0
    for r in ratios:
        acc *= r
        mult.append(acc)
    node_s = sum(m / sum(p.count * vs[n_variants // 2].rps.get(p.hardware, 0) for p in pools)
                 for m, (_, vs) in zip(mult, tasks_variants))
    total = load / node_s
    srcs = [Source(f"src-{r}", round(total / len(regions), 2), (r, "edge")) for r in regions]
    min_acc = round(0.93 ** n_tasks, 3)       # 0.93 per task on average
    return chain(srcs, tasks_variants, ratios, sizes, f"scale-{nodes}-{n_tasks}", pools,
                 network(regions, None), min_acc=min_acc)


def fleet(scale: float = 1.0) -> PlanProblem:
    """A large mixed fleet: 3,000 nodes in 60 pools, a 5-task workflow with 6 variants each."""
    return scaling_problem(int(3000 * scale), max(12, int(60 * min(1.0, scale))), 5, 6, seed=7)


SCENARIOS = {"vision": vision, "rag": rag, "fleet": fleet}


# ---------------------------------------------------------------- runs
def machine() -> dict:
    import pulp
    try:
        import highspy  # noqa: F401
        from importlib.metadata import version
        highs = version("highspy")
    except Exception:
        highs = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "pulp": pulp.__version__, "highspy": highs}


def run_families(opts: PlanOptions, scale: float) -> list[dict]:
    rows = []
    for fam, build in SCENARIOS.items():
        pb = build(scale)
        costs = {}
        for name, f in PLANNERS.items():
            t0 = time.perf_counter()
            try:
                p = f(pb, options=opts)
                costs[name] = {"total": p.total_cost_per_hour, "compute": p.compute_cost_per_hour,
                               "transfer": p.transfer_cost_per_hour, "accuracy": p.accuracy,
                               "nodes": p.nodes_used(), "seconds": time.perf_counter() - t0,
                               "gap": p.gap, "status": p.status, "variants": p.variants}
            except PlanInfeasible as e:
                costs[name] = {"total": None, "error": str(e)}
        try:
            up = PLANNERS["milp"](pb, options=PlanOptions(**{**opts.__dict__, "data_up_only": True}))
            up_cost = up.total_cost_per_hour
        except PlanInfeasible:
            up_cost = None
        milp = costs["milp"]["total"]
        savings = {n: (None if c.get("total") is None or milp is None else 1 - milp / c["total"])
                   for n, c in costs.items() if n != "milp"}
        rows.append({"family": fam, "tasks": len(pb.tasks), "pools": len(pb.pools),
                     "nodes": sum(p.count for p in pb.pools), "rate": pb.total_source_rate,
                     "planners": costs, "milp_saving_over": savings,
                     "milp_up_only_total": up_cost,
                     "up_only_extra": None if up_cost is None or milp is None else up_cost / milp - 1})
    return rows


def run_scaling(grid, opts: PlanOptions, seed: int = 0, quiet: bool = False) -> list[dict]:
    rows = []
    for nodes, pools, tasks, variants in grid:
        pb = scaling_problem(nodes, pools, tasks, variants, seed=seed)
        t0 = time.perf_counter()
        try:
            p = PLANNERS["milp"](pb, options=opts)
            row = {"status": p.status, "gap": p.gap, "cost": p.total_cost_per_hour,
                   "nodes_used": p.nodes_used(), "method": p.notes[0] if p.notes else ""}
        except PlanInfeasible as e:
            row = {"status": "infeasible", "gap": None, "cost": None, "error": str(e)}
        row.update({"nodes": nodes, "pools": pools, "tasks": tasks, "variants": variants,
                    "seconds": time.perf_counter() - t0, "seed": seed})
        rows.append(row)
        if not quiet:
            print(f"  {nodes:>6} nodes {pools:>4} pools {tasks:>3} tasks {variants} variants: "
                  f"{row['seconds']:6.2f} s  gap {_pct(row['gap'])}  {row['status']}", flush=True)
    return rows


def run_target(seeds, runs: int, opts: PlanOptions) -> list[dict]:
    """The target case on several seeds, ``runs`` times each (timings here are noisy): medians."""
    import statistics
    out = []
    for seed in seeds:
        rs = [run_scaling([(10000, 200, 8, 8)], opts, seed=seed, quiet=True)[0] for _ in range(runs)]
        gaps = [1.0 if r["gap"] is None else r["gap"] for r in rs]
        row = {"seed": seed, "runs": len(rs), "median_seconds": statistics.median(r["seconds"] for r in rs),
               "max_seconds": max(r["seconds"] for r in rs), "median_gap": statistics.median(gaps),
               "max_gap": max(gaps), "cost": rs[0]["cost"], "method": rs[0].get("method"),
               "all": [{"seconds": r["seconds"], "gap": r["gap"], "cost": r["cost"], "status": r["status"]}
                       for r in rs]}
        row["met"] = row["median_seconds"] <= 5.0 and row["median_gap"] <= 0.01
        out.append(row)
        print(f"  seed {seed}: median {row['median_seconds']:5.2f} s (max {row['max_seconds']:5.2f})  "
              f"median gap {_pct(row['median_gap'])} (max {_pct(row['max_gap'])})  "
              f"{'met' if row['met'] else 'MISSED'}", flush=True)
    return out


def run_solvers() -> list[dict]:
    """CBC (bundled with PuLP) against HiGHS (highspy through PuLP) on the same exact MILPs."""
    rows = []
    cases = [("vision", vision(1.0)), ("rag", rag(1.0)), ("fleet-300", fleet(0.1)),
             ("random-1000x4", scaling_problem(1000, 50, 4, 6, seed=0))]
    for name, pb in cases:
        for solver in ("highs", "cbc"):
            opts = PlanOptions(time_limit=20.0, gap=0.005, solver=solver, method="exact")
            t0 = time.perf_counter()
            try:
                p = PLANNERS["milp"](pb, options=opts)
                row = {"cost": p.total_cost_per_hour, "gap": p.gap, "status": p.status}
            except PlanInfeasible as e:
                row = {"cost": None, "gap": None, "status": "infeasible", "error": str(e)}
            row.update({"case": name, "solver": solver, "seconds": time.perf_counter() - t0})
            rows.append(row)
            print(f"  {name:<14} {solver:<5} {row['seconds']:6.2f} s  cost {row['cost']}  gap {_pct(row['gap'])}",
                  flush=True)
    return rows


def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:5.2f}%"


def print_tables(fam_rows, scale_rows, solver_rows=(), target_rows=()) -> None:
    if solver_rows:
        print("\nSolvers on the same exact MILP (time limit 20 s, gap target 0.5%)")
        print(f"{'case':<14} {'solver':<6} {'seconds':>8} {'$/h':>10} {'gap':>7}")
        for r in solver_rows:
            cost = "-" if r["cost"] is None else f"{r['cost']:,.2f}"
            print(f"{r['case']:<14} {r['solver']:<6} {r['seconds']:>8.2f} {cost:>10} {_pct(r['gap']):>7}")
    names = list(PLANNERS)
    print("\nCost per planner ($/h) and the MILP's saving over each")
    print(f"{'family':<8} " + " ".join(f"{n:>14}" for n in names) + f" {'MILP up-only':>13}")
    for r in fam_rows:
        cells = []
        for n in names:
            c = r["planners"][n].get("total")
            s = r["milp_saving_over"].get(n)
            cells.append(f"{'-' if c is None else f'{c:,.2f}':>14}" if n == "milp" else
                         f"{('-' if c is None else f'{c:,.2f}') + ('' if s is None else f' ({100 * s:.0f}%)'):>14}")
        up = r["milp_up_only_total"]
        print(f"{r['family']:<8} " + " ".join(cells) + f" {'-' if up is None else f'{up:,.2f}':>13}")
    print("\nMILP scaling (time limit and gap target as in the JSON)")
    print(f"{'nodes':>6} {'pools':>5} {'tasks':>5} {'vars':>4} {'limit':>6} {'seconds':>8} {'gap':>7}  status")
    for r in scale_rows:
        print(f"{r['nodes']:>6} {r['pools']:>5} {r['tasks']:>5} {r['variants']:>4} {r.get('time_limit', 0):>6g} "
              f"{r['seconds']:>8.2f} {_pct(r['gap']):>7}  {r['status']}")
    if target_rows:
        print("\nTarget: 10,000 nodes, 200 pools, 8 tasks x 8 variants, limit 5 s, gap target 1% (medians)")
        print(f"{'seed':>4} {'runs':>4} {'seconds':>8} {'max s':>6} {'gap':>7} {'max gap':>7} {'$/h':>10}")
        for r in target_rows:
            print(f"{r['seed']:>4} {r['runs']:>4} {r['median_seconds']:>8.2f} {r['max_seconds']:>6.2f} "
                  f"{_pct(r['median_gap']):>7} {_pct(r['max_gap']):>7} {r['cost']:>10,.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid (about a minute)")
    ap.add_argument("--time-limit", type=float, default=5.0, help="MILP time limit for scaling runs")
    ap.add_argument("--target-seeds", default=None, help="seeds for the target case (default 0,1,2,3; quick: 0)")
    ap.add_argument("--target-runs", type=int, default=None, help="runs per seed (default 3; quick: 1)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "planner.json"))
    a = ap.parse_args(argv)
    seeds = [int(x) for x in (a.target_seeds or ("0" if a.quick else "0,1,2,3")).split(",")]
    runs = a.target_runs or (1 if a.quick else 3)
    fam_opts = PlanOptions(time_limit=20.0, gap=0.005)
    scale_opts = PlanOptions(time_limit=a.time_limit, gap=0.01)
    if a.quick:
        grid = [(10, 5, 2, 4), (1000, 50, 4, 6), (10000, 200, 8, 8)]
    else:
        grid = [(n, p, t, v) for n, p in ((10, 5), (100, 10), (1000, 50), (10000, 200))
                for t, v in ((2, 4), (4, 6), (8, 8), (12, 8)) if t <= n // 2]
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    print("scenario families ...", flush=True)
    fam = run_families(fam_opts, 1.0)
    print("scaling ...", flush=True)
    scale = run_scaling(grid, scale_opts)
    for r in scale:
        r["time_limit"] = scale_opts.time_limit
    print(f"target, seeds {seeds}, {runs} runs each ...", flush=True)
    target = run_target(seeds, runs, scale_opts)
    if not a.quick:
        print("solvers ...", flush=True)
    solvers = [] if a.quick else run_solvers()
    print_tables(fam, scale, solvers, target)
    out = {"machine": {**machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
           "quick": a.quick, "wall_seconds": time.perf_counter() - t0,
           "options": {"families": fam_opts.__dict__, "scaling": scale_opts.__dict__},
           "families": fam, "scaling": scale, "solvers": solvers,
           "target_10000_nodes_8_tasks": {"seconds_max": 5.0, "gap_max": 0.01, "seeds": target,
                                          "met": bool(target) and all(r["met"] for r in target)}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {a.out} in {out['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
