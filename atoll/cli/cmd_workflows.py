"""atoll submit / workflows / status / delete / invoke / profile / push."""

from __future__ import annotations

import json
import sys
import time

from atoll.cli.views import print_plan


def _coord(p) -> None:
    p.add_argument("--coordinator", default=None, metavar="ADDR",
                   help="coordinator HOST:PORT (default $ATOLL_COORDINATOR or 127.0.0.1:7070)")


def _verb(sub, name: str, help: str, func, *positional: str, output: tuple[str, ...] = ()):
    """A sub-command ``name`` that runs ``func``: --coordinator, the ``positional`` arguments and,
    when ``output`` lists formats, ``--output`` (the first one the default)."""
    p = sub.add_parser(name, help=help)
    _coord(p)
    for arg in positional:
        p.add_argument(arg)
    if output:
        p.add_argument("--output", "-o", choices=list(output), default=output[0])
    p.set_defaults(func=func)
    return p


def register(sub) -> None:
    table = ("table", "json")
    p = _verb(sub, "submit", "submit a workflow: validate, plan on the live fleet, deploy", run_submit,
              output=table)
    p.add_argument("spec", help="workflow YAML")
    p.add_argument("--dry-run", action="store_true", help="plan only; store and deploy nothing")
    p.add_argument("--wait", action="store_true", help="wait until the workflow is READY")

    _verb(sub, "workflows", "list workflows", run_list, output=table)
    _verb(sub, "status", "a workflow's plan, replicas and profiles", run_status, "name", output=table)
    _verb(sub, "delete", "delete a workflow (its replicas are unloaded)", run_delete, "name")

    p = _verb(sub, "invoke", "run one request through a workflow", run_invoke, output=("text", "json"))
    p.add_argument("--entry", default=None, metavar="ADDR[,ADDR]",
                   help="invoke at these agents' entries, nearest first (default $ATOLL_ENTRIES; unset: "
                        "through the coordinator, which forwards to an entry)")
    p.add_argument("--region", default=None,
                   help="this client's region: its entries are preferred; without --entry, the coordinator is "
                        "asked once for the fleet's entries (default $ATOLL_REGION)")
    p.add_argument("name")
    p.add_argument("--input", required=True, help='JSON, e.g. \'{"text": "hello"}\'')
    p.add_argument("--stream", action="store_true", help="print the last stage's tokens as they come")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds (default 60)")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="completion budget of the last stage for this request (default: the spec's)")

    p = _verb(sub, "entries", "agents' entries, where clients invoke workflows (the data plane)", run_entries,
              output=table)
    p.add_argument("--region", default="", help="this region's entries first")
    p.add_argument("--workflow", default="", help="only entries that may take this workflow")

    p = _verb(sub, "profile", "measure a variant's throughput on a live agent and record it", run_profile,
              "workflow", "task")
    p.add_argument("--variant", default="")
    p.add_argument("--node", default="", help="node name or id (default: any node running it)")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)

    p = _verb(sub, "push", "upload a model or adapter directory to the coordinator's store", run_push, "path")
    p.add_argument("--kind", choices=["model", "adapter"], default="model")


def run_submit(ns) -> int:
    from atoll.client import Client

    with Client(ns.coordinator, timeout=60) as c:
        st = c.submit(ns.spec, dry_run=ns.dry_run)
        if ns.wait and not ns.dry_run:
            st = c.wait_ready(st.name)
    if ns.output == "json":
        print(json.dumps(st.to_dict(), indent=2))
    else:
        print(f"workflow {st.name}: {st.state}" + (f" ({st.message})" if st.message else ""))
        print_plan(st.plan, st.replicas)
    return 0


def run_list(ns) -> int:
    from atoll.cli.table import render
    from atoll.client import Client

    with Client(ns.coordinator) as c:
        wfs = c.workflows()
    if ns.output == "json":
        print(json.dumps(wfs, indent=2))
    elif not wfs:
        print("no workflows")
    else:
        print(render(["NAME", "STATE", "$/H", "ACCURACY", "READY"],
                     [[w["name"], w["state"], f"{w['cost_per_hour']:.4f}", f"{w['accuracy']:.4f}",
                       f"{w['ready_replicas']}/{w['replicas']}"] for w in wfs], "llrrr"))
    return 0


