"""Autoscaler replay: the coordinator's own decision function (``coordinator/scaling.py: decide``)
driven by the elasticity benchmark's traces through a queueing model of its simulated fleet, in
seconds instead of hours. For comparing autoscaling settings over many traces and seeds before
confirming the chosen one with ``bench/elasticity_bench.py`` (which runs the real coordinator,
planner, data plane and simulated hosts over gRPC, and is the measurement that counts).

The model (one discrete-event simulation per trace and seed, no processes, no network):

- arrivals and completion lengths: the trace's own (``bench/elasticity_traces.py``), same seeds;
- replicas: the benchmark's renters (RTX 4090 class, cheapest first, ``elasticity_bench.fleet``),
  each serving at most ``CONCURRENCY`` requests at once with the simulated hosts' batch-aware
  service time (``sim_agent.service_time`` / speed) times ``--slowdown`` (the real run's CPU
  contention and RPC overhead; 1.2 puts the model's p99 latency near the measured one);
  with ``--queues shared`` a request waits in one FIFO queue for the least-loaded ready replica
  (an ideal router: every free place in any batch takes the oldest request); with
  ``--queues replica`` (the default), as in the benchmark, each arrival is routed at once to the
  less loaded of two ready replicas drawn at random and waits in that replica's queue, and a
  request that has waited ``HEDGE_S`` may move to a replica with a free place and no queue
  (the entries' hedged calls, ``agent/dataplane/hedge.py``), within a token bucket like an
  entry's; replicas started for a rise take only new arrivals and those moves;
- a decision every ``PASS_S`` from the same ``Sample`` fields the coordinator measures (arrivals
  over the long window, the last ρ, the ρ before it and the last pass; work per request;
  queued and in-flight requests; ready and planned replicas; ρ = the median of the last 8
  starts + one pass); a planned rate becomes ⌈rate / declared rate per replica⌉ replicas,
  each starting after a cold start drawn from the simulated hosts' range (1.0-2.5 s); a scale
  in removes starting replicas first, then the dearest;
- cost: the plan's $/h integrated over the trace (replicas count from the moment they are
  planned, as the benchmark's scraped plan cost does); static-peak: the cheapest replicas
  whose declared rate covers the trace's peak of work; the oracle (per trace, for scale): the
  cheapest replicas covering the rate of work at every instant, started at once.

What it leaves out: the planner (prices and placements beyond "cheapest renters first"),
storms, the entries' preference for their own host, load reports' staleness, heartbeat timing.
Its figures rank settings; they are not the benchmark's figures.

    .venv/bin/python bench/autoscaler_replay.py            # the defaults and the earlier ones, 16 traces x 6
    .venv/bin/python bench/autoscaler_replay.py --policy '{"noise_z": 2}' --policy '{}'   # side by side

The earlier defaults (before 2026-12-07) were ``noise_z`` 2, a trend forecast of at most +25%,
a floor half-life of 4ρ, a scale-down delay of ρ, a 10% band below the plan and no one-second
window; the replay takes ρ
as 2.75 s for them (the median of the simulated cold starts plus one pass). The rule that a
plan still starting is not scaled in applies to both.

Writes bench/results/autoscaler_replay.json and prints one row per setting (worst case over
traces, misses summed over seeds) and the per-trace figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import elasticity_bench as EB  # noqa: E402
import elasticity_traces as T  # noqa: E402
from sim_agent import declared_rps, service_time  # noqa: E402

from atoll.coordinator import scaling as S  # noqa: E402
from atoll.coordinator.autoscaler import REACTION_SAMPLES, arrival_signals  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPLAY_SUITE = "diurnal:11,23,31,32,33,34,35,36,37,38;spikes:1,2,3,4,5;week:1"
COLD_START = (1.0, 2.5)           # the simulated hosts' range (elasticity_bench: SimHost cold_start)
HEDGE_S = 0.5                     # per-replica queues: a request waiting this long may move to a replica with a free slot
BUDGET_SHARE, BUDGET_CAP = 0.1, 10.0   # ... within a bucket of moves, as an entry's hedges are (agent/dataplane/hedge.py)


class Fleet:
    """The benchmark's renters: price, speed and declared rate per replica."""

    def __init__(self):
        hosts = [h for h in EB.fleet(quick=False) if h["tier"] == "renter"]
        self.prices = sorted(h["price"] for h in hosts)
        self.speed = EB.HW["rtx4090"][0]
        self.mu = declared_rps(self.speed, EB.K_DECLARED)

    def replicas_for(self, rate: float) -> int:
        return max(1, min(len(self.prices), math.ceil(rate / self.mu - 1e-9)))

    def static_cost(self, tr: dict) -> float:
        peak = max(tr["peak_rps"], tr["peak_work_rps_at_64_tokens"])
        return sum(self.prices[:self.replicas_for(peak)])

    def oracle_cost(self, tr: dict, points: int = 6000) -> float:
        """$/h of an autoscaler that knows the rate of work at every instant and starts replicas
        at once: the cheapest replicas whose declared rate covers it, averaged over the trace."""
        step = tr["duration_s"] / points
        return sum(sum(self.prices[:self.replicas_for(T.rate(tr, i * step) * T.work_mix(tr, i * step))])
                   for i in range(points)) / points


