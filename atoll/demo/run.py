"""``atoll demo``: a real small model served by a local fleet on loopback, as separate processes.

1. the model is SmolLM2-135M-Instruct (GGUF Q4_1, installed by set-up); three tenants' LoRA
   adapters are written with **random** weights at a small scale (not trained, see
   :mod:`atoll.demo.adapters`);
2. starts a coordinator (with its OpenAI-compatible door) and three agents — a datacenter host,
   a marketplace renter and an edge box in three regions, their GPUs simulated and shown as
   such, each serving the model on one CPU thread;
3. submits a two-stage workflow (answer a question, then say it in one short sentence; both
   stages chat with the model through its own template) with throughput and accuracy SLOs,
   prints the plan with its cost and what the baseline planners would cost on the same fleet;
4. asks a few real questions through the SDK and through the OpenAI door with the official
   ``openai`` client (one answer streamed), and prints the answers;
5. serves a burst of requests with a progress bar and prints latency and throughput;
6. the renter vanishes without notice (kill -9): it is detected LOST, the workflow is re-planned
   onto the remaining hosts and answers again; then everything shuts down (agents drain first).
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
from atoll.demo.adapters import gguf_shape, random_adapter
from atoll.demo.assets import SMOLLM2, model_file
from atoll.demo.fleet import LocalFleet
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
TENANTS = {"tenant-a": 20, "tenant-b": 21, "tenant-c": 23}      # adapter name -> random seed
ADAPTER_SCALE = 0.005       # each random adapter moves a projection's output by about 0.5%
QUESTIONS = ["What is the capital of France?", "What is the boiling point of water in Celsius?",
             "How many days are in a week?"]
DOOR_QUESTION = "What is the capital of Japan?"
# Each agent serves on one CPU thread: three agents share the machine's cores without their
# thread pools spinning against each other.
AGENT_ENV = {"OMP_NUM_THREADS": "1"}
BURST, AFTER_LOSS = 12, 6


def say(msg: str) -> None:
    print(msg, flush=True)


def demo_workflow(model: Path, adapters: Path) -> dict:
    """Two chat stages on SmolLM2: answer (the base model or tenant-a's adapter), then a short
    sentence (tenant-b or tenant-c). Throughput figures are declared per (simulated) hardware
    class, as a user would after profiling."""
    def variant(name, adapter, acc, a100, rtx, orin):
        v = {"name": name, "model": str(model), "accuracy": acc, "memory_gb": 2.0,
             "throughput": {"a100": a100, "rtx4090": rtx, "orin": orin}}
        if adapter:
            v.update(adapter=adapter, adapter_path=str(adapters / adapter), adapter_memory_gb=0.05)
        return v

    return {
        "name": "support-bot",
        "sources": [{"name": "users", "rate": 5, "region": "eu-west", "tier": "edge"}],
        "tasks": [
            {"name": "answer", "chat": True, "max_tokens": 32, "prompt": "{input}", "variants": [
                variant("base", None, 0.72, 40, 14, 3),
                variant("tenant-a", "tenant-a", 0.86, 36, 13, 2.5)]},
            {"name": "brief", "chat": True, "max_tokens": 24,
             "prompt": "Rewrite this answer as one short sentence: {input}", "variants": [
                variant("tenant-b", "tenant-b", 0.90, 30, 11, 2),
                variant("tenant-c", "tenant-c", 0.93, 20, 7, 1.2)]},
        ],
        "edges": [{"from": "users", "to": "answer", "size_kb": 2.0},
                  {"from": "answer", "to": "brief", "size_kb": 0.5}],
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
        client.invoke(name, {"text": QUESTIONS[i % len(QUESTIONS)]}, timeout=120)
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


def route_of(res: dict) -> str:
    return " -> ".join(f"{s['task']}@{s['node']}({s['variant']})" for s in res["stages"])


def ask_sdk(client) -> None:
    """The questions through the SDK, a few at once; each answer with the route it took."""
    with cf.ThreadPoolExecutor(len(QUESTIONS)) as ex:
        answers = list(ex.map(lambda q: client.invoke("support-bot", {"text": q}, timeout=120), QUESTIONS))
    for q, res in zip(QUESTIONS, answers):
        say(f"      Q: {q}\n      A: {res['output']['text'].strip()}\n         ({route_of(res)})")


def ask_door(url: str, adapter_model: str) -> None:
    """The OpenAI door with the official client: the workflow (streamed), then one adapter."""
    try:
        import openai      # the official client (in set-up's lock); only the demo's door step needs it
    except ImportError:
        say("      (the official openai client is not installed: `pip install openai` to see this step)")
        return
    oa = openai.OpenAI(base_url=url, api_key="demo", max_retries=0, timeout=120)
    say(f"      Q: {DOOR_QUESTION}")
    sys.stdout.write("      A (support-bot, streamed): ")
    usage = None
    for chunk in oa.chat.completions.create(model="support-bot", messages=[{"role": "user", "content": DOOR_QUESTION}],
                                            temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            sys.stdout.write(chunk.choices[0].delta.content)
            sys.stdout.flush()
        usage = chunk.usage or usage
    say(f"\n         ({usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens in the last stage)")
    r = oa.chat.completions.create(model=adapter_model, temperature=0, max_tokens=32,
                                   messages=[{"role": "user", "content": DOOR_QUESTION}])
    say(f"      A ({adapter_model}, one stage): {r.choices[0].message.content.strip()} "
        f"[finish: {r.choices[0].finish_reason}]")


def run(keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="atoll-demo-"))
    t0 = time.monotonic()
    say(f"atoll demo — working directory {work}")
    model = model_file(SMOLLM2)
    fleet = LocalFleet(work)
    say("[1/6] starting a coordinator (OpenAI door on) and three agents (separate processes; GPUs simulated) ...")
    try:
        fleet.start_coordinator()
        for spec in FLEET:
            fleet.start_agent(spec, env=AGENT_ENV)
        say(f"[2/6] model: SmolLM2-135M-Instruct ({model.name}, installed by set-up)\n"
            f"      tenants' adapters: RANDOM LoRA weights at a small scale (about {ADAPTER_SCALE:.1%} of each "
            f"projection's output), NOT trained:\n      the answers below are SmolLM2's own; the adapters only "
            "make each tenant's replica a distinct model")
        shape, std = gguf_shape(model)
        adapters = work / "adapters"
        for name, seed in TENANTS.items():
            random_adapter(adapters / name, shape, std, relative=ADAPTER_SCALE, seed=seed)
        if not fleet.wait_states({s["name"]: "READY" for s in FLEET}, 60):
            say(f"agents did not become READY in 60 s; logs are in {work}")
            return 1
        say(f"      coordinator {fleet.addr}, metrics {fleet.metrics_url}, OpenAI door {fleet.openai_url}")
        with fleet.client() as c:
            nodes = c.nodes()
            say(node_table(nodes))
            spec = demo_workflow(model, adapters)
            wf_path = work / "support-bot.yaml"
            wf_path.write_text(yaml.safe_dump(spec, sort_keys=False))
            say(f"[3/6] submitting {wf_path.name}: 5 req/s from eu-west edge users, end-to-end accuracy >= 0.75")
            st = c.submit(str(wf_path))
            print_plan(st.plan)
            say("      what other planners would pay on this fleet:")
            for name, text in baseline_costs(spec, nodes):
                say(f"        {name:<14} {text}")
            st = c.wait_ready("support-bot", 150)
            say(f"      workflow READY: {len(st.replicas)} replicas on "
                f"{', '.join(sorted({r['node'] for r in st.replicas}))} (each loaded the model)")
            say("[4/6] real questions, through the SDK (both stages chat through the model's own template):")
            ask_sdk(c)
            say("      ... and through the OpenAI-compatible door, with the official openai client:")
            ask_door(fleet.openai_url, f"{model.name}:tenant-a")
            say(f"[5/6] serving {BURST} requests (8 at a time) ...")
            res = serve(c, "support-bot", BURST)
            say(f"      {res['ok']}/{BURST} answered, {len(res['errors'])} errors; {res['rps']:.2f} req/s; "
                f"latency p50 {res['p50']:.0f} ms, p95 {res['p95']:.0f} ms")
            say(f"      metrics: {fleet.metrics_url} (atoll_workflow_*, atoll_bytes_sent_total, atoll_nodes, ...)")
            used = {r["node"] for r in st.replicas}
            victim = "rent-us-west-1" if "rent-us-west-1" in used else sorted(used)[0]
            say(f"[6/6] {victim} vanishes without notice (kill -9) ...")
            gen0 = st.generation
            t_kill = time.monotonic()
            fleet.kill9(victim)
            fleet.wait_states({victim: "LOST"}, 15)
            say(f"      {victim} LOST after {time.monotonic() - t_kill:.1f} s; re-planning ...")
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                st = c.status("support-bot")
                if st.generation > gen0 and st.state == "READY":
                    break
                time.sleep(0.3)
            if st.generation > gen0 and st.state == "READY":
                say(f"      re-planned in {time.monotonic() - t_kill:.1f} s: "
                    f"${st.plan['total_cost_per_hour']:.3f}/h on {', '.join(sorted({r['node'] for r in st.replicas}))}")
                res2 = serve(c, "support-bot", AFTER_LOSS)
                say(f"      {res2['ok']}/{AFTER_LOSS} answered after the loss")
                again = c.invoke("support-bot", {"text": QUESTIONS[0]}, timeout=120)
                say(f"      Q: {QUESTIONS[0]}\n      A: {again['output']['text'].strip()}\n         ({route_of(again)})")
            else:
                say(f"      workflow is {st.state}: {st.message}")
        say("      shutting down: agents drain, then the coordinator stops")
    finally:
        fleet.shutdown()
    say(f"done in {time.monotonic() - t0:.1f} s; logs in {work}")
    return 0