def run_status(ns) -> int:
    from atoll.cli.table import render
    from atoll.client import Client

    with Client(ns.coordinator) as c:
        st = c.status(ns.name)
    if ns.output == "json":
        print(json.dumps(st.to_dict(), indent=2))
        return 0
    print(f"workflow {st.name}: {st.state} — {st.message} (plan generation {st.generation})")
    cons = st.plan.get("constraints") or {}
    if cons.get("trusted_only"):
        print("constraints: trusted nodes only (no stage, and none of its data, on a node the operator does not trust)")
    if st.plan.get("on_demand_floor"):
        f = st.plan["on_demand_floor"]
        print(f"on-demand floor: {f['share']:.0%} of the rate on non-preemptible nodes (${f['cost_per_hour']:.3f}/h)")
    a = st.plan.get("autoscale")
    if a:
        print(f"autoscaled to {a['rate']:.2f} req/s: {a['reason']}")
    print_plan(st.plan, st.replicas)
    if st.autoscale_decisions:
        print("autoscaling decisions (the last few; `-o json` shows each one's inputs):")
        print(render(["TIME", "ACTION", "REQ/S FROM", "TO", "WHY"],
                     [[time.strftime("%H:%M:%S", time.localtime(d["unix"])), d["action"], f"{d['previous_rate']:.2f}",
                       f"{d['rate']:.2f}", d["reason"] + (f" => {d['outcome']}" if d["outcome"] else "")]
                      for d in st.autoscale_decisions[-5:]], "llrrl"))
    if st.cold_starts:
        print("cold starts (decision to serving; on the agent: fetch / load / warm-up):")
        print(render(["REPLICA", "NODE", "TOTAL S", "FETCH", "LOAD", "WARM-UP"],
                     [[c["replica"], c["node"], f"{c['seconds']:.2f}", f"{c['fetch']:.3f}", f"{c['load']:.3f}",
                       f"{c['warmup']:.3f}"] for c in st.cold_starts[-5:]], "llrrrr"))
    if st.profiles:
        print("throughput profiles (req/s per replica; the planner uses measured figures when present):")
        print(render(["VARIANT", "HARDWARE", "DECLARED", "MEASURED", "SOURCE"],
                     [[p["variant"], p["hardware"], f"{p['declared_rps']:.3f}",
                       f"{p['measured_rps']:.3f}" if p["measured_rps"] else "-", p["source"]] for p in st.profiles],
                     "llrrl"))
    return 0


def run_delete(ns) -> int:
    from atoll.client import Client

    with Client(ns.coordinator) as c:
        c.delete(ns.name)
    print(f"workflow {ns.name} deleted")
    return 0


def run_invoke(ns) -> int:
    from atoll.client import Client
    from atoll.core.errors import InvalidArgument

    try:
        json.loads(ns.input)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"--input is not JSON: {exc.msg}", hint='e.g. --input \'{"text": "hello"}\'') from None
    with Client(ns.coordinator, timeout=ns.timeout + 5, entries=ns.entry, region=ns.region) as c:
        if ns.stream:
            result = None
            for item in c.invoke(ns.name, ns.input, timeout=ns.timeout, stream=True, max_tokens=ns.max_tokens):
                if isinstance(item, str):
                    sys.stdout.write(item)
                    sys.stdout.flush()
                else:
                    result = item
            print()
        else:
            result = c.invoke(ns.name, ns.input, timeout=ns.timeout, max_tokens=ns.max_tokens)
    if ns.output == "json":
        print(json.dumps(result, indent=2))
    elif not ns.stream:
        out = result["output"]
        print(out.get("text") if "text" in out else json.dumps(out)[:2000])
    for s in (result or {}).get("stages", []):
        print(f"  {s['task']}: {s['variant']} on {s['node']} ({s['region']}) {s['seconds'] * 1000:.0f} ms"
              + (f", {s['attempts']} attempts" if s["attempts"] > 1 else ""), file=sys.stderr)
    return 0


def run_entries(ns) -> int:
    from atoll.cli.table import render
    from atoll.client import Client

    with Client(ns.coordinator) as c:
        es = c.entries(ns.region, ns.workflow)
    if ns.output == "json":
        print(json.dumps(es, indent=2))
    elif not es:
        print("no entries (no READY agent serves one)")
    else:
        print(render(["NODE", "REGION", "TIER", "ENTRY"], [[e["node_name"], e["region"], e["tier"], e["address"]]
                                                           for e in es], "llll"))
    return 0


def run_profile(ns) -> int:
    from atoll.client import Client

    with Client(ns.coordinator, timeout=600) as c:
        r = c.profile(ns.workflow, ns.task, ns.variant, ns.node, ns.requests, ns.concurrency)
    print(f"{r['variant']} on {r['node']} ({r['hardware']}): {r['requests_per_second']:.3f} req/s, "
          f"{r['tokens_per_second']:.1f} tokens/s over {r['requests']} requests (declared {r['declared_rps']:.3f} req/s); recorded")
    return 0


def run_push(ns) -> int:
    from atoll.client import Client

    def progress(done, total):
        sys.stderr.write(f"\rpushing {ns.path}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB")
        sys.stderr.flush()

    with Client(ns.coordinator, timeout=600) as c:
        name = c.push(ns.path, ns.kind, progress=progress)
    sys.stderr.write("\n")
    print(name)
    return 0
