"""atoll's CPU kernels (atoll.kernels.cpu_ops) against the torch paths they replace, side by side.

    .venv/bin/python bench/cpu_ops_bench.py [--quick] [--threads 2] [--out bench/results/cpu_ops.json]

Two model shapes: SmolLM2-135M's (hidden 576, intermediate 1536, 9 heads / 3 KV heads of 64,
vocabulary 49,152) and a larger Llama's that no kernel was tuned on (hidden 2048, intermediate
8192, 32 / 8 heads of 64, as Llama-3.2-1B). For each:

- **linear**: one projection (the gate_up weight) at 1, 4, 32, 128 and 512 rows, in atoll's panel
  layout, oneDNN's packed layout and plain ``F.linear``; best of 5 timings, cache-warm.
- **weight stream**: one decode row, and a 32-row decode step, through every projection of 8
  distinct layers (weights larger than the caches, so each comes from memory), panel against
  oneDNN: GB/s of weights read at one row, GFLOP/s at 32 rows.
- **decode attention**: 1 and 32 requests with 100-290 cached tokens each in 16-token blocks,
  atoll's in-place kernel against the torch path (gather whole blocks, ``baddbmm``, softmax,
  ``bmm``).
- **LoRA**: 32 decode rows over 8 rank-16 adapters on the qkv and gate_up projections, the
  kernel (:class:`~atoll.kernels.cpu_ops.LoraStep`) against the torch backend, adapters of
  8 layers so the weights come from memory.

Prints a table and writes JSON (machine, threads, every timing). Needs an x86-64 CPU with
AVX-512F or AVX2 + FMA and a C compiler; elsewhere it says why and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
SHAPES = {
    "smollm2-135m": dict(hidden=576, inter=1536, heads=9, kv_heads=3, head_dim=64),
    "llama-1b-like": dict(hidden=2048, inter=8192, heads=32, kv_heads=8, head_dim=64),
}


def best_time(fn, reps: int = 5, min_time: float = 0.05) -> float:
    """Seconds per call: the best of ``reps`` rounds, each long enough to time."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    n = max(1, int(min_time / one))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def bench_linear(s: dict, rows: list[int], reps: int) -> list[dict]:
    from atoll.agent.runtime.weights import linear, onednn_available, pack

    g = torch.Generator().manual_seed(1)
    w = torch.randn(2 * s["inter"], s["hidden"], generator=g) * 0.02
    layouts = {"panel": pack(w, layout="panel"), "plain": w}
    if onednn_available():
        layouts["onednn"] = pack(w, layout="onednn")
    out = []
    for m in rows:
        x = torch.randn(m, s["hidden"], generator=g)
        t = {k: best_time(lambda v=v: linear(x, v), reps) for k, v in layouts.items()}
        out.append({"rows": m, "out": w.shape[0], "in": w.shape[1], "seconds": t,
                    "gflop_s": {k: 2 * m * w.numel() / v / 1e9 for k, v in t.items()}})
    return out


