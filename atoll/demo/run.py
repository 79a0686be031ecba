"""``atoll demo``: a workflow served by a local fleet on loopback, as separate processes.

1. builds a tiny random-weight Llama and three tenants' LoRA adapters (the model is random: its
   text is gibberish; real users point atoll at local Hugging Face directories);
2. starts a coordinator and three agents — a datacenter host, a marketplace renter and an edge
   box in three regions, their GPUs simulated and shown as such;
3. submits a two-stage workflow with throughput and accuracy SLOs, prints the plan with its
   cost and what the baseline planners would cost on the same fleet;
4. serves a few hundred requests with a progress bar and prints latency and throughput;
5. the renter vanishes without notice (kill -9): it is detected LOST, the workflow is
   re-planned onto the remaining hosts and serves again;
6. shuts everything down cleanly (agents drain first).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import tempfile
import time
from pathlib import Path

import yaml

from atoll.cli.views import node_table, print_plan
from atoll.coordinator.fleet import FleetNode, fleet_pools
from atoll.coordinator.records import NodeRecord
from atoll.demo.fleet import LocalFleet
from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama
from atoll.planner.api import PLANNERS
from atoll.planner.build import problem_from_specs
from atoll.specs.cluster import ClusterSpec
from atoll.specs.common import parse_obj
from atoll.specs.workflow import WorkflowSpec

FLEET = [
    {"name": "dc-us-east-1", "tier": "datacenter", "region": "us-east", "zone": "us-east-1a",
     "price_per_hour": 4.10, "preemptible": False, "labels": {"provider": "cloud", "hardware": "a100"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80, "count": 1}]}},
    {"name": "rent-us-west-1", "tier": "renter", "region": "us-west", "zone": "",
     "price_per_hour": 0.45, "preemptible": True, "labels": {"provider": "marketplace", "hardware": "rtx4090"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "memory_gb": 24, "count": 1}]}},
    {"name": "edge-eu-west-1", "tier": "edge", "region": "eu-west", "zone": "",
     "price_per_hour": 0.06, "preemptible": False, "labels": {"provider": "on-prem", "hardware": "orin"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA Jetson AGX Orin", "memory_gb": 32, "count": 1}]}},
]


def say(msg: str) -> None:
    print(msg, flush=True)



def demo_workflow(models: Path) -> dict:
    """Two stages: summarize (tenant-a's adapter or the bare base), then answer (tenant-b or c).
    Throughput figures are declared per hardware class, as a user would after profiling."""
    base = str(models / "base")

    def variant(name, adapter, acc, a100, rtx, orin):
        v = {"name": name, "model": base, "accuracy": acc, "memory_gb": 2.0,
             "throughput": {"a100": a100, "rtx4090": rtx, "orin": orin}}
        if adapter:
            v.update(adapter=adapter, adapter_path=str(models / adapter), adapter_memory_gb=0.05)
        return v

    return {
        "name": "support-bot",
        "sources": [{"name": "users", "rate": 5, "region": "eu-west", "tier": "edge"}],
        "tasks": [
            {"name": "summarize", "max_tokens": 8, "prompt": "Summarize the ticket: {input}", "variants": [
                variant("base", None, 0.72, 40, 14, 3),
                variant("tenant-a", "tenant-a", 0.86, 36, 13, 2.5)]},
            {"name": "answer", "max_tokens": 12, "prompt": "Reply to: {input}", "variants": [
                variant("tenant-b", "tenant-b", 0.90, 30, 11, 2),
                variant("tenant-c", "tenant-c", 0.93, 20, 7, 1.2)]},
        ],
        "edges": [{"from": "users", "to": "summarize", "size_kb": 2.0},
                  {"from": "summarize", "to": "answer", "size_kb": 0.5}],
        "slo": {"min_accuracy": 0.75},
    }


def baseline_costs(spec: dict, nodes) -> list[tuple[str, str]]:
    """What each planner would cost on the live fleet (the same problem the coordinator solved)."""
    recs = [NodeRecord(id=n.id, name=n.name, spec={"name": n.name, "tier": n.tier, "region": n.region,
                                                   "price_per_hour": n.price_per_hour,
                                                   "preemptible": n.preemptible, "labels": n.labels},
                       capacity={"gpus": n.gpus}) for n in nodes if n.state == "READY"]
    cluster = parse_obj(ClusterSpec, {"name": "live", "pools": fleet_pools([FleetNode.of(r) for r in recs])})
    problem = problem_from_specs(parse_obj(WorkflowSpec, spec), cluster)
    out = []
    for name, fn in PLANNERS.items():
        try:
            p = fn(problem)
            out.append((name, f"${p.total_cost_per_hour:.3f}/h  accuracy {p.accuracy:.3f}"))
        except Exception as exc:  # noqa: BLE001 - an infeasible baseline is a result too
            out.append((name, f"no plan: {str(exc)[:90]}"))
    return out


def progress_bar(done: int, total: int, width: int = 30) -> None:
    """A redrawn bar on a terminal; a line every 10% elsewhere (logs, CI)."""
    filled = int(width * done / total)
    bar = f"      [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    if sys.stdout.isatty():
        sys.stdout.write("\r" + bar + ("\n" if done == total else ""))
    elif done == total or (done * 10 // total) != ((done - 1) * 10 // total):
        sys.stdout.write(bar + "\n")
    sys.stdout.flush()


def serve(client, name: str, n: int, workers: int = 8) -> dict:
    lat, errors = [], []
    t0 = time.monotonic()

    def one(i: int) -> float:
        s = time.monotonic()
        client.invoke(name, {"text": f"ticket {i}: my order #{1000 + i} arrived damaged"}, timeout=60)
        return time.monotonic() - s

    with cf.ThreadPoolExecutor(workers) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        for k, f in enumerate(cf.as_completed(futs), 1):
            try:
                lat.append(f.result())
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors.append(str(exc))
            progress_bar(k, n)
    wall = time.monotonic() - t0
    lat.sort()
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan"))
    return {"ok": len(lat), "errors": errors, "wall": wall, "p50": q(0.5), "p95": q(0.95), "p99": q(0.99),
            "rps": len(lat) / wall if wall else 0.0}


def run(keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="atoll-demo-"))
    t0 = time.monotonic()
    say(f"atoll demo — working directory {work}")
    say("[1/6] building a tiny Llama with RANDOM weights and three tenants' LoRA adapters "
        "(its text is gibberish; point atoll at real Hugging Face directories for real output)")
    models = work / "models"
    build_tiny_llama(models / "base", hidden_size=64, num_layers=2)
    for i, t in enumerate(["tenant-a", "tenant-b", "tenant-c"]):
        build_tiny_adapter(models / t, models / "base", rank=4 * (i + 1), alpha=8, seed=20 + i)
    fleet = LocalFleet(work)
    say("[2/6] starting a coordinator and three agents (separate processes; GPUs simulated) ...")
    try:
        fleet.start_coordinator()
        for spec in FLEET:
            fleet.start_agent(spec)
        if not fleet.wait_states({s["name"]: "READY" for s in FLEET}, 60):
            say(f"agents did not become READY in 60 s; logs are in {work}")
            return 1
        say(f"      coordinator {fleet.addr}, metrics {fleet.metrics_url}")
        with fleet.client() as c:
            nodes = c.nodes()
            say(node_table(nodes))
            spec = demo_workflow(models)
            wf_path = work / "support-bot.yaml"
            wf_path.write_text(yaml.safe_dump(spec, sort_keys=False))
            say(f"[3/6] submitting {wf_path.name}: 5 req/s from eu-west edge users, end-to-end accuracy >= 0.75")
            st = c.submit(str(wf_path))
            print_plan(st.plan)
            say("      what other planners would pay on this fleet:")
            for name, text in baseline_costs(spec, nodes):
                say(f"        {name:<14} {text}")
            st = c.wait_ready("support-bot", 120)
            say(f"      workflow READY: {len(st.replicas)} replicas on "
                f"{', '.join(sorted({r['node'] for r in st.replicas}))}")
            n = 300
            say(f"[4/6] serving {n} requests (8 at a time) ...")
            res = serve(c, "support-bot", n)
            say(f"      {res['ok']}/{n} answered, {len(res['errors'])} errors; {res['rps']:.1f} req/s; "
                f"latency p50 {res['p50']:.0f} ms, p95 {res['p95']:.0f} ms, p99 {res['p99']:.0f} ms")
            sample = c.invoke("support-bot", {"text": "where is my parcel?"})
            say(f"      sample answer (random model): {sample['output']['text'][:60]!r}")
            say(f"      metrics: {fleet.metrics_url} (atoll_workflow_*, atoll_bytes_sent_total, atoll_nodes, ...)")
            used = {r["node"] for r in st.replicas}
            victim = "rent-us-west-1" if "rent-us-west-1" in used else sorted(used)[0]
            say(f"[5/6] {victim} vanishes without notice (kill -9) ...")
            gen0 = st.generation
            t_kill = time.monotonic()
            fleet.kill9(victim)
            fleet.wait_states({victim: "LOST"}, 15)
            say(f"      {victim} LOST after {time.monotonic() - t_kill:.1f} s; re-planning ...")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = c.status("support-bot")
                if st.generation > gen0 and st.state == "READY":
                    break
                time.sleep(0.3)
            if st.generation > gen0 and st.state == "READY":
                say(f"      re-planned in {time.monotonic() - t_kill:.1f} s: "
                    f"${st.plan['total_cost_per_hour']:.3f}/h on {', '.join(sorted({r['node'] for r in st.replicas}))}")
                res2 = serve(c, "support-bot", 50)
                say(f"      {res2['ok']}/50 answered after the loss")
            else:
                say(f"      workflow is {st.state}: {st.message}")
        say("[6/6] shutting down: agents drain, then the coordinator stops")
    finally:
        fleet.shutdown()
    say(f"done in {time.monotonic() - t0:.1f} s; logs in {work}")
    return 0