def replay(tr: dict, policy: S.Policy, fleet: Fleet, seed: int, slowdown: float, queues: str = "replica",
           hedge_s: float = HEDGE_S) -> dict:
    """One trace under one setting; ``seed`` draws the cold starts (and, with per-replica queues,
    the routing's two choices). ``queues``: ``shared`` (one FIFO for every ready replica) or
    ``replica`` (see the module docstring)."""
    times = T.arrivals(tr)
    tokens = T.request_tokens(tr, times)
    rng = random.Random(seed)
    end = tr["duration_s"]
    ev: list = [(t, 1, "arrive", i) for i, t in enumerate(times)]
    heapq.heapify(ev)
    reps: list[dict] = []
    serial = 0

    def resize(n: int, now: float) -> None:
        nonlocal serial
        if n > len(reps):
            taken = sorted(r["price"] for r in reps)
            free = list(fleet.prices)
            for p in taken:
                free.remove(p)
            for p in free[:n - len(reps)]:
                serial += 1
                cold = rng.uniform(*COLD_START)
                r = {"id": serial, "price": p, "ready_at": now + cold, "cold": cold, "busy": 0, "q": []}
                reps.append(r)
                heapq.heappush(ev, (now + cold, 0, "ready", r))
        elif n < len(reps):
            reps.sort(key=lambda r: (r["ready_at"] <= now, -r["price"]))      # starting, then dearest
            gone = reps[:len(reps) - n]
            del reps[:len(reps) - n]
            for r in gone:                        # a drained replica's waiting requests are re-routed
                waiting, r["q"] = r["q"], []
                for i, _ in waiting:
                    route(i, now)

    base = max(tr["mean_rps"], 1e-3)
    plan_rate = 2 * fleet.mu * 0.85                                  # the benchmark's first plan: 2 replicas
    resize(fleet.replicas_for(plan_rate), 0.0)
    for r in reps:
        r["ready_at"] = 0.0
    queue: list[int] = []
    seen: list[float] = []
    starts: list[float] = []
    in_flight, work, misses = 0, None, 0
    state = S.State()
    cost, last = 0.0, 0.0
    latencies: list[float] = []
    heapq.heappush(ev, (S.PASS_S, 2, "pass", None))

    budget = [BUDGET_CAP]

    def route(i: int, now: float) -> None:
        """Per-replica queues: the less loaded of two ready replicas drawn at random."""
        if queues == "shared":
            queue.append(i)
            return
        ready = [r for r in reps if r["ready_at"] <= now] or reps
        two = rng.sample(ready, min(2, len(ready)))
        r = min(two, key=lambda x: x["busy"] + len(x["q"]))
        r["q"].append((i, now))

    def start(r: dict, i: int, now: float) -> None:
        r["busy"] += 1
        svc = service_time(r["busy"], tokens[i]) / fleet.speed * slowdown
        heapq.heappush(ev, (now + svc, 0, "done", (i, r)))

    def dispatch(now: float) -> None:
        if queues != "shared":
            ready = [r for r in reps if r["ready_at"] <= now]
            for r in ready:
                while r["q"] and r["busy"] < EB.CONCURRENCY:
                    start(r, r["q"].pop(0)[0], now)
            # a hedge: a replica with a free place and no queue takes the oldest request that has
            # waited hedge_s elsewhere
            for r in ready:
                while r["busy"] < EB.CONCURRENCY and not r["q"] and budget[0] >= 1.0:
                    waiting = [(x["q"][0][1], x) for x in ready if x["q"] and now - x["q"][0][1] >= hedge_s]
                    if not waiting:
                        break
                    _, x = min(waiting, key=lambda w: w[0])
                    budget[0] -= 1.0
                    start(r, x["q"].pop(0)[0], now)
            return
        while queue:
            free = [r for r in reps if r["ready_at"] <= now and r["busy"] < EB.CONCURRENCY]
            if not free:
                return
            r = min(free, key=lambda x: x["busy"])
            i = queue.pop(0)
            r["busy"] += 1
            svc = service_time(r["busy"], tokens[i]) / fleet.speed * slowdown
            heapq.heappush(ev, (now + svc, 0, "done", (i, r)))

    while ev:
        t, _, kind, x = heapq.heappop(ev)
        cost += sum(r["price"] for r in reps) * (min(t, end) - min(last, end))
        last = t
        if kind == "arrive":
            seen.append(t)
            in_flight += 1
            budget[0] = min(BUDGET_CAP, budget[0] + BUDGET_SHARE)
            route(x, t)
        elif kind == "done":
            i, r = x
            r["busy"] -= 1
            in_flight -= 1
            latency = t - times[i]
            latencies.append(latency)
            misses += latency > EB.slo_for(tokens[i])
            w = tokens[i] / T.NEW_TOKENS
            work = w if work is None else work + (w - work) / 16
        elif kind == "ready":
            if any(r is x for r in reps):
                starts.append(x["cold"])
        elif kind == "pass":
            if t < end:
                heapq.heappush(ev, (t + S.PASS_S, 2, "pass", None))
            rho = (statistics.median(starts[-REACTION_SAMPLES:]) if starts else S.REACTION_DEFAULT_S) + S.PASS_S
            sample = S.Sample(now=t, **arrival_signals(seen, t, rho), work_per_request=work or 1.0,
                              queued=float(len(queue) + sum(len(r["q"]) for r in reps)),
                              in_flight=float(in_flight),
                              ready_replicas=sum(1 for r in reps if r["ready_at"] <= t),
                              planned_replicas=len(reps), last_request_at=t, reaction_s=rho)
            d = S.decide(policy, sample, plan_rate, 0.05 * base, state)
            state = d.state
            if d.action == "scale":
                plan_rate = d.rate
                resize(fleet.replicas_for(plan_rate), t)
        dispatch(t)
    latencies.sort()
    return {"cost_per_hour": cost / end, "requests": len(times), "misses": misses,
            "p99_s": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None}


