"""Elasticity: request traces (a compressed day, a flat day with spikes, a compressed week) through
the real coordinator, autoscaler and planner, against simulated hosts (``bench/sim_agent.py``).

For each trace and each policy, a fresh ``atoll coordinator`` process (heartbeat interval 1 s) and
a fresh simulated fleet (real registration, heartbeats and Worker gRPC servers on loopback) serve
the same seeded requests through the coordinator's ``Invoke`` (router, retries and all):

- ``atoll``:       ``autoscaling: {}`` (every default);
- ``static-peak``: no autoscaling block, the source rate set to the trace's peak of work (rate x
  the mean completion length, in 64-token requests);
- ``rate-only``:   ``autoscaling: {metric: rate_only}``, a reactive requests/s autoscaler;
- ``atoll-storm``: ``atoll``, and on the ramp into the busiest hour 30% of the renters (those
  serving first) are killed within one second (heartbeats stop, Worker servers vanish
  mid-request).

The traces are in ``bench/elasticity_traces.py``. Requests ask for their own completion lengths
(``max_tokens``; the simulated hosts' service time follows it) around a mean that changes through
the day. The latency SLO is normalised by length, as LLM serving papers report it (Orca, vLLM:
latency per output token): a request of ``n`` tokens is within the SLO when it ends within
``SLO_S * n / 64`` seconds.

Cost = the time integral of ``atoll_plan_cost_dollars_per_hour`` (scraped from /metrics every
second), per compressed day (mean $/h x 24 h). SLO share = requests answered within their SLO /
all requests sent (failures count as misses).

    .venv/bin/python bench/elasticity_bench.py --suite          # every trace below, ~2.5 h on 2 cores
    .venv/bin/python bench/elasticity_bench.py --suite --quick  # 3 traces, 9 hosts, 40 s days, ~12 min
    .venv/bin/python bench/elasticity_bench.py --traces "diurnal:11"   # one trace, ~11 min

Writes bench/results/elasticity.json (``elasticity_quick.json`` with ``--quick``), one PNG per
trace beside it, and prints a table per trace and the worst case over all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import elasticity_traces as traces  # noqa: E402
from sim_agent import SimHost, declared_rps, service_time, speed_for  # noqa: E402

from atoll.core.logs import LogfmtFormatter  # noqa: E402
from atoll.agent.dataplane.hedge import Budget  # noqa: E402
from atoll.core.ports import free_port  # noqa: E402

TOKEN = "elasticity-bench-token"
WF = "elastic"
PER_CHANNEL = 20
K_DECLARED = 4          # the planner's figure: a replica's rate with 4 requests in its batch
CONCURRENCY = 8         # the most a replica serves at once; the rest queue at the replica
# SLO: 2.0 s end to end for 64 tokens. A renter (rtx4090 class) replica takes 0.39 s alone and
# 0.90 s with a full batch of 8; 2 s is met by any request that does not wait behind more than
# about one full batch, and missed by requests queueing on an overloaded replica.
SLO_S = 2.0
NEW_TOKENS_HINT = traces.NEW_TOKENS

# Hardware classes: our assumption of the seconds a lone 64-token answer of a small model takes
# on one GPU of the class (0.155 s on an A100, 0.39 s on an RTX 4090, 0.52 s on an L4: the
# ratios of their single-GPU decode speed), as a speed-up over the runtime's measured batch
# curve (sim_agent.speed_for), and the GPU memory.
HW = {hw: (speed_for(alone), mem) for hw, (alone, mem) in
      {"a100": (0.155, 80), "rtx4090": (0.39, 24), "l4": (0.52, 24)}.items()}

# Prices (USD/h), public list prices:
# - datacenter, on demand: AWS p4d.24xlarge (8x A100 40GB) $32.77/h in us-east-1 -> $4.10 per GPU;
# - renters: RTX 4090 on GPU marketplaces, about $0.30-0.70/h (RunPod community cloud lists
#   $0.34/h, Vast.ai offers span roughly $0.25-0.60/h); we spread renters over $0.35-0.55;
# - edge: one L4, GCP g2-standard-4 on demand about $0.71/h (us-central1).
PRICE_A100, PRICE_L4 = 4.10, 0.71
RENTER_PRICES = [0.35, 0.39, 0.44, 0.49, 0.55]

POLICIES = {"atoll": {}, "rate-only": {"metric": "rate_only"}}
ALL_POLICIES = ("atoll", "static-peak", "rate-only", "atoll-storm")
SUITE = "diurnal:31,32,33,34,35,36,37,38,11,23;spikes:1,2;week:1"
QUICK_SUITE = "diurnal:23;spikes:1;week:1"
DAY_S = {False: {"diurnal": 150.0, "spikes": 150.0, "week": 60.0}, True: {"diurnal": 40.0, "spikes": 40.0,
                                                                          "week": 12.0}}
PEAK_DAY = {False: 18.0, True: 9.0}
STORM_SHARE = 0.3
NO_HEDGING = False      # --no-hedging
TARGETS = {"cheaper_than_static": 0.35, "slo_share": 0.99, "storm_back_s": 10.0}


def slo_for(tokens: int) -> float:
    return SLO_S * tokens / NEW_TOKENS_HINT


# ------------------------------------------------------------------------------------- helpers
def scrape_cost(port: int) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception:  # noqa: BLE001 - a missed scrape keeps the previous value
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("atoll_plan_cost_dollars_per_hour{") and f'workflow="{WF}"' in line:
            total += float(line.split()[-1])
    return total


def fleet(quick: bool) -> list[dict]:
    """Datacenter (on demand, pricey), renters (preemptible, cheap), edge (on demand)."""
    n_dc, n_rent, n_edge = (1, 6, 2) if quick else (3, 10, 3)
    out = []
    for i in range(n_dc):
        out.append(dict(name=f"dc-{i}", tier="datacenter", price=PRICE_A100, preemptible=False, hardware="a100",
                        provider="aws"))
    for i in range(n_rent):
        out.append(dict(name=f"renter-{i:02d}", tier="renter", price=RENTER_PRICES[i % len(RENTER_PRICES)],
                        preemptible=True, hardware="rtx4090", provider=f"host{i}"))
    for i in range(n_edge):
        out.append(dict(name=f"edge-{i}", tier="edge", price=PRICE_L4, preemptible=False, hardware="l4",
                        provider="edge-site"))
    return out


def workflow_spec(model_dir: Path, rate: float, autoscaling: dict | None) -> dict:
    thr = {hw: round(declared_rps(sp, K_DECLARED), 3) for hw, (sp, _) in HW.items()}
    spec = {"name": WF,
            "sources": [{"name": "users", "rate": round(rate, 3), "region": "us-east", "tier": "edge"}],
            "tasks": [{"name": "chat", "max_tokens": NEW_TOKENS_HINT, "variants": [
                {"name": "base", "model": str(model_dir), "accuracy": 0.8, "memory_gb": 2, "throughput": thr}]}],
            "edges": [{"from": "users", "to": "chat", "size_kb": 0.5}]}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return spec


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def within(r) -> bool:
    """A result (sent at, latency, ok, error, SLO) answered within its SLO."""
    return bool(r[2] and r[1] <= r[4])


# ------------------------------------------------------------------------------------- one run
async def run_policy(policy: str, tr: dict, quick: bool, tmp: Path, log_level: str = "warning") -> dict:
    import grpc
    import yaml

    from atoll.client import Client
    from atoll.core.rpc import CHANNEL_OPTIONS
    from atoll.proto.v1 import control_pb2, control_pb2_grpc

    addr, mport = f"127.0.0.1:{free_port()}", free_port()
    state = tmp / f"state-{policy}"
    log = open(tmp / f"coordinator-{policy}.log", "w")
    coord = subprocess.Popen([sys.executable, "-m", "atoll", "coordinator", "--listen", addr,
                              "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", str(state),
                              "--heartbeat-interval", "1", "--join-token", TOKEN, "--log-level", log_level],
                             stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp))
    loop = asyncio.get_running_loop()
    hosts: list[SimHost] = []
    channels = []
    inv_channels = []
    seed = tr["seed"]
    span = tr["duration_s"]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(addr.rsplit(":", 1)[1])), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or coord.poll() is not None:
                    raise RuntimeError(f"coordinator did not start; see {log.name}")
                await asyncio.sleep(0.1)
        specs = fleet(quick)
        channels = [grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS)
                    for _ in range((len(specs) + PER_CHANNEL - 1) // PER_CHANNEL)]
        for i, s in enumerate(specs):
            sp, mem = HW[s["hardware"]]
            hosts.append(SimHost(name=s["name"], tier=s["tier"], region="us-east", price=s["price"],
                                 preemptible=s["preemptible"], hardware=s["hardware"], speed=sp, gpu_mem_gb=mem,
                                 channel=channels[i // PER_CHANNEL], join_token=TOKEN, concurrency=CONCURRENCY,
                                 cold_start=(1.0, 2.5), seed=seed * 100 + i, provider=s["provider"]))
        for h in hosts:
            await h.start()
            if NO_HEDGING:          # an ablation: the entries never hedge (agent/dataplane/hedge.py)
                h.dataplane.plane.hedges = Budget(share=0.0, cap=0.0)
        t_reg = time.monotonic() + 30
        while sum(h.hb.connected.is_set() for h in hosts) < len(hosts):
            if time.monotonic() > t_reg:
                raise RuntimeError("simulated hosts did not register")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)          # one heartbeat each: every node READY

        model_dir = tmp / "model"
        model_dir.mkdir(exist_ok=True)
        (model_dir / "config.json").write_text("{}")
        a = None
        if policy == "static-peak":
            rate = tr["peak_work_rps_at_64_tokens"]      # sized for the peak of work, not of requests
        else:
            a = dict(POLICIES["rate-only" if policy == "rate-only" else "atoll"])
            rate = traces.rate(tr, 0.0) * 1.25           # what a user declares: the first minute's rate
        spec_path = tmp / f"{policy}.yaml"
        spec_path.write_text(yaml.safe_dump(workflow_spec(model_dir, rate, a), sort_keys=False))

        client = Client(addr, timeout=30)
        await loop.run_in_executor(None, client.submit, str(spec_path))
        info = await loop.run_in_executor(None, lambda: client.wait_ready(WF, 60))
        initial = {"replicas": len(info.replicas), "cost_per_hour": info.plan.get("total_cost_per_hour")}

        # ---------------------------------------------------------------- the trace
        times = traces.arrivals(tr)
        tokens = traces.request_tokens(tr, times)
        inv_channels = [grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) for _ in range(8)]
        stubs = [control_pb2_grpc.ClientServiceStub(c) for c in inv_channels]
        results: list[tuple[float, float, bool, str, float]] = []   # (sent at, latency, ok, error, SLO)
        timeline: dict[str, list] = {"t": [], "ready": [], "cost": []}
        sem = asyncio.Semaphore(600)
        t0 = time.monotonic()
        events: dict = {}

        async def one(i: int, at: float):
            slo = slo_for(tokens[i])
            if sem.locked():
                results.append((at, float("inf"), False, "load generator saturated", slo))
                return
            async with sem:
                req = control_pb2.InvokeRequest(workflow=WF, input_json=json.dumps({"text": f"request {i}"}),
                                                timeout_seconds=30.0, request_id=f"r{i}", max_tokens=tokens[i])
                s = time.monotonic()
                err = ""
                try:
                    async for _resp in stubs[i % len(stubs)].Invoke(req, timeout=35):
                        pass
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok, err = False, f"{exc.code().name}: {(exc.details() or '')[:160]}"
                results.append((at, time.monotonic() - s, ok, err, slo))

        async def watch():
            """Once a second: the plan's $/h (metrics) and the ready replicas (status)."""
            cost, ready = 0.0, 0
            while time.monotonic() - t0 < span + 60:
                c = await loop.run_in_executor(None, scrape_cost, mport)
                cost = c if c is not None else cost
                try:
                    st = await loop.run_in_executor(None, client.status, WF)
                    ready = sum(1 for r in st.replicas if r.get("state") == "ready")
                except Exception:  # noqa: BLE001 - a missed status keeps the previous count
                    pass
                timeline["t"].append(round(time.monotonic() - t0, 2))
                timeline["cost"].append(round(cost, 4))
                timeline["ready"].append(ready)
                await asyncio.sleep(1.0)

        async def storm():
            at = tr["busiest_s"] - 0.1 * tr["day_s"]       # the ramp into the busiest hour
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            renters = [h for h in hosts if h.tier == "renter"]
            n_kill = math.ceil(STORM_SHARE * len(renters))
            serving = [h for h in renters if any(s == "ready" for s in h.states.values())]
            idle = [h for h in renters if h not in serving]
            rng = random.Random(seed + 7)
            rng.shuffle(serving)
            rng.shuffle(idle)
            victims = (serving + idle)[:n_kill]
            events["storm_at_s"] = round(time.monotonic() - t0, 3)
            events["killed"] = []
            for j, h in enumerate(victims):        # within one second (a compressed minute or less)
                await h.kill()
                events["killed"].append({"name": h.name, "was_serving": h in serving,
                                         "t_s": round(time.monotonic() - t0, 3)})
                if j < len(victims) - 1:
                    await asyncio.sleep(1.0 / max(1, len(victims) - 1))
            events["renters"] = len(renters)
            events["serving_renters_before"] = len(serving)

        bg = [asyncio.ensure_future(watch())]
        if policy == "atoll-storm":
            bg.append(asyncio.ensure_future(storm()))
        tasks = []
        for i, at in enumerate(times):
            delay = at - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i, at)))
        done, pending = await asyncio.wait(tasks, timeout=45)
        for p in pending:
            p.cancel()
        wall = time.monotonic() - t0
        for b in bg:
            b.cancel()
        await asyncio.gather(*bg, return_exceptions=True)
        final = await loop.run_in_executor(None, client.status, WF)
        client.close()
    finally:
        for h in hosts:
            try:
                await h.stop()
            except Exception:  # noqa: BLE001
                pass
        for ch in channels + inv_channels:
            await ch.close()
        coord.terminate()
        try:
            coord.wait(10)
        except subprocess.TimeoutExpired:
            coord.kill()
            coord.wait()
        log.close()
    return figures(policy, a, rate, initial, results, timeline, events, final, span, wall)


