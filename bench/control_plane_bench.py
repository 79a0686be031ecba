"""How far one coordinator scales on this machine.

Simulated agents use the agent's own heartbeat client (``atoll.agent.heartbeat``), with no
runtime, in a separate process, spread over many gRPC channels (25 agents per channel; one
HTTP/2 connection carries about 100 streams). The coordinator is the real ``atoll coordinator``
process. For each fleet size N the bench reports, over a steady window:

- heartbeats handled per second (the coordinator's ``atoll_heartbeats_received_total``);
- p50/p99 heartbeat handling time (handler only) and p50/p99 delay from the agent's send to
  handled (queueing included), from the coordinator's histograms;
- coordinator CPU (share of one core) and peak RSS;
- the time from killing agents (their streams cut, as by kill -9) to LOST, and false
  detections (nodes that were never killed but went SUSPECT or LOST).

    .venv/bin/python bench/control_plane_bench.py                # N = 100, 1000, 5000; 180 s at 5000
    .venv/bin/python bench/control_plane_bench.py --quick        # N = 100, 1000; short windows

Writes bench/results/control_plane.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-join-token"
PER_CHANNEL = 25

from atoll.core.ports import free_port  # noqa: E402  (bench/data_plane_bench.py imports it from here)


# ------------------------------------------------------------------------------ simulator side
async def simulate(addr: str, n: int, interval: float, duration: float, kill: int, after: float, seed: int):
    import grpc

    from atoll.agent.heartbeat import HeartbeatClient
    from atoll.core.rpc import CHANNEL_OPTIONS

    rng = random.Random(seed)
    tiers = ["datacenter", "renter", "edge"]
    regions = ["us-east", "us-west", "eu-west", "ap-south"]
    channels = [grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) for _ in range((n + PER_CHANNEL - 1) // PER_CHANNEL)]
    clients, tasks = [], []
    ramp = min(interval, 10.0)
    for i in range(n):
        spec = {"name": f"sim-{i:05d}", "tier": tiers[i % 3], "region": regions[i % 4], "zone": "",
                "price_per_hour": round(rng.uniform(0.05, 3.0), 2), "preemptible": i % 3 == 1, "labels": {}}
        cap = {"gpus": [{"index": 0, "name": "SIM-GPU", "memory_total_bytes": 24 << 30,
                         "memory_free_bytes": 24 << 30, "compute_capability": "8.9"}],
               "cpu_cores": 8, "memory_bytes": 64 << 30, "disk_bytes": 1 << 40, "simulated": True,
               "agent_version": "bench"}
        clients.append(HeartbeatClient(channels[i // PER_CHANNEL], join_token=TOKEN, spec=spec, capacity=cap,
                                       max_backoff=interval, rng=random.Random(seed + i)))

    async def start(c, delay):
        await asyncio.sleep(delay)
        await c.run()

    t_start = time.time()
    for i, c in enumerate(clients):
        tasks.append(asyncio.ensure_future(start(c, ramp * i / n)))
    deadline = time.monotonic() + ramp + 120
    while time.monotonic() < deadline and sum(c.connected.is_set() for c in clients) < n:
        await asyncio.sleep(0.2)
    connected = sum(c.connected.is_set() for c in clients)
    emit(event="connected", t=time.time(), connected=connected, seconds=round(time.time() - t_start, 2),
         reconnects=sum(c.reconnects for c in clients))
    await asyncio.sleep(duration)
    emit(event="steady_done", t=time.time(), sent=sum(c.sent for c in clients),
         reconnects=sum(c.reconnects for c in clients))
    victims = rng.sample(range(n), kill)
    for i in victims:
        tasks[i].cancel()            # the stream is cut, as when the process is killed
    emit(event="killed", t=time.time(), names=[clients[i].spec["name"] for i in victims])
    await asyncio.sleep(after)
    emit(event="done", t=time.time(), reconnects=sum(c.reconnects for c in clients))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()


def emit(**kw):
    print(json.dumps(kw), flush=True)


# ------------------------------------------------------------------------------ measuring side
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else 0


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict = {"hb": 0.0, "hist": {}, "delay": {}, "to_lost": 0.0, "to_suspect": 0.0}
    for line in text.splitlines():
        if line.startswith("atoll_heartbeats_received_total "):
            out["hb"] = float(line.split()[-1])
        elif line.startswith("atoll_heartbeat_handling_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            out["hist"][float(le)] = float(line.split()[-1])
        elif line.startswith("atoll_heartbeat_delay_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            out["delay"][float(le)] = float(line.split()[-1])
        elif line.startswith("atoll_node_state_transitions_total"):
            if 'to_state="LOST"' in line:
                out["to_lost"] += float(line.split()[-1])
            if 'to_state="SUSPECT"' in line:
                out["to_suspect"] += float(line.split()[-1])
    return out


def quantile(b0: dict, b1: dict, q: float) -> float | None:
    """q-quantile of the observations between two scrapes of a cumulative histogram
    (linear inside the bucket, as Prometheus' histogram_quantile does)."""
    les = sorted(b1)
    counts = [b1[le] - b0.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return les[-2]


def lost_names(addr: str) -> set[str]:
    from atoll.client import Client

    with Client(addr, timeout=10) as c:
        return {n.name for n in c.nodes(state="LOST")}


def run_size(n: int, interval: float, duration: float, kill: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="atoll-cp-bench-"))
    port, mport = free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    # thousands of simulated agents join at once with the bootstrap token: lift its admission rate
    env = dict(os.environ, PYTHONUNBUFFERED="1", ATOLL_LOG_LEVEL="WARNING", ATOLL_JOIN_BURST=str(10 * n + 100))
    coord = subprocess.Popen([sys.executable, "-m", "atoll", "coordinator", "--listen", addr,
                              "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", str(tmp / "state"),
                              "--heartbeat-interval", str(interval), "--join-token", TOKEN],
                             stdout=open(tmp / "coord.log", "w"), stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(200):
            try:
                scrape(mport)
                break
            except OSError:
                time.sleep(0.1)
        after = 3.5 * interval + 2
        sim = subprocess.Popen([sys.executable, __file__, "_simulate", "--addr", addr, "--n", str(n),
                                "--interval", str(interval), "--duration", str(duration), "--kill", str(kill),
                                "--after", str(after)], stdout=subprocess.PIPE, text=True, env=env)
        res: dict = {"agents": n, "interval_s": interval, "steady_window_s": duration, "killed": kill}
        m0 = c0 = t0 = None
        killed: set[str] = set()
        for line in sim.stdout:
            ev = json.loads(line)
            if ev["event"] == "connected":
                m0, c0, t0 = scrape(mport), cpu_seconds(coord.pid), time.time()
                res.update(connected=ev["connected"], connect_seconds=ev["seconds"],
                           reconnects_during_connect=ev["reconnects"])
                print(f"  N={n}: {ev['connected']}/{n} connected in {ev['seconds']} s; steady window {duration} s ...",
                      flush=True)
            elif ev["event"] == "steady_done":
                m1, c1, t1 = scrape(mport), cpu_seconds(coord.pid), time.time()
                window = t1 - t0
                res.update(
                    heartbeats_per_second=round((m1["hb"] - m0["hb"]) / window, 1),
                    expected_per_second=round(n / interval, 1),
                    handling_p50_ms=_ms(quantile(m0["hist"], m1["hist"], 0.50)),
                    handling_p99_ms=_ms(quantile(m0["hist"], m1["hist"], 0.99)),
                    delay_p50_ms=_ms(quantile(m0["delay"], m1["delay"], 0.50)),
                    delay_p99_ms=_ms(quantile(m0["delay"], m1["delay"], 0.99)),
                    coordinator_cpu_share=round((c1 - c0) / window, 3),
                    false_suspect_in_window=int(m1["to_suspect"] - m0["to_suspect"]),
                    false_lost_in_window=int(m1["to_lost"] - m0["to_lost"]),
                    reconnects_in_window=ev["reconnects"] - res["reconnects_during_connect"])
            elif ev["event"] == "killed":
                t_kill, killed = ev["t"], set(ev["names"])
                times: dict[str, float] = {}
                while len(times) < len(killed) and time.time() - t_kill < 6 * interval:
                    now_lost = lost_names(addr)
                    for name in killed & now_lost:
                        times.setdefault(name, time.time() - t_kill)
                    time.sleep(0.1)
                ts = sorted(times.values())
                res.update(lost_detected=len(times),
                           time_to_lost_median_s=round(ts[len(ts) // 2], 2) if ts else None,
                           time_to_lost_max_s=round(ts[-1], 2) if ts else None,
                           time_to_lost_max_intervals=round(ts[-1] / interval, 2) if ts else None)
            elif ev["event"] == "done":
                m2 = scrape(mport)
                res["false_lost_total"] = int(m2["to_lost"] - len(killed)) if killed else int(m2["to_lost"])
                res["peak_rss_mib"] = round(peak_rss_bytes(coord.pid) / 2 ** 20, 1)
        sim.wait(60)
        return res
    finally:
        coord.terminate()
        try:
            coord.wait(20)
        except subprocess.TimeoutExpired:
            coord.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _ms(x):
    return None if x is None else round(x * 1000, 3)


def machine() -> dict:
    import grpc

    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "grpcio": grpc.__version__}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_simulate":
        ap = argparse.ArgumentParser()
        ap.add_argument("_simulate")
        for a in ("--addr",):
            ap.add_argument(a)
        ap.add_argument("--n", type=int)
        ap.add_argument("--interval", type=float)
        ap.add_argument("--duration", type=float)
        ap.add_argument("--kill", type=int)
        ap.add_argument("--after", type=float)
        ap.add_argument("--seed", type=int, default=7)
        ns = ap.parse_args()
        asyncio.run(simulate(ns.addr, ns.n, ns.interval, ns.duration, ns.kill, ns.after, ns.seed))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--interval", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=None, help="steady window at the largest N (default 180 s)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "control_plane.json"))
    ns = ap.parse_args()
    sizes = [100, 1000] if ns.quick else [int(x) for x in ns.sizes.split(",")]
    rows = []
    print(f"control-plane bench: sizes {sizes}, heartbeat interval {ns.interval} s", flush=True)
    for n in sizes:
        duration = (20.0 if ns.quick else (ns.duration or 180.0) if n == max(sizes) else 45.0)
        kill = max(5, n // 100)
        rows.append(run_size(n, ns.interval, duration, kill))
    result = {"bench": "control_plane", "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "results": rows}
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")
    hdr = ["agents", "hb/s", "expected", "handle p50 ms", "handle p99 ms", "delay p50 ms", "delay p99 ms",
           "coord CPU", "peak RSS MiB", "LOST after kill (max)", "false SUSPECT", "false LOST"]
    print("\n| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
    for r in rows:
        print("| " + " | ".join(str(x) for x in [
            r["agents"], r.get("heartbeats_per_second"), r.get("expected_per_second"), r.get("handling_p50_ms"),
            r.get("handling_p99_ms"), r.get("delay_p50_ms"), r.get("delay_p99_ms"),
            f'{r.get("coordinator_cpu_share", 0) * 100:.0f}%', r.get("peak_rss_mib"),
            f'{r.get("time_to_lost_max_s")} s ({r.get("time_to_lost_max_intervals")} intervals, '
            f'{r.get("lost_detected")}/{r["killed"]})',
            r.get("false_suspect_in_window"), r.get("false_lost_total")]) + " |")
    print(f"\nwrote {ns.out}")


if __name__ == "__main__":
    main()
