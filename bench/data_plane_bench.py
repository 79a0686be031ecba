"""The data plane against the coordinator hub, side by side on one fleet of simulated agents.

A real ``atoll coordinator`` and simulated agents (``bench/sim_agent.py`` with near-instant
Workers: every request answered at once, in one chunk), each agent in its own process and each
one a full data-plane node (``atoll.agent.dataplane``: Entry server, DataPlane service, routing
state and key set from its heartbeat stream, in-process stages). Closed-loop load generators
(their own processes, ``grpc.aio``, a fixed number of requests in flight) drive one-stage
workflows; every window reports req/s, p50/p99 latency and the CPU milliseconds per request of
every process on the path (coordinator, each agent, the load generators), from /proc.

1. One replica, on agent a1: direct ``Worker.Generate`` calls to a1 and a1's entry (the stage
   runs in process there), ``--runs`` pairs of windows (min/median/max of the CPU ratio); the
   coordinator's ``Invoke`` (forwarded to an entry).
2. Two replicas, on a1 and a2: the hub (``Invoke`` at the coordinator, forwarded to an entry)
   against the two agents' entries, with the same number of requests in flight; ``--runs``
   pairs (min/median/max of the req/s ratio, of the serving processes' CPU ratio, and of every
   process's CPU ratio, load generators included: what the req/s ratio comes to while all of
   them share this machine's cores and keep them busy).
3. Routing cost per request in process (``DataPlane.run`` with an instant local stage), for a
   route of 4 and of 512 replicas over 4 locations with the plan's flows, idle and with 32 of
   the agent's calls in flight.

Targets: the coordinator spends no CPU per request on the entry path; an entry holding the
stage's replica costs at most 1.5x a direct Worker call; two entries reach at least 2x the hub's
req/s; routing cost at 512 replicas within 1.2x of 4.

    .venv/bin/python bench/data_plane_bench.py                  # writes bench/results/data_plane.json
    .venv/bin/python bench/data_plane_bench.py --seconds 4 --runs 5   # shorter windows, 5 pairs
    .venv/bin/python bench/data_plane_bench.py --soak 1000000   # 1M requests through entries, RSS flat

The soak writes bench/results/data_plane_soak.json: every process's RSS sampled through the run,
the workflow without an ``autoscaling:`` block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from control_plane_bench import cpu_seconds, free_port, machine  # noqa: E402 - bench helpers beside this file

REPO = HERE.parent
TOKEN = "dataplane-bench-token"
WORKFLOW = {"sources": [{"name": "u", "rate": 1, "region": "us-east", "tier": "datacenter"}],
            "tasks": [{"name": "gen", "max_tokens": 1, "variants": [
                {"name": "v", "model": "/models/sim", "accuracy": 0.9, "memory_gb": 1,
                 "throughput": {"sim": 1000}}]}],
            "edges": [{"from": "u", "to": "gen", "size_kb": 0.05}]}


# ---------------------------------------------------------------------------------- an agent
async def agent_main(name: str, region: str, coordinator: str) -> None:
    import grpc

    from sim_agent import SimHost

    from atoll.core import logs
    from atoll.core.rpc import CHANNEL_OPTIONS

    logs.setup("INFO")           # the per-request log lines count, as on a real agent
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")
    ch = grpc.aio.insecure_channel(coordinator, options=CHANNEL_OPTIONS)
    host = SimHost(name=name, tier="datacenter", region=region, price=1.0, preemptible=False, hardware="sim",
                   speed=1.0, gpu_mem_gb=24, channel=ch, join_token=TOKEN, cold_start=(0.05, 0.1), instant=True)
    await host.start()
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------------- load
async def load_main(kind: str, targets: list[str], seconds: float, concurrency: int, workflow: str) -> None:
    import grpc

    from atoll.core.rpc import CHANNEL_OPTIONS
    from atoll.proto.v1 import dataplane_pb2
    from atoll.wire import client_service, dataplane
    from atoll.wire.worker import WorkerClient

    chans = [grpc.aio.insecure_channel(t, options=CHANNEL_OPTIONS) for t in targets]
    workers = WorkerClient()
    lat: list[float] = []
    errors = [0]
    # the client's own work stays small (a real client runs elsewhere): the request serialized once,
    # the answers' bytes not parsed (a call that fails raises; one that succeeds ended in its answer)
    service = client_service.SERVICE if kind == "hub" else dataplane_pb2.DESCRIPTOR.services_by_name["Entry"]
    calls = [ch.unary_stream(f"/{service.full_name}/Invoke", request_serializer=None, response_deserializer=None)
             for ch in chans]
    req = dataplane.invoke_request(workflow=workflow, input_json='{"text": "hello"}', stream=False,
                                   timeout_seconds=10, request_id="").SerializeToString()
    cpu0 = time.process_time()
    stop = time.monotonic() + seconds

    async def one(i: int) -> None:
        if kind == "worker":
            async for _ in workers.generate(targets[i % len(targets)], "hello", adapter="", max_tokens=1,
                                            temperature=0.0, timeout=10):
                pass
            return
        async for _ in calls[i % len(calls)](req, timeout=10):
            pass

    async def loop(i: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                await one(i)
                lat.append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError:
                errors[0] += 1

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    lat.sort()
    print(json.dumps({"requests": len(lat), "errors": errors[0], "cpu_s": round(time.process_time() - cpu0, 4),
                      "p50_ms": round(lat[len(lat) // 2] * 1000, 3) if lat else None,
                      "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 3) if lat else None}), flush=True)


# ---------------------------------------------------------------------------------- the driver
def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", ATOLL_JOIN_TOKEN=TOKEN)
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)


def rss_bytes(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024 if m else 0


class Fleet:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.addr = f"127.0.0.1:{free_port()}"
        self.coord = spawn([sys.executable, "-m", "atoll", "coordinator", "--listen", self.addr, "--metrics-listen",
                            f"127.0.0.1:{free_port()}", "--state-dir", str(workdir / "coord"),
                            "--heartbeat-interval", "1"], workdir / "coordinator.log")
        self.agents: dict[str, subprocess.Popen] = {}

    def add_agent(self, name: str, region: str = "us-east") -> None:
        self.agents[name] = spawn([sys.executable, str(HERE / "data_plane_bench.py"), "--agent", name, "--region",
                                   region, "--coordinator", self.addr], self.dir / f"{name}.log")

    def client(self):
        from atoll.client import Client
        return Client(self.addr, timeout=30)

    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                v = pred()
                if v:
                    return v
            except Exception:  # noqa: BLE001 - still starting
                pass
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}; see {self.dir}")

    def deploy(self, name: str, rate: float) -> dict:
        import yaml
        model = self.dir / "sim-model"          # simulated agents never load it; admission wants one
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")
        spec = {"name": name, **WORKFLOW}
        spec["sources"] = [{**WORKFLOW["sources"][0], "rate": rate}]
        spec["tasks"] = [{**WORKFLOW["tasks"][0], "variants": [{**WORKFLOW["tasks"][0]["variants"][0],
                                                                 "model": str(model)}]}]
        path = self.dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        with self.client() as c:
            c.submit(str(path))
            st = self.wait(lambda: (lambda s: s if s.state == "READY" and all(r["state"] == "ready" for r in s.replicas)
                                    else None)(c.status(name)), 60, f"{name} READY")
            entries = {e["node_name"]: e["address"] for e in c.entries("us-east", name)}
            ok = self.wait(lambda: self._serves(entries, name), 30, "entries holding the route")
        return {"status": st, "entries": entries, "ok": ok}

    def _serves(self, entries: dict, name: str) -> bool:
        from atoll.client import Client
        for addr in entries.values():
            with Client(self.addr, entries=addr) as c:
                c.invoke(name, {"text": "warm"}, timeout=5)
        return True

    def window(self, kind: str, targets: list[list[str]], seconds: float, concurrency: int, workflow: str) -> dict:
        """One closed-loop window: a load generator per target list, CPU of every process."""
        pids = {"coordinator": self.coord.pid, **{n: p.pid for n, p in self.agents.items()}}
        gens = [subprocess.Popen([sys.executable, str(HERE / "data_plane_bench.py"), "--load", kind, "--targets",
                                  ",".join(t), "--seconds", str(seconds), "--concurrency", str(concurrency),
                                  "--workflow", workflow], stdout=subprocess.PIPE, cwd=REPO, text=True)
                for t in targets]
        time.sleep(1.0)                                    # the generators' start-up is not measured
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        t0 = time.monotonic()
        outs = [json.loads(g.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1]) for g in gens]
        wall = time.monotonic() - t0
        # the generators ran `seconds` from their own start: count the CPU of the shared window
        cpu1 = {n: cpu_seconds(p) for n, p in pids.items()}
        n = sum(o["requests"] for o in outs)
        cpu = {name: round((cpu1[name] - cpu0[name]) * 1000 / max(n, 1), 4) for name in pids}
        cpu["load_generators"] = round(sum(o["cpu_s"] for o in outs) * 1000 / max(n, 1), 4)
        return {"kind": kind, "requests": n, "errors": sum(o["errors"] for o in outs),
                "req_per_s": round(n / seconds, 1),
                "p50_ms": max(o["p50_ms"] or 0 for o in outs), "p99_ms": max(o["p99_ms"] or 0 for o in outs),
                "cpu_ms_per_request": cpu, "wall_s": round(wall, 2), "load_avg_1m": round(os.getloadavg()[0], 2)}

    def stop(self) -> None:
        for p in [*self.agents.values(), self.coord]:
            if p.poll() is None:
                p.terminate()
        for p in [*self.agents.values(), self.coord]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def routing_costs(sizes=(4, 512), rounds: int = 31, batch: int = 2000) -> dict:
    """Microseconds per request of the data plane's own work (pick, bookkeeping, an instant
    in-process stage) on routes of ``sizes`` replicas over 4 locations with the plan's flows:
    idle (no other call in flight) and busy (32 of this agent's calls in flight, held by the first
    4 replicas of each location, so picks meet backlogged replicas). Each round runs one batch of
    every size back to back (a shared machine's load drifts alike for both); the median batch
    counts, and the ratio is the median of the rounds' ratios."""
    from atoll.agent.dataplane.chain import DataPlane, NodeSelf, Request
    from atoll.agent.dataplane.metrics import DataPlaneMetrics
    from atoll.agent.dataplane.table import CompiledRoute
    from atoll.agent.dataplane.trace import start_span
    from atoll.specs.routing import Endpoint, Route, Stage
    from atoll.wire.worker import Delta, WorkerClient

    class Instant:
        async def generate(self, prompt, **kw):
            yield Delta("ok", 1, 1, True)

    regions = ["us-east", "us-west", "eu-west", "ap-south"]
    flows = {("u", "gen"): tuple(("us-east/datacenter", f"{r}/datacenter", 1.0 + k) for k, r in enumerate(regions))}

    def plane() -> DataPlane:
        return DataPlane(lambda: NodeSelf("me", "me", "us-east", "datacenter"), Instant(), WorkerClient(),
                         DataPlaneMetrics())

    routes, compile_ms, planes = {}, {}, {}
    for n in sizes:
        eps = tuple(Endpoint(replica_id=f"r{i}", task="gen", variant="v", adapter="", base_model="/m",
                             weight=1.0 + i % 3, node_id="me", node_name=f"n{i}",
                             address=f"10.0.{i // 250}.{i % 250}:1", region=regions[i % 4], tier="datacenter",
                             location=f"{regions[i % 4]}/datacenter") for i in range(n))
        route = Route(f"wf{n}", (Stage("gen", "llm", "{input}", ("u",), 1),), {"gen": eps}, "us-east", "gen",
                      "us-east/datacenter", flows)
        t0 = time.perf_counter()
        routes[n] = CompiledRoute(route)
        compile_ms[n] = round((time.perf_counter() - t0) * 1000, 2)
        planes[(n, "idle")], planes[(n, "busy")] = plane(), plane()
        for e in eps[:16]:                                     # the first 4 replicas of each location
            for _ in range(8):
                planes[(n, "busy")].in_flight.add(e)
    span = start_span((), "bench")

    async def go() -> dict:
        times: dict[tuple, list[float]] = {key: [] for key in planes}
        for r in range(rounds + 1):
            for key, pl in planes.items():
                cr = routes[key[0]]
                t = time.perf_counter()
                for _ in range(batch):
                    await pl.run(cr, 0, Request(cr.route.workflow, "hi", time.monotonic() + 60, span), {},
                                 "us-east/datacenter", None)
                if r:                                  # the first round warms up
                    times[key].append((time.perf_counter() - t) / batch)
        return times

    times = asyncio.run(go())
    out: dict = {}
    for mode in ("idle", "busy"):
        out[mode] = {str(n): {"replicas": n, "us_per_request": round(sorted(times[(n, mode)])[rounds // 2] * 1e6, 2),
                              "compile_ms": compile_ms[n]} for n in sizes}
        ratios = sorted(a / b for a, b in zip(times[(sizes[-1], mode)], times[(sizes[0], mode)]))
        out[mode][f"ratio_{sizes[-1]}_over_{sizes[0]}"] = {
            "min": round(ratios[0], 3), "median": round(ratios[len(ratios) // 2], 3), "max": round(ratios[-1], 3)}
    return out


def entry_costs(rounds: int = 5, batch: int = 10000) -> dict:
    """CPU microseconds per request of an entry's own work, without gRPC: ``EntryService.Invoke``
    (key set, authorization, input, resolve, load book, an instant local stage, metrics, the
    request's log line to /dev/null, the answer message) with a stand-in call context; the
    median of ``rounds`` batches of process CPU time."""
    from atoll.agent.dataplane.chain import NodeSelf
    from atoll.agent.dataplane.node import DataPlaneNode
    from atoll.core import logs
    from atoll.core.apikeys import KeySet
    from atoll.specs.routing import Endpoint, Route, Stage, routing_state
    from atoll.wire import dataplane
    from atoll.wire.worker import Delta

    class Instant:
        async def generate(self, prompt, **kw):
            yield Delta("done", 1, 1, True)

    class Context:
        def invocation_metadata(self):
            return ()

        def time_remaining(self):
            return 10.0

        async def write(self, message):
            self.sent = message

    logs.setup("INFO")
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")
    node = DataPlaneNode(node=lambda: NodeSelf("me", "a1", "us-east", "datacenter"), local=Instant(),
                         local_address=lambda: "127.0.0.1:1", connected=lambda: True)
    ep = Endpoint(replica_id="r1", task="gen", variant="v", adapter="", base_model="/m", weight=1.0, node_id="me",
                  node_name="a1", address="127.0.0.1:1", region="us-east", tier="datacenter",
                  location="us-east/datacenter")
    route = Route("one", (Stage("gen", "llm", "{input}", ("u",), 1),), {"gen": (ep,)}, "us-east", "gen",
                  "us-east/datacenter", {("u", "gen"): (("us-east/datacenter", "us-east/datacenter", 1.0),)})
    node.on_instruction({"routing": routing_state([route])})
    node.on_instruction({"keys": KeySet(digest=1)})
    req = dataplane.invoke_request(workflow="one", input_json='{"text": "hello"}', stream=False, timeout_seconds=10,
                                   request_id="")

    async def go(n: int) -> None:
        for _ in range(n):
            await node.entry.Invoke(req, Context())

    asyncio.run(go(500))                                   # warm-up
    per = []
    for _ in range(rounds):
        t = time.process_time()
        asyncio.run(go(batch))
        per.append((time.process_time() - t) / batch * 1e6)
    logging.getLogger().handlers[0].stream.close()
    return {"cpu_us_per_request": _spread([round(x, 1) for x in per]), "batch": batch, "rounds": rounds}


def main_bench(seconds: float, concurrency: int, runs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dp-bench-"))
    fleet = Fleet(work)
    out: dict = {}
    try:
        fleet.add_agent("a1")
        fleet.add_agent("a2")
        with fleet.client() as c:
            fleet.wait(lambda: sum(n.state == "READY" and bool(n.status.get("entry_address"))
                                   for n in c.nodes()) == 2, 60, "two agents")
        # 1. one replica: direct Worker calls, its own entry, the hub
        d = fleet.deploy("one", rate=1)
        rep = d["status"].replicas[0]
        holder, worker = rep["node"], rep["worker_address"]
        entry = d["entries"][holder]
        # direct then entry, ``runs`` pairs: one window each read the machine's load at two moments
        # as the entry's cost (the pairs below alternate for the same reason); the pair with the
        # median ratio stands in the table, every pair is kept
        one: dict = {"replica_on": holder, "pairs": []}
        for _ in range(runs):
            pair = {"direct_worker": fleet.window("worker", [[worker]], seconds, concurrency, "one"),
                    "entry_on_replica_host": fleet.window("entry", [[entry]], seconds, concurrency, "one")}
            direct = pair["direct_worker"]["cpu_ms_per_request"][holder]
            via = pair["entry_on_replica_host"]["cpu_ms_per_request"][holder]
            pair["entry_over_direct_cpu"] = round(via / direct, 3) if direct else None
            one["pairs"].append(pair)
        ranked = sorted(one["pairs"], key=lambda p: p["entry_over_direct_cpu"] or 0.0)
        one.update({k: ranked[len(ranked) // 2][k] for k in ("direct_worker", "entry_on_replica_host",
                                                              "entry_over_direct_cpu")})
        one["entry_over_direct_cpu_runs"] = _spread([p["entry_over_direct_cpu"] or 0.0 for p in ranked])
        one["hub"] = fleet.window("hub", [[fleet.addr]], seconds, concurrency, "one")
        out["one_replica"] = one
        with fleet.client() as c:
            c.delete("one")
        # 2. two replicas: the hub against two entries, the same requests in flight
        d = fleet.deploy("two", rate=1500)
        assert len(d["status"].replicas) == 2, d["status"].replicas
        # (runs alternate, hub then entries, so a shared machine's changing load hits both alike)
        pairs = []
        for _ in range(runs):
            pair = {"hub": fleet.window("hub", [[fleet.addr], [fleet.addr]], seconds, concurrency // 2, "two"),
                    "two_entries": fleet.window("entry", [[d["entries"]["a1"]], [d["entries"]["a2"]]], seconds,
                                                concurrency // 2, "two")}
            pair["entries_over_hub_req_per_s"] = round(pair["two_entries"]["req_per_s"] / pair["hub"]["req_per_s"], 3)
            # what the serving processes (coordinator and agents, not the clients) spend per request:
            # the capacity ratio on hosts of their own, whatever share of a busy machine each window got
            serving = {k: sum(v for n, v in pair[k]["cpu_ms_per_request"].items() if n != "load_generators")
                       for k in ("hub", "two_entries")}
            pair["serving_cpu_hub_over_entries"] = round(serving["hub"] / serving["two_entries"], 3)
            # every process's CPU per request, the load generators' too: while all of them share the
            # machine's cores and keep them busy, the req/s ratio comes to about this
            every = {k: sum(pair[k]["cpu_ms_per_request"].values()) for k in ("hub", "two_entries")}
            pair["all_cpu_hub_over_entries"] = round(every["hub"] / every["two_entries"], 3)
            pairs.append(pair)
        out["two_replicas"] = {"runs": pairs, **{key: _spread([p[key] for p in pairs]) for key in (
            "entries_over_hub_req_per_s", "serving_cpu_hub_over_entries", "all_cpu_hub_over_entries")}}
    finally:
        fleet.stop()
    # 3. routing cost per request, in process
    out["routing"] = routing_costs()
    out["entry_python"] = entry_costs()
    o = out
    out["targets"] = {
        "coordinator_cpu_ms_per_request_on_entry_path": o["one_replica"]["entry_on_replica_host"][
            "cpu_ms_per_request"]["coordinator"],
        "entry_over_direct_worker_cpu (<= 1.5), median of pairs": o["one_replica"]["entry_over_direct_cpu"],
        "two_entries_over_hub_req_per_s (>= 2), median of runs":
            o["two_replicas"]["entries_over_hub_req_per_s"]["median"],
        "serving_cpu_per_request_hub_over_two_entries, median of runs":
            o["two_replicas"]["serving_cpu_hub_over_entries"]["median"],
        "all_processes_cpu_per_request_hub_over_two_entries (what the req/s ratio comes to on one busy "
        "machine), median of runs": o["two_replicas"]["all_cpu_hub_over_entries"]["median"],
        "routing_512_over_4 (<= 1.2), median of rounds": o["routing"]["idle"]["ratio_512_over_4"]["median"],
        "routing_512_over_4 with 32 calls in flight (<= 1.2), median of rounds":
            o["routing"]["busy"]["ratio_512_over_4"]["median"]}
    return out


def _spread(values: list[float]) -> dict:
    v = sorted(values)
    return {"min": v[0], "median": v[len(v) // 2], "max": v[-1]}


def soak(total: int, concurrency: int, window_s: float, write) -> dict:
    """``total`` requests through the entries of two agents (each also holds one replica of the
    workflow, which has no ``autoscaling:`` block), in closed-loop windows of ``window_s``; after
    every window a progress line and every process's RSS (coordinator, a1, a2). ``write(result)``
    is called after every window (a stopped soak keeps what it measured). RSS growth is taken
    after warm-up (the first 10% of the requests): the largest sample over the smallest, and
    the last sample over the first."""
    work = Path(tempfile.mkdtemp(prefix="dp-soak-"))
    fleet = Fleet(work)
    samples: list[dict] = []
    roles = {"coordinator": "control plane", "a1": "entry + replica host", "a2": "entry + replica host"}
    res: dict = {"requested": total, "window_s": window_s, "concurrency": concurrency, "roles": roles,
                 "complete": False}
    try:
        fleet.add_agent("a1")
        fleet.add_agent("a2")
        with fleet.client() as c:
            fleet.wait(lambda: sum(n.state == "READY" for n in c.nodes()) == 2, 60, "two agents")
        d = fleet.deploy("soak", rate=1500)
        res["replicas"] = [r["node"] for r in d["status"].replicas]
        targets = [[d["entries"]["a1"]], [d["entries"]["a2"]]]
        pids = {"coordinator": fleet.coord.pid, **{n: p.pid for n, p in fleet.agents.items()}}
        res["rss_mib_at_start"] = {n: round(rss_bytes(p) / 2**20, 2) for n, p in pids.items()}
        done, t0 = 0, time.monotonic()
        while done < total:
            w = fleet.window("entry", targets, window_s, concurrency // 2, "soak")
            done += w["requests"]
            elapsed = time.monotonic() - t0
            samples.append({"requests": done, "t_s": round(elapsed, 1), "req_per_s": w["req_per_s"],
                            "errors": w["errors"], "load_avg_1m": w["load_avg_1m"],
                            "rss_mib": {n: round(rss_bytes(p) / 2**20, 2) for n, p in pids.items()}})
            eta = (total - done) / max(done / elapsed, 1e-9)
            print(json.dumps({**samples[-1], "eta_s": round(max(eta, 0))}), flush=True)
            res.update(_soak_summary(samples, total, done))
            write(res)
            if any(p.poll() is not None for p in [fleet.coord, *fleet.agents.values()]):
                raise SystemExit(f"a process of the fleet exited; see {work}")
        res["complete"] = True
    finally:
        fleet.stop()
    write(res)
    return res


def _soak_summary(samples: list[dict], total: int, done: int) -> dict:
    warm = [s for s in samples if s["requests"] >= total * 0.1] or samples
    names = list(warm[0]["rss_mib"])
    return {"requests": done, "errors": sum(s["errors"] for s in samples), "samples": samples,
            "warm_samples": len(warm),
            "rss_growth_after_warmup_max_over_min": {
                n: round(max(s["rss_mib"][n] for s in warm) / min(s["rss_mib"][n] for s in warm) - 1, 4)
                for n in names},
            "rss_growth_after_warmup_last_over_first": {
                n: round(warm[-1]["rss_mib"][n] / warm[0]["rss_mib"][n] - 1, 4) for n in names}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="each load window (default 10)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per window (default 32)")
    ap.add_argument("--runs", type=int, default=3, help="hub / two-entry window pairs (default 3)")
    ap.add_argument("--soak", type=int, default=0, help="run the soak with this many requests instead")
    ap.add_argument("--soak-window", type=float, default=30.0, help="seconds between the soak's samples (default 30)")
    ap.add_argument("--agent"), ap.add_argument("--region", default="us-east"), ap.add_argument("--coordinator")
    ap.add_argument("--load"), ap.add_argument("--targets"), ap.add_argument("--workflow", default="")
    ns = ap.parse_args()
    if ns.agent:
        asyncio.run(agent_main(ns.agent, ns.region, ns.coordinator))
        return
    if ns.load:
        asyncio.run(load_main(ns.load, ns.targets.split(","), ns.seconds, ns.concurrency, ns.workflow))
        return
    cmd = "bench/data_plane_bench.py " + " ".join(sys.argv[1:])
    if ns.soak:
        res = {"bench": "data_plane_soak", "machine": machine(), "command": cmd, "shared_machine": True,
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = REPO / "bench" / "results" / "data_plane_soak.json"

        def write(r: dict) -> None:
            path.write_text(json.dumps({**res, "results": r}, indent=2) + "\n")
        res["results"] = soak(ns.soak, ns.concurrency, ns.soak_window, write)
    else:
        res = {"bench": "data_plane", "machine": machine(), "command": cmd, "shared_machine": True,
               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "results": main_bench(ns.seconds, ns.concurrency, ns.runs)}
        path = REPO / "bench" / "results" / "data_plane.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["results"].get("targets", res["results"].get("rss_growth_after_warmup_max_over_min")),
                     indent=2))
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