def figures(policy, autoscaling, rate, initial, results, timeline, events, final, span, wall) -> dict:
    """A run's figures from what it recorded."""
    cs = [(t, c) for t, c in zip(timeline["t"], timeline["cost"]) if t <= span] or list(
        zip(timeline["t"], timeline["cost"]))
    integral = sum(ca * (tb - ta) for (ta, ca), (tb, _cb) in zip(cs, cs[1:]))
    length = (cs[-1][0] - cs[0][0]) if len(cs) > 1 else 1.0
    mean_cost_h = integral / length if length > 0 else (cs[0][1] if cs else 0.0)
    lat = [r[1] for r in results if r[2]]
    n = len(results)
    inside = sum(1 for r in results if within(r))
    failed = [r for r in results if not r[2]]
    errors: dict[str, int] = {}
    samples: dict[str, str] = {}                  # the first message of each kind, to read why
    for r in failed:
        key = r[3].split(":")[0]
        errors[key] = errors.get(key, 0) + 1
        samples.setdefault(key, r[3])
    decisions = [d for d in final.autoscale_decisions if d["action"] != "keep"]
    out = {"policy": policy, "autoscaling": autoscaling, "source_rate": round(rate, 3), "initial": initial,
           "requests": n, "ok": n - len(failed), "failed": len(failed), "errors": errors, "error_samples": samples,
           "slo_share": round(inside / n, 5) if n else 0.0, "slo_misses": n - inside,
           "latency_p50_s": round(pct(lat, 0.5), 3), "latency_p99_s": round(pct(lat, 0.99), 3),
           "mean_cost_per_hour": round(mean_cost_h, 4), "cost_per_day": round(mean_cost_h * 24, 2),
           "max_cost_per_hour": round(max((c for _, c in cs), default=0.0), 3),
           "max_ready_replicas": max(timeline["ready"], default=0), "wall_s": round(wall, 1),
           "timeline": timeline, "miss_times": [round(r[0], 2) for r in results if not within(r)],
           "cold_starts": len(final.cold_starts),
           "cold_start_p50_s": round(pct([c["seconds"] for c in final.cold_starts], 0.5), 2)
           if final.cold_starts else None,
           "last_decisions": decisions[-3:]}
    if "storm_at_s" in events:
        st = events["storm_at_s"]
        after = [r for r in results if r[0] >= st]
        out["storm"] = {**events, "requests_after_storm": len(after),
                        "lost_requests": sum(1 for r in results if r[0] >= st - 5 and not r[2]),
                        "lost_requests_whole_run": len(failed),
                        "slo_misses_before_storm": sum(1 for r in results if r[0] < st and not within(r)),
                        "slo_misses_after_storm": sum(1 for r in after if not within(r)),
                        "time_back_to_slo_s": time_back(after, st, window=5.0)}
    return out