def bench_stream(s: dict, layers: int, reps: int) -> dict:
    from atoll.agent.runtime.weights import linear, onednn_available, pack

    h, i, q, kv = s["hidden"], s["inter"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    dims = [(q + 2 * kv, h), (h, q), (2 * i, h), (h, i)]
    g = torch.Generator().manual_seed(2)
    plain = [[torch.randn(o, k, generator=g) * 0.02 for o, k in dims] for _ in range(layers)]
    nbytes = sum(w.numel() * 4 for ly in plain for w in ly)
    res = {"weight_bytes": nbytes, "layers": layers}
    for lay in ("panel", "onednn") if onednn_available() else ("panel",):
        packed = [[pack(w, layout=lay) for w in ly] for ly in plain]
        for rows in (1, 32):
            xs = [torch.randn(rows, k, generator=g) for _, k in dims]

            def step(packed=packed, xs=xs):
                for ly in packed:
                    for w, x in zip(ly, xs):
                        linear(x, w)
            t = best_time(step, reps, min_time=0.0)
            if rows == 1:
                res[lay] = {"seconds": t, "gb_s": nbytes / t / 1e9}
            else:
                res[lay].update(seconds_32_rows=t, gflop_s_32_rows=2 * rows * (nbytes / 4) / t / 1e9)
    return res


def _torch_decode_attention(q, cache, table, lens, bs, nh, nkv, d, scale):
    """The runtime's torch path for decode rows: whole blocks gathered, masked, one baddbmm."""
    b, nb = table.shape
    span = nb * bs
    mask = torch.zeros(b, span)
    mask.masked_fill_(torch.arange(span)[None, :] >= lens[:, None], float("-inf"))
    mask = mask.view(b, 1, span).repeat(nkv, 1, 1)
    kvb = cache.view(2 * nkv, -1, bs * d).index_select(1, table.flatten()).view(2, nkv * b, span, d)
    g = nh // nkv
    qh = q[:, :nh * d].reshape(b, nkv, g, d).transpose(0, 1).reshape(nkv * b, g, d)
    probs = torch.softmax(torch.baddbmm(mask, qh, kvb[0].transpose(1, 2), alpha=scale), dim=-1)
    return torch.bmm(probs, kvb[1]).view(nkv, b, g, d).transpose(0, 1).reshape(b, nh * d)


def bench_attention(s: dict, batches: list[int], reps: int) -> list[dict]:
    from atoll.kernels import cpu_ops

    nh, nkv, d, bs = s["heads"], s["kv_heads"], s["head_dim"], 16
    out = []
    for b in batches:
        g = torch.Generator().manual_seed(3 + b)
        lens = torch.randint(100, 291, (b,), generator=g)
        nb = -(-int(lens.max()) // bs)
        blocks = b * nb + 4
        cache = torch.randn(2, nkv, blocks * bs, d, generator=g)
        table = torch.randperm(blocks, generator=g)[: b * nb].view(b, nb)
        q = torch.randn(b, (nh + 2 * nkv) * d, generator=g)
        att = cpu_ops.DecodeAttention(table, lens, num_blocks=blocks, block_size=bs, num_heads=nh,
                                      num_kv_heads=nkv, head_dim=d)
        scale = d ** -0.5
        diff = (att(q, cache, scale=scale) - _torch_decode_attention(q, cache, table, lens, bs, nh, nkv, d, scale))
        t = {"kernel": best_time(lambda: att(q, cache, scale=scale), reps),
             "torch": best_time(lambda: _torch_decode_attention(q, cache, table, lens, bs, nh, nkv, d, scale), reps)}
        out.append({"requests": b, "cached_tokens": int(lens.sum()), "seconds": t,
                    "max_abs_diff": float(diff.abs().max())})
    return out


def bench_lora(s: dict, layers: int, reps: int) -> list[dict]:
    from atoll.kernels import cpu_ops
    from atoll.kernels.lora import LoraMeta, lora_apply, plan_step

    rows, n_ad, r = 32, 8, 16
    slots = torch.tensor([i % n_ad for i in range(rows)], dtype=torch.int32)
    meta = LoraMeta.build(slots)
    plan = plan_step(meta, backend="torch")
    step = cpu_ops.LoraStep(slots, n_ad + 1)
    h, i, q, kv = s["hidden"], s["inter"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    g = torch.Generator().manual_seed(4)
    scales = torch.rand(n_ad + 1, generator=g)
    out = []
    for name, offs in (("qkv", (0, q, q + kv, q + 2 * kv)), ("gate_up", (0, i, 2 * i))):
        n, hout = len(offs) - 1, offs[-1]
        ab = [(torch.randn(n_ad + 1, n, r, h, generator=g) * 0.05, torch.randn(n_ad + 1, hout, r, generator=g) * 0.05)
              for _ in range(layers)]
        bts = [cpu_ops.lora_panels(b, offs) for _, b in ab]
        x = torch.randn(rows, h, generator=g)
        y = torch.randn(rows, hout, generator=g)

        def kernel():
            for (a, _), bt in zip(ab, bts):
                step(y, x, a, bt, scales, offs)

        def torch_path():
            for a, b in ab:
                lora_apply(y, x, a, b, scales, meta, offs, backend="torch", plan=plan)
        y1, y2 = y.clone(), y.clone()
        step(y1, x, ab[0][0], bts[0], scales, offs)
        lora_apply(y2, x, ab[0][0], ab[0][1], scales, meta, offs, backend="torch", plan=plan)
        t = {"kernel": best_time(kernel, reps, min_time=0.0) / layers,
             "torch": best_time(torch_path, reps, min_time=0.0) / layers}
        out.append({"projection": name, "rows": rows, "adapters": n_ad, "rank": r, "seconds_per_layer": t,
                    "max_abs_diff": float((y1 - y2).abs().max())})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows, layers and repetitions (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the kernels use as many)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_ops.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from atoll.kernels import cpu_ops

    if not cpu_ops.available():
        print(f"atoll's CPU kernels are unavailable here: {cpu_ops.why_not()}", file=sys.stderr)
        return 2
    reps = 2 if args.quick else 5
    rows = [1, 32] if args.quick else [1, 4, 32, 128, 512]
    layers = 2 if args.quick else 8
    shapes = {"smollm2-135m": SHAPES["smollm2-135m"]} if args.quick else SHAPES
    results = {}
    for name, s in shapes.items():
        results[name] = {"shape": s, "linear": bench_linear(s, rows, reps), "stream": bench_stream(s, layers, reps),
                         "attention": bench_attention(s, [1, 32], reps), "lora": bench_lora(s, layers, reps)}
    print(f"machine: {cpu_ops.cpu_model()}, {os.cpu_count()} cores, {args.threads} threads, kernels built for "
          f"{cpu_ops.isa()}, load average {os.getloadavg()[0]:.1f}")
    for name, r in results.items():
        print(f"\n{name}")
        print(f"  {'linear (gate_up)':24} {'rows':>5} " + " ".join(f"{k:>14}" for k in r["linear"][0]["seconds"]))
        for row in r["linear"]:
            print(f"  {'':24} {row['rows']:5} " + " ".join(f"{v * 1e6:11.0f} us" for v in row["seconds"].values()))
        st = r["stream"]
        print(f"  weight stream, 1 row, {st['layers']} layers: " +
              ", ".join(f"{k} {v['gb_s']:.1f} GB/s" for k, v in st.items() if isinstance(v, dict)))
        print(f"  weight stream, 32 rows, {st['layers']} layers: " +
              ", ".join(f"{k} {v['gflop_s_32_rows']:.1f} GFLOP/s" for k, v in st.items() if isinstance(v, dict)))
        for row in r["attention"]:
            t = row["seconds"]
            print(f"  decode attention, {row['requests']:2} requests: kernel {t['kernel'] * 1e6:.0f} us, torch "
                  f"{t['torch'] * 1e6:.0f} us ({t['torch'] / t['kernel']:.1f}x), max |diff| {row['max_abs_diff']:.1e}")
        for row in r["lora"]:
            t = row["seconds_per_layer"]
            print(f"  LoRA {row['projection']:8} 32 rows / 8 adapters: kernel {t['kernel'] * 1e6:.0f} us, torch "
                  f"{t['torch'] * 1e6:.0f} us ({t['torch'] / t['kernel']:.1f}x), max |diff| {row['max_abs_diff']:.1e}")
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "machine": {"cpu": cpu_ops.cpu_model(), "cores": os.cpu_count(), "kernel_isa": cpu_ops.isa(),
                       "threads": args.threads, "torch": torch.__version__, "load_avg": os.getloadavg()},
           "quick": args.quick, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
