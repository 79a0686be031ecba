"""Planning problems for the planner benchmark and tests: three scenario families (vision, RAG,
a large fleet), random chains (``scaling_problem``) and geo-distributed DAGs with a fan-out and a
join (``dag_problem``).

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

import random
from dataclasses import replace

from atoll.planner.api import Edge, Network, PlanProblem, Pool, Source, Task, Variant

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
MBPS = 0.008                                   # Mbit/s per KB/s


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


def _profile(rng, acc: float) -> tuple:
    """A concave, non-decreasing accuracy profile reaching ``acc`` on clean input."""
    y0 = rng.uniform(0.15, 0.35) * acc
    y1 = rng.uniform(0.75, 0.9) * acc
    y1 = max(y1, (y0 + acc) / 2 + 1e-3)               # concave: the middle above the chord
    return ((0.0, round(y0, 4)), (0.5, round(y1, 4)), (1.0, round(acc, 4)))


def dag_problem(nodes: int, seed: int = 0, load: float = 0.35) -> PlanProblem:
    """A geo-distributed DAG with a fan-out and a join. Cameras at the edge of four regions feed
    ``detect``; three branches (``classify``, ``ocr``, ``embed``) run on every detection; ``fuse``
    joins the three; ``answer`` writes the result. 27 variants; ``fuse`` and ``answer`` are LoRA
    adapters on shared LLM bases, ``classify`` and ``embed`` share a vision backbone; every variant
    has an explicit (concave) accuracy profile; transfer priced per region and tier pair, and the
    edge uplinks of two regions capped. The fleet has ``nodes`` nodes in about nodes/33 pools
    (8 to 200); the load fills about ``load`` of it with middle variants."""
    rng = random.Random(1000 + seed)
    regions = list(REGION_PRICE)
    classes = list(HARDWARE)
    n_pools = max(8, min(200, nodes // 33))
    pools, left = [], nodes
    for i in range(n_pools):
        hw = classes[i % len(classes)] if i < len(classes) else rng.choice(classes)
        share = left // (n_pools - i) if i < n_pools - 1 else left
        count = max(1, min(int(share * rng.uniform(0.6, 1.4)), left - (n_pools - i - 1)))
        if i == n_pools - 1:
            count = max(1, left)
        left -= count
        pools.append(pool(f"pool{i:03d}-{hw}", hw, regions[i % len(regions)], count, rng))
    vision_hw = [h for h in classes if HARDWARE[h][4] >= 8]
    llm_hw = [h for h in classes if HARDWARE[h][4] >= 24]

    def variants(task, specs, group=None):
        out = []
        for j, (speed, acc, mem) in enumerate(specs):
            acc = round(acc - rng.uniform(0, 0.01), 4)
            hw = vision_hw if mem < 20 else llm_hw
            kw = {}
            if group is not None and j < len(group):
                kw = dict(group=group[j], adapter=f"{task}-lora", adapter_memory_gb=0.25)
            out.append(Variant(f"{task}-v{j}", acc, rps(speed * rng.uniform(0.85, 1.15), hw),
                               memory_gb=mem, profile=_profile(rng, acc), **kw))
        return tuple(out)

    spec = {  # task: [(T4 req/s, accuracy, memory GB)], shared groups for the first variants
        "detect": ([(680, 0.90, 1), (376, 0.94, 1.5), (171, 0.97, 2), (110, 0.985, 3), (70, 0.995, 4)], None),
        "classify": ([(2500, 0.93, 4), (1400, 0.96, 5), (800, 0.98, 6), (400, 0.995, 8)],
                     ["vit-b@fp16", "vit-l@fp16"]),
        "ocr": ([(900, 0.92, 2), (500, 0.96, 3), (250, 0.98, 4), (120, 0.995, 6)], None),
        "embed": ([(3000, 0.94, 4), (1600, 0.97, 5), (900, 0.985, 6), (500, 0.99, 7), (300, 0.997, 8)],
                  ["vit-b@fp16", "vit-l@fp16"]),
        "fuse": ([(60, 0.95, 22), (35, 0.975, 22), (16, 0.99, 40), (9, 0.997, 60)],
                 ["llm-8b@int4", "llm-8b@fp16"]),
        "answer": ([(40, 0.93, 22), (22, 0.96, 22), (10, 0.985, 40), (6, 0.993, 60), (3.5, 0.998, 70)],
                   ["llm-8b@int4", "llm-8b@fp16"]),
    }
    vs = {t: variants(t, sp, grp) for t, (sp, grp) in spec.items()}
    parents = {"detect": None, "classify": ["detect"], "ocr": ["detect"], "embed": ["detect"],
               "fuse": ["classify", "ocr", "embed"], "answer": ["fuse"]}
    ratio = {("detect", "classify"): 2.0, ("detect", "ocr"): 1.0, ("detect", "embed"): 2.0,
             ("classify", "fuse"): 0.5, ("ocr", "fuse"): 1.0, ("embed", "fuse"): 0.5, ("fuse", "answer"): 0.2}
    # per request of detect, what each task must serve
    mult = {"detect": 1.0}
    for t in ("classify", "ocr", "embed", "fuse", "answer"):
        mult[t] = min(mult[p] * ratio[(p, t)] for p in parents[t])
    fleet_rate = {t: sum(p.count * v[len(v) // 2].rps.get(p.hardware, 0) for p in pools) for t, v in vs.items()}
    total = load / sum(mult[t] / fleet_rate[t] for t in vs)
    weights = [rng.uniform(0.5, 1.5) for _ in regions]
    sources = tuple(Source(f"cams-{r}", round(total * w / sum(weights), 2), (r, "edge"))
                    for r, w in zip(regions, weights))
    src_total = sum(s.rate for s in sources)
    rate = {t: src_total * mult[t] for t in vs}
    tasks = tuple(Task(t, rate[t], vs[t], tuple(s.name for s in sources) if parents[t] is None else tuple(parents[t]))
                  for t in vs)
    size = {("detect", "classify"): 20.0, ("detect", "ocr"): 30.0, ("detect", "embed"): 20.0,
            ("classify", "fuse"): 1.0, ("ocr", "fuse"): 2.0, ("embed", "fuse"): 3.0, ("fuse", "answer"): 4.0}
    edges = [Edge(s.name, "detect", s.rate, 200.0) for s in sources]
    for (a, b), kb in size.items():
        sizes = (((f"{a}-v0", None, kb * 0.5), (f"{a}-v1", None, kb * 0.75)) if a == "detect" else ())
        edges.append(Edge(a, b, rate[b], kb, sizes))
    # two regions' edge uplinks capped at about 60% of what shipping every frame away would take
    capped = {r: 0.6 * s.rate * 200.0 * MBPS for r, s in zip(regions, sources) if r in regions[:2]}
    net = network(regions)
    links = tuple((a, b, price, capped.get(a[0]) if a[1] == "edge" and cap is None and a[0] in capped else cap)
                  for a, b, price, cap in net.links)
    pb = PlanProblem(name=f"dag-{nodes}-s{seed}", sources=sources, tasks=tasks, edges=tuple(edges),
                     pools=tuple(pools), network=replace(net, links=links), accuracy_model="profile")
    mid = {t.name: t.variants[len(t.variants) // 2].name for t in tasks}
    return replace(pb, min_accuracy=round(0.99 * pb.accuracy_of(mid), 4))


def fleet(scale: float = 1.0) -> PlanProblem:
    """A large mixed fleet: 3,000 nodes in 60 pools, a 5-task workflow with 6 variants each."""
    return scaling_problem(int(3000 * scale), max(12, int(60 * min(1.0, scale))), 5, 6, seed=7)


SCENARIOS = {"vision": vision, "rag": rag, "fleet": fleet}