def time_back(results, storm_at: float, window: float = 5.0, horizon: float = 60.0):
    """Seconds from the storm until the rolling SLO share is back to >= 99% for good: over
    windows of ``window`` s of send time, counting only requests sent at or after the storm
    (``results`` holds only those), the end of the last window below 99% within ``horizon`` s;
    0 if no window dips."""
    last_bad = None
    t = storm_at
    while t <= storm_at + horizon:
        w = [r for r in results if t - window < r[0] <= t]
        if w:
            share = sum(1 for r in w if within(r)) / len(w)
            if share < 0.99:
                last_bad = t
        t += 0.25
    return 0.0 if last_bad is None else round(last_bad - storm_at, 2)


# ------------------------------------------------------------------------------------- one trace
def compare(runs: dict) -> dict:
    """A trace's comparisons: atoll against static-peak and rate-only, and the storm's figures."""
    out = {}
    static = runs.get("static-peak")
    for p, r in runs.items():
        if static and p != "static-peak" and static["mean_cost_per_hour"] > 0:
            r["cheaper_than_static"] = round(1 - r["mean_cost_per_hour"] / static["mean_cost_per_hour"], 4)
    at = runs.get("atoll")
    if at and static:
        out["cheaper_than_static"] = at["cheaper_than_static"]
    if at:
        out["slo_share"] = at["slo_share"]
        out["slo_misses"] = at["slo_misses"]
    if at and "rate-only" in runs:
        out["rate_only_misses"] = runs["rate-only"]["slo_misses"]
        out["fewer_misses_than_rate_only"] = at["slo_misses"] < runs["rate-only"]["slo_misses"]
    s = (runs.get("atoll-storm") or {}).get("storm")
    if s:
        out.update(storm_lost=s["lost_requests_whole_run"], storm_back_s=s["time_back_to_slo_s"],
                   storm_slo_share=runs["atoll-storm"]["slo_share"],
                   storm_cheaper_than_static=runs["atoll-storm"].get("cheaper_than_static"))
    return out