EARLIER = ('{"noise_z": 2.0, "forecast_cap": 0.25, "peak_half_life": 11.0, "scale_down_delay": 2.75, '
           '"last_pass_window": false, "down_band": 0.1}')   # the defaults before 2026-12-07 (rho taken as 2.75 s)


def evaluate(policy_json: str, traces: list[tuple[str, int]], seeds: int, slowdown: float, fleet: Fleet,
             queues: str = "replica") -> dict:
    """``policy_json``: Policy fields, and two of the module's constants as the earlier defaults
    had them: ``"last_pass_window": false`` leaves out the one-second window, ``"down_band"``
    replaces ``DOWN_BAND``."""
    fields = json.loads(policy_json)
    window = fields.pop("last_pass_window", True)
    band = fields.pop("down_band", S.DOWN_BAND)
    policy = S.Policy(**fields)
    extra, saved_band = S.LAST_PASS_EXTRA_Z, S.DOWN_BAND
    rows = {}
    for shape, seed in traces:
        tr = T.make(shape, seed, EB.DAY_S[False][shape], EB.PEAK_DAY[False])
        S.LAST_PASS_EXTRA_Z, S.DOWN_BAND = (extra if window else math.inf), band
        try:
            runs = [replay(tr, policy, fleet, k, slowdown, queues) for k in range(seeds)]
        finally:
            S.LAST_PASS_EXTRA_Z, S.DOWN_BAND = extra, saved_band
        static = fleet.static_cost(tr)
        cost = statistics.mean(r["cost_per_hour"] for r in runs)
        rows[f"{shape}-{seed}"] = {
            "cheaper_than_static": round(1 - cost / static, 4),
            "slo_share_mean": round(1 - sum(r["misses"] for r in runs) / sum(r["requests"] for r in runs), 5),
            "slo_share_min": round(min(1 - r["misses"] / r["requests"] for r in runs), 5),
            "misses": [r["misses"] for r in runs], "static_cost_per_hour": round(static, 3),
            "oracle_cheaper_than_static": round(1 - fleet.oracle_cost(tr) / static, 4),
            "mean_cost_per_hour": round(cost, 4)}
    return {"policy": json.loads(policy_json),
            "worst_cheaper": min(r["cheaper_than_static"] for r in rows.values()),
            "worst_slo_share_mean": min(r["slo_share_mean"] for r in rows.values()),
            "misses": sum(sum(r["misses"]) for r in rows.values()), "traces": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", action="append", default=None, metavar="JSON",
                    help="an autoscaling block's fields (coordinator.scaling.Policy); repeat to compare "
                         "(default: the defaults, {}, and the earlier defaults)")
    ap.add_argument("--traces", default=REPLAY_SUITE, help='e.g. "diurnal:11,23;spikes:1"')
    ap.add_argument("--seeds", type=int, default=6, help="cold-start draws per trace")
    ap.add_argument("--slowdown", type=float, default=1.2, help="service time multiplier (see the docstring)")
    ap.add_argument("--queues", choices=("shared", "replica"), default="replica",
                    help="shared: one FIFO for every ready replica; replica: each replica its own, as in the "
                         "benchmark (see the docstring)")
    ap.add_argument("--out", default=str(RESULTS / "autoscaler_replay.json"))
    args = ap.parse_args()
    policies = args.policy or ["{}", EARLIER]
    traces = T.parse(args.traces)
    fleet = Fleet()
    t0 = time.perf_counter()
    out = {"command": "python " + " ".join(sys.argv), "machine": {"platform": platform.platform(),
           "python": platform.python_version()}, "seeds": args.seeds, "slowdown": args.slowdown,
           "queues": args.queues,
           "declared_rps_per_replica": round(fleet.mu, 3), "results": []}
    print(f"{'setting':58s} {'worst cheaper':>13s} {'worst SLO':>10s} {'misses':>7s}")
    for p in policies:
        res = evaluate(p, traces, args.seeds, args.slowdown, fleet, args.queues)
        out["results"].append(res)
        print(f"{p:58s} {res['worst_cheaper']:13.3f} {res['worst_slo_share_mean']:10.4f} {res['misses']:7d}", flush=True)
    first = out["results"][0]["traces"]
    print("\nthe oracle, cheaper than static-peak: " + "  ".join(f"{k} {v['oracle_cheaper_than_static']:.3f}"
                                                          for k, v in first.items()))
    for res in out["results"]:
        print(f"\n{json.dumps(res['policy'])}: per trace (cheaper than static-peak, SLO share over {args.seeds} seeds)")
        print("  " + "  ".join(f"{k} {v['cheaper_than_static']:.3f}/{v['slo_share_mean']:.4f}"
                               for k, v in res["traces"].items()))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out} in {out['wall_s']} s")


if __name__ == "__main__":
    main()
