"""The OpenAI door against gRPC ``Invoke``: the same non-streaming requests through both doors of
one coordinator, side by side in one run.

    .venv/bin/python bench/openai_door_bench.py                 # writes bench/results/openai_door.json
    .venv/bin/python bench/openai_door_bench.py --quick         # a smoke run

What runs: a real coordinator process (``atoll coordinator --openai-listen``) and one agent, as
processes on loopback, serving a one-stage workflow. Two kinds of agent:

- ``sim``: a simulated host (``bench/sim_agent.py``, the elasticity bench's) whose Worker answers
  at once (four streamed pieces, no model): the doors' own cost is all there is to measure;
- ``tiny``: a real agent with the tiny random Llama of the tests (hidden 64, 2 layers), 4 new
  tokens per request: a real engine behind the doors.

The load: this process keeps ``C`` requests in flight (closed loop, asyncio) for ``--seconds``
per phase, through gRPC (``ClientService.Invoke`` with a ``grpc.aio`` stub, non-streaming) or
through the door (``POST /v1/completions`` on ``C`` keep-alive connections, a minimal HTTP/1.1
client), the two interleaved ``--reps`` times; each phase reports requests/s, p50/p99 latency, and
CPU milliseconds per request of the coordinator (from /proc) and of this load generator. The
ratio door/gRPC is taken on the best phase of each. Both clients are lean on purpose: the
official clients (``openai``, the SDK) cost more CPU per request than the servers do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import yaml  # noqa: E402

from control_plane_bench import cpu_seconds  # noqa: E402

from atoll.client import Client  # noqa: E402
from atoll.demo.fleet import free_port  # noqa: E402
from atoll.proto.v1 import control_pb2, control_pb2_grpc  # noqa: E402

TOKEN = "openai-door-bench-token"
WF = "door-bench"
PROMPT = "Tell me about the ocean."
MAX_TOKENS = 4


# ------------------------------------------------------------------------------------- the fleet
class Fleet:
    def __init__(self, work: Path, worker: str):
        self.work, self.worker = work, worker
        self.port, self.oport, self.mport = free_port(), free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list[str], log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", ATOLL_JOIN_TOKEN=TOKEN, OMP_NUM_THREADS="1")
        p = subprocess.Popen(args, stdout=open(self.work / log, "w"), stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> None:
        self.coordinator = self.spawn([sys.executable, "-m", "atoll", "coordinator", "--listen", self.addr,
                                       "--metrics-listen", f"127.0.0.1:{self.mport}", "--state-dir",
                                       str(self.work / "coord"), "--openai-listen", f"127.0.0.1:{self.oport}",
                                       "--log-level", "warning"], "coordinator.log")
        from tests.fixtures.tiny_models import build_tiny_llama
        self.model = str(build_tiny_llama(self.work / "base"))     # the sim agent never opens it
        if self.worker == "sim":
            self.spawn([sys.executable, __file__, "--role", "sim-agent", "--coordinator", self.addr], "agent.log")
        else:
            cfg = self.work / "node.yaml"
            cfg.write_text(yaml.safe_dump({"name": "bench-1", "tier": "datacenter", "region": "us-east",
                                           "price_per_hour": 1.0, "labels": {"hardware": "a100"}}))
            self.spawn([sys.executable, "-m", "atoll", "agent", "--coordinator", self.addr, "--config", str(cfg),
                        "--state-dir", str(self.work / "agent"), "--log-level", "warning"], "agent.log")

    def submit(self) -> None:
        spec = {"name": WF, "sources": [{"name": "u", "rate": 10, "region": "us-east", "tier": "datacenter"}],
                "tasks": [{"name": "gen", "max_tokens": MAX_TOKENS, "variants": [
                    {"name": "v", "model": self.model, "accuracy": 0.9, "memory_gb": 1,
                     "throughput": {"a100": 1000}}]}],
                "edges": [{"from": "u", "to": "gen", "size_kb": 0.1}]}
        path = self.work / "wf.yaml"
        path.write_text(yaml.safe_dump(spec))
        deadline = time.monotonic() + 90
        while True:
            try:
                with Client(self.addr, timeout=10) as c:
                    if any(n.state == "READY" for n in c.nodes()):
                        c.submit(str(path))
                        c.wait_ready(WF, 120)
                        return
            except Exception:  # noqa: BLE001 - still starting
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def sim_agent(coordinator: str) -> None:
    """A simulated host whose Worker answers at once (speed 1e9, no concurrency cap)."""
    from sim_agent import SimHost

    host = SimHost(name="sim-1", tier="datacenter", region="us-east", price=1.0, preemptible=False,
                   hardware="a100", speed=1e9, gpu_mem_gb=80, channel=grpc.aio.insecure_channel(coordinator),
                   join_token=TOKEN, concurrency=100_000, cold_start=(0.1, 0.2))
    await host.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await host.stop()


# ------------------------------------------------------------------------------------- the load
class Http:
    """One keep-alive HTTP/1.1 connection posting the same completion request."""

    def __init__(self, port: int):
        self.port = port
        body = json.dumps({"model": WF, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}).encode()
        self.request = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def call(self) -> None:
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:200].decode(errors="replace"))
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()


async def phase(kind: str, fleet: Fleet, concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    errors = [0]
    stop_at = [0.0]
    if kind == "grpc":
        channel = grpc.aio.insecure_channel(fleet.addr)
        stub = control_pb2_grpc.ClientServiceStub(channel)
        req = control_pb2.InvokeRequest(workflow=WF, input_json=json.dumps({"text": PROMPT}), max_tokens=MAX_TOKENS,
                                        timeout_seconds=30)

        async def call(_):
            async for _resp in stub.Invoke(req, timeout=30):
                pass
        conns = [None] * concurrency
    else:
        conns = [Http(fleet.oport) for _ in range(concurrency)]
        await asyncio.gather(*(c.open() for c in conns))

        async def call(conn):
            await conn.call()

    async def client(conn) -> None:
        while time.monotonic() < stop_at[0]:
            t0 = time.monotonic()
            try:
                await call(conn)
                lat.append(time.monotonic() - t0)
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1

    stop_at[0] = time.monotonic() + 1.0            # warm-up: connections, caches
    await asyncio.gather(*(client(c) for c in conns))
    lat.clear()
    errors[0] = 0
    c0, g0, t0 = cpu_seconds(fleet.coordinator.pid), time.process_time(), time.monotonic()
    stop_at[0] = t0 + seconds
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.monotonic() - t0
    c1, g1 = cpu_seconds(fleet.coordinator.pid), time.process_time()
    if kind == "grpc":
        await channel.close()
    else:
        await asyncio.gather(*(c.close() for c in conns))
    lat.sort()
    n = len(lat)
    return {"path": kind, "concurrency": concurrency, "requests": n, "errors": errors[0], "seconds": round(wall, 3),
            "rps": round(n / wall, 1), "p50_ms": round(lat[n // 2] * 1000, 2) if n else None,
            "p99_ms": round(lat[min(n - 1, int(0.99 * n))] * 1000, 2) if n else None,
            "coordinator_cpu_ms_per_request": round((c1 - c0) * 1000 / n, 3) if n else None,
            "loadgen_cpu_ms_per_request": round((g1 - g0) * 1000 / n, 3) if n else None}


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    import starlette
    import uvicorn
    return {"platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "grpcio": grpc.__version__, "uvicorn": uvicorn.__version__,
            "starlette": starlette.__version__, "load_avg_at_start": os.getloadavg()}


async def run_worker(worker: str, concurrencies: list[int], seconds: float, reps: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix=f"atoll-door-bench-{worker}-"))
    fleet = Fleet(work, worker)
    fleet.start()
    try:
        await asyncio.to_thread(fleet.submit)
        out = []
        for c in concurrencies:
            for r in range(reps):
                for kind in (("grpc", "http") if r % 2 == 0 else ("http", "grpc")):
                    res = dict(await phase(kind, fleet, c, seconds), worker=worker, rep=r)
                    print(f"  {worker:<5} {kind:<5} c={c:<3} rep {r}: {res['rps']:8.1f} req/s  p50 {res['p50_ms']} ms  "
                          f"coordinator {res['coordinator_cpu_ms_per_request']} ms CPU/req  errors {res['errors']}",
                          flush=True)
                    out.append(res)
        return out
    finally:
        fleet.stop()


def summarize(results: list[dict]) -> list[dict]:
    rows = []
    for worker in sorted({r["worker"] for r in results}):
        for c in sorted({r["concurrency"] for r in results if r["worker"] == worker}):
            best = {k: max((r for r in results if (r["worker"], r["concurrency"], r["path"]) == (worker, c, k)),
                           key=lambda r: r["rps"]) for k in ("grpc", "http")}
            rows.append({"worker": worker, "concurrency": c, "grpc_rps": best["grpc"]["rps"],
                         "door_rps": best["http"]["rps"], "door_over_grpc": round(best["http"]["rps"] / best["grpc"]["rps"], 3),
                         "grpc_p50_ms": best["grpc"]["p50_ms"], "door_p50_ms": best["http"]["p50_ms"],
                         "grpc_cpu_ms": best["grpc"]["coordinator_cpu_ms_per_request"],
                         "door_cpu_ms": best["http"]["coordinator_cpu_ms_per_request"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="bench", choices=["bench", "sim-agent"], help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", help=argparse.SUPPRESS)
    ap.add_argument("--workers", default="sim,tiny", help="agents to run behind the doors: sim, tiny (comma-separated)")
    ap.add_argument("--concurrency", default="8,64", help="clients in flight (comma-separated)")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per phase")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per path")
    ap.add_argument("--quick", action="store_true", help="2 s phases, one repetition, the sim agent only")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "openai_door.json"))
    args = ap.parse_args(argv)
    if args.role == "sim-agent":
        asyncio.run(sim_agent(args.coordinator))
        return 0
    if args.quick:
        args.seconds, args.reps, args.workers = 2.0, 1, "sim"
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    info = machine()
    results = []
    for worker in args.workers.split(","):
        results += asyncio.run(run_worker(worker, concurrencies, args.seconds, args.reps))
    info["load_avg_at_end"] = os.getloadavg()
    rows = summarize(results)
    print(f"\n{'agent':<6}{'clients':>8}{'gRPC req/s':>12}{'door req/s':>12}{'door/gRPC':>11}"
          f"{'gRPC p50 ms':>13}{'door p50 ms':>13}{'gRPC CPU ms':>13}{'door CPU ms':>13}")
    for r in rows:
        print(f"{r['worker']:<6}{r['concurrency']:>8}{r['grpc_rps']:>12.1f}{r['door_rps']:>12.1f}"
              f"{r['door_over_grpc']:>11.2f}{r['grpc_p50_ms']:>13}{r['door_p50_ms']:>13}{r['grpc_cpu_ms']:>13}"
              f"{r['door_cpu_ms']:>13}")
    print("(CPU ms: the coordinator's CPU per request; best phase of each path)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "bench": "openai_door", "command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
        "machine": info, "settings": {"seconds": args.seconds, "reps": args.reps, "prompt": PROMPT,
                                      "max_tokens": MAX_TOKENS, "concurrency": concurrencies},
        "summary": rows, "phases": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