def worst(rows: dict) -> dict:
    """The worst case over every trace, and whether it meets the targets."""
    def pick(key, fn):
        vals = [(r[key], name) for name, r in rows.items() if r.get(key) is not None]
        return fn(vals) if vals else (None, None)

    cheap, cheap_at = pick("cheaper_than_static", min)
    slo, slo_at = pick("slo_share", min)
    back, back_at = pick("storm_back_s", max)
    lost, lost_at = pick("storm_lost", max)
    storm_slo, storm_slo_at = pick("storm_slo_share", min)
    fewer = [r.get("fewer_misses_than_rate_only") for r in rows.values() if "fewer_misses_than_rate_only" in r]
    out = {"cheaper_than_static": cheap, "cheaper_than_static_at": cheap_at, "slo_share": slo, "slo_share_at": slo_at,
           "storm_back_s": back, "storm_back_at": back_at, "storm_lost": lost, "storm_lost_at": lost_at,
           "storm_slo_share": storm_slo, "storm_slo_share_at": storm_slo_at,
           "traces_with_fewer_misses_than_rate_only": f"{sum(bool(x) for x in fewer)}/{len(fewer)}"}
    met = {}
    if cheap is not None:
        met["cheaper_than_static_35pct"] = cheap >= TARGETS["cheaper_than_static"]
    if slo is not None:
        met["within_slo_99pct"] = slo >= TARGETS["slo_share"]
    if fewer:
        met["fewer_misses_than_rate_only_everywhere"] = all(fewer)
    if lost is not None:
        met["storm_no_request_lost"] = lost == 0
    if back is not None:
        met["storm_back_to_slo_under_10s"] = back < TARGETS["storm_back_s"]
    out["targets_met"] = met
    return out


