"""Request traces for the elasticity benchmark: the rate over time, each request's arrival time and
completion length, for three shapes, each deterministic for its seed.

- ``diurnal``: one compressed day. A night trough at 03:00 of ``trough`` x the daytime peak and a
  raised-cosine day peaking at 15:00 (sharpened with a power 1.5, so the working day is a
  plateau), plus four seeded Gaussian bursts (08:00-21:00, +25-50% of the daytime peak, sigma
  0.2-0.5 h). The day/night swing with short spikes on top is the shape of the Azure LLM
  inference traces (2023 trace released with Splitwise, Patel et al., ISCA 2024; week-long 2024
  trace analysed in DynamoLLM, Stojkovic et al., HPCA 2025) and of the Azure Functions 2019 trace
  (Shahrad et al., "Serverless in the Wild", ATC 2020); the parameters are ours.
- ``spikes``: one compressed day at a flat half of the daytime peak with three rare, large spikes
  (+60-100% of the daytime peak, i.e. 2.2-3x the flat load, sigma 0.25-0.5 h) at seeded hours,
  and a constant request mix: the load of a steady service hit by unannounced events.
- ``week``: seven compressed days, each diurnal with two seeded bursts, under a weekly envelope
  that ramps up to Friday and down over the weekend (daily peaks 0.45, 0.6, 0.75, 0.9, 1.0,
  0.65, 0.4 of the daytime peak): a launch week, compressed.

The request mix (:func:`work_mix`): a request's completion length is 64 tokens x a daily curve x
uniform(0.8, 1.2); the curve is 1 except for a late-morning stretch of long answers (Gaussian
around 11:00, sigma 2 h, up to 1.6x), as production LLM traces shift their length mix with the
hour (Splitwise's coding vs conversation workloads differ about tenfold in output length;
DynamoLLM finds the Azure week's mix shifting by the hour). The curve's numbers are ours.
"""

from __future__ import annotations

import math
import random

NEW_TOKENS = 64                       # the completion length the plan's throughput profile assumes
MIX = {"hour": 11.0, "height": 0.6, "width_h": 2.0}
WEEK_ENVELOPE = (0.45, 0.6, 0.75, 0.9, 1.0, 0.65, 0.4)
SHAPES = ("diurnal", "spikes", "week")
GRID = 2000                           # points per day where peaks and means are taken


def rate(tr: dict, t: float) -> float:
    """Requests/s at ``t`` seconds into the trace."""
    h_abs = 24.0 * t / tr["day_s"]
    day, h = int(h_abs // 24), h_abs % 24
    if tr["shape"] == "spikes":
        r = tr["flat"]
    else:
        x = 0.5 - 0.5 * math.cos(2 * math.pi * (h - 3.0) / 24.0)
        r = (tr["trough_share"] + (1 - tr["trough_share"]) * x ** 1.5) * tr["envelope"][min(day, len(tr["envelope"]) - 1)]
    for bh, height, width in tr["bursts"]:
        r += height * math.exp(-0.5 * ((h_abs - bh) / width) ** 2)
    return tr["peak_day_rps"] * r


def work_mix(tr: dict, t: float) -> float:
    """Mean completion length at ``t``, as a multiple of the 64 tokens the plan's profile assumes."""
    mix = tr["mix"]
    h = (24.0 * t / tr["day_s"]) % 24
    return 1.0 + mix["height"] * math.exp(-0.5 * ((h - mix["hour"]) / mix["width_h"]) ** 2)


def make(shape: str, seed: int, day_s: float, peak_day: float, *, constant_mix: bool = False) -> dict:
    """The trace ``shape`` for ``seed``: its parameters and the figures taken from them."""
    if shape not in SHAPES:
        raise ValueError(f"unknown trace shape {shape!r}; one of {', '.join(SHAPES)}")
    rng = random.Random(seed)
    days = 7 if shape == "week" else 1
    tr = {"shape": shape, "seed": seed, "day_s": day_s, "days": days, "duration_s": days * day_s,
          "peak_day_rps": peak_day, "trough_share": 0.25, "flat": 0.5, "envelope": [1.0],
          "mix": dict(MIX)}
    if shape == "diurnal":
        tr["bursts"] = sorted((round(rng.uniform(8, 21), 2), round(rng.uniform(0.25, 0.5), 3),
                               round(rng.uniform(0.2, 0.5), 3)) for _ in range(4))
    elif shape == "spikes":
        tr["bursts"] = sorted((round(rng.uniform(2, 22), 2), round(rng.uniform(0.6, 1.0), 3),
                               round(rng.uniform(0.25, 0.5), 3)) for _ in range(3))
        tr["mix"]["height"] = 0.0
    else:
        tr["envelope"] = list(WEEK_ENVELOPE)
        tr["bursts"] = sorted((round(24 * d + rng.uniform(8, 21), 2), round(rng.uniform(0.2, 0.4) * WEEK_ENVELOPE[d], 3),
                               round(rng.uniform(0.2, 0.5), 3)) for d in range(7) for _ in range(2))
    if constant_mix:
        tr["mix"]["height"] = 0.0
    n = GRID * days
    step = tr["duration_s"] / n
    rates = [rate(tr, i * step) for i in range(n)]
    works = [r * work_mix(tr, i * step) for i, r in enumerate(rates)]
    busiest = max(range(n), key=lambda i: rates[i])
    tr.update(peak_rps=round(max(rates), 3), mean_rps=round(sum(rates) / n, 3), busiest_s=round(busiest * step, 2),
              peak_work_rps_at_64_tokens=round(max(works), 3))
    return tr


def arrivals(tr: dict) -> list[float]:
    """Poisson arrival times (thinning), deterministic for the seed."""
    rng = random.Random(tr["seed"] + 1000)
    out, t, lam_max = [], 0.0, tr["peak_rps"] * 1.01
    while True:
        t += rng.expovariate(lam_max)
        if t >= tr["duration_s"]:
            return out
        if rng.random() * lam_max <= rate(tr, t):
            out.append(t)


def request_tokens(tr: dict, times: list[float]) -> list[int]:
    """Each request's completion budget: 64 x the mix at its send time x uniform(0.8, 1.2)."""
    rng = random.Random(tr["seed"] + 2000)
    return [max(8, round(NEW_TOKENS * work_mix(tr, t) * rng.uniform(0.8, 1.2))) for t in times]


def parse(spec: str) -> list[tuple[str, int]]:
    """``"diurnal:11,23;spikes:1"`` -> [("diurnal", 11), ("diurnal", 23), ("spikes", 1)]."""
    out = []
    for part in spec.replace(" ", "").split(";"):
        if not part:
            continue
        shape, _, seeds = part.partition(":")
        if shape not in SHAPES or not seeds:
            raise ValueError(f"bad trace list {part!r}: write SHAPE:SEED[,SEED...] with SHAPE one of {SHAPES}")
        out += [(shape, int(s)) for s in seeds.split(",") if s]
    return out