def load_curve(tr: dict, points: int = 600) -> tuple[list[float], list[float], list[float]]:
    ts = [tr["duration_s"] * i / points for i in range(points + 1)]
    req = [traces.rate(tr, t) for t in ts]
    return ts, req, [r * traces.work_mix(tr, t) for r, t in zip(req, ts)]


def run_trace(shape: str, seed: int, quick: bool, policies: list[str], out_dir: Path, log_dir: Path | None,
              log_level: str, constant_mix: bool, earlier: dict | None = None) -> dict:
    """Run ``policies`` on the trace; ``earlier``: this trace's entry from an earlier invocation,
    whose runs are kept (its policies are not run again) and compared with the new ones."""
    tr = traces.make(shape, seed, DAY_S[quick][shape], PEAK_DAY[quick], constant_mix=constant_mix)
    name = f"{shape}-{seed}"
    print(f"{name}: {tr['duration_s']:.0f} s ({tr['days']} day(s) of {tr['day_s']:.0f} s), peak {tr['peak_rps']} "
          f"req/s, mean {tr['mean_rps']} req/s, peak of work {tr['peak_work_rps_at_64_tokens']} req/s at 64 tokens",
          flush=True)
    runs = dict(earlier["runs"]) if earlier else {}
    if runs:
        print(f"  kept from the earlier invocation: {', '.join(runs)}", flush=True)
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="atoll-elastic-") as tmpd:
        tmp = Path(tmpd)
        for p in policies:
            if p in runs:
                continue
            t1 = time.monotonic()
            runs[p] = asyncio.run(run_policy(p, tr, quick, tmp, log_level))
            r = runs[p]
            print(f"  {p}: {r['requests']} requests, within SLO {r['slo_share']:.4f} ({r['slo_misses']} misses), "
                  f"failed {r['failed']}, ${r['cost_per_day']}/day, p99 {r['latency_p99_s']} s "
                  f"({time.monotonic() - t1:.0f} s)", flush=True)
            if r.get("storm"):
                s = r["storm"]
                print(f"    storm at {s['storm_at_s']} s: killed {len(s['killed'])}/{s['renters']} renters, "
                      f"lost {s['lost_requests_whole_run']}, back to 99% within SLO in {s['time_back_to_slo_s']} s",
                      flush=True)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            for f in tmp.glob("coordinator-*.log"):
                shutil.copy(f, log_dir / f"{name}-{f.name}")
    row = compare(runs)
    png = None
    try:
        from elasticity_plot import draw     # matplotlib: the test extra
        title = (f"{name}{' (quick)' if quick else ''}: "
                 + ", ".join(f"{p} {r['slo_share']:.2%} in SLO ${r['cost_per_day']}/day" for p, r in runs.items()))
        png = draw(tr, runs, out_dir / f"elasticity_{shape}_{seed}{'_quick' if quick else ''}.png", title,
                   load_curve(tr))
        png = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
    except Exception as exc:  # noqa: BLE001 - the runs' figures are kept; the failure is said and stored
        print(f"  no picture: {type(exc).__name__}: {exc}", flush=True)
        png = f"not drawn: {type(exc).__name__}: {str(exc)[:200]}"
    wall = round(time.monotonic() - t_all + (earlier or {}).get("wall_s", 0.0), 1)
    return {"trace": tr, "runs": runs, "row": row, "png": png, "wall_s": wall}


# ------------------------------------------------------------------------------------- main
def table(rows: dict) -> str:
    hdr = ["trace", "atoll vs static", "atoll in SLO", "misses: atoll / rate-only", "storm in SLO", "storm back s",
           "storm lost"]
    out = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for name, r in rows.items():
        def f(key, fmt):
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        out.append(f"| {name} | {f('cheaper_than_static', '{:+.1%}')} | {f('slo_share', '{:.2%}')} | "
                   f"{f('slo_misses', '{}')} / {f('rate_only_misses', '{}')} | {f('storm_slo_share', '{:.2%}')} | "
                   f"{f('storm_back_s', '{}')} | {f('storm_lost', '{}')} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", action="store_true", help=f"every trace of the suite ({SUITE}; quick: {QUICK_SUITE})")
    ap.add_argument("--traces", default=None, help='traces to run, e.g. "diurnal:11,23;spikes:1;week:1"')
    ap.add_argument("--quick", action="store_true", help="9 hosts, 40 s days (12 s in the week), half the load")
    ap.add_argument("--policies", default=",".join(ALL_POLICIES))
    ap.add_argument("--constant-mix", action="store_true",
                    help="every request asks for 64 tokens (no change of request mix through the day)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --out; run only the traces and policies they lack")
    ap.add_argument("--keep-logs", default=None, metavar="DIR",
                    help="copy each coordinator's log there, and write the simulated hosts' log there")
    ap.add_argument("--log-level", default="warning", help="the coordinators' log level (info shows decisions)")
    ap.add_argument("--atoll-policy", default="{}", metavar="JSON",
                    help="the autoscaling block of the atoll and atoll-storm runs (default {}: every default)")
    ap.add_argument("--no-hedging", action="store_true",
                    help="an ablation: the simulated hosts' entries never hedge a call (atoll's default: they do)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    global NO_HEDGING
    NO_HEDGING = args.no_hedging
    POLICIES["atoll"] = json.loads(args.atoll_policy)
    if args.keep_logs:          # the simulated hosts' own log (their data planes: failed requests and why)
        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(args.keep_logs) / "sim-hosts.log")
        handler.setFormatter(LogfmtFormatter())
        logging.getLogger("atoll").addHandler(handler)
        logging.getLogger("atoll").setLevel(args.log_level.upper())
    spec = args.traces or ((QUICK_SUITE if args.quick else SUITE) if args.suite else "diurnal:11")
    todo = traces.parse(spec)
    out = Path(args.out or REPO / "bench" / "results" / f"elasticity{'_quick' if args.quick else ''}.json")
    policies = [p for p in args.policies.split(",") if p]
    bad = set(policies) - set(ALL_POLICIES)
    if bad:
        ap.error(f"unknown policies {sorted(bad)}; choose from {ALL_POLICIES}")
    import grpc

    res = {"command": "python bench/elasticity_bench.py " + " ".join(sys.argv[1:]), "quick": args.quick, "hedging": not args.no_hedging,
           "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "grpcio": grpc.__version__, "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
           "slo_s": SLO_S, "slo": "SLO_S x completion tokens / 64 per request",
           "replica_concurrency": CONCURRENCY, "declared_at_batch": K_DECLARED,
           "hardware": {hw: {"speed_vs_cpu_profile": sp, "gpu_memory_gb": m,
                             "service_s_batch1": round(service_time(1) / sp, 3),
                             "service_s_batch8": round(service_time(8) / sp, 3),
                             "declared_rps": round(declared_rps(sp, K_DECLARED), 3)} for hw, (sp, m) in HW.items()},
           "fleet": fleet(args.quick), "policies": {**POLICIES, "atoll-storm": POLICIES["atoll"]},
           "storm": f"{STORM_SHARE:.0%} of the renters, serving ones first, within 1 s, on the ramp into the busiest "
                    "hour (busiest - 0.1 day)", "targets": TARGETS, "traces": {}}
    if args.resume and out.exists():
        res["traces"] = json.loads(out.read_text()).get("traces", {})
    t_all = time.monotonic()
    for shape, seed in todo:
        name = f"{shape}-{seed}"
        earlier = res["traces"].get(name)
        if earlier is not None and all(p in earlier["runs"] for p in policies):
            print(f"{name}: kept from {out}", flush=True)
            continue
        res["traces"][name] = run_trace(shape, seed, args.quick, policies, out.parent,
                                        Path(args.keep_logs) if args.keep_logs else None, args.log_level,
                                        args.constant_mix, earlier)
        rows = {n: t["row"] for n, t in res["traces"].items()}
        res.update(worst=worst(rows), wall_s=round(sum(t["wall_s"] for t in res["traces"].values()), 1),
                   load_avg_after=[round(x, 2) for x in os.getloadavg()])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))          # after every trace: a long suite keeps its progress
    rows = {n: t["row"] for n, t in res["traces"].items()}
    print("\n" + table(rows))
    w = worst(rows)
    print(f"\nworst case: {json.dumps({k: v for k, v in w.items() if k != 'targets_met'})}")
    print(f"targets: {json.dumps(w['targets_met'])}")
    print(f"this invocation: {time.monotonic() - t_all:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
