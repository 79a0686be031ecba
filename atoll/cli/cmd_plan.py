"""``atoll plan``: plan a workflow on a cluster offline (no coordinator needed).

    atoll plan --workflow wf.yaml --cluster cluster.yaml [--planner milp|greedy|...]
               [--output table|json] [--explain] [--previous PLAN.json [--churn-penalty USD]]

``--previous`` re-plans against a plan written earlier by ``--output json``: the MILP charges
``--churn-penalty`` $/h per replica it moves, and every planner reports how many it moved.
"""

from __future__ import annotations

import argparse
import json
import sys

PLANNER_NAMES = ["milp", "greedy", "cloud_only", "most_accurate", "jellybean"]


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="plan a workflow on a cluster (offline)",
                              description="Choose variants and placements at least $/h.")
    p.add_argument("--workflow", required=True, help="workflow YAML")
    p.add_argument("--cluster", required=True, help="cluster YAML (pools, nodes, links)")
    p.add_argument("--planner", default="milp", choices=PLANNER_NAMES)
    p.add_argument("--output", default="table", choices=["table", "json"])
    p.add_argument("--explain", action="store_true", help="binding constraints and the cost of each SLO")
    p.add_argument("--time-limit", type=float, default=20.0, help="solver time limit, seconds")
    p.add_argument("--gap", type=float, default=0.005, help="relative optimality gap to stop at")
    p.add_argument("--solver", default="auto", choices=["auto", "highs", "cbc"])
    p.add_argument("--up-only", action="store_true", help="data may only move up the tiers (JellyBean)")
    p.add_argument("--previous", metavar="PLAN.json",
                   help="re-plan against this plan (as written by --output json): few replicas move")
    p.add_argument("--churn-penalty", type=float, default=None, metavar="USD",
                   help="$/h charged per replica moved against --previous (default 0.25)")
    p.set_defaults(func=run)


def load_previous(path: str):
    """The Plan a previous ``atoll plan --output json`` wrote to ``path``; SpecError otherwise."""
    from atoll.core.errors import SpecError
    from atoll.planner.api import Plan

    source = f"flag --previous {path}"
    hint = "give the JSON that `atoll plan --output json` printed"
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise SpecError(f"cannot read it: {e.strerror}", source=source, hint=hint) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"not valid JSON ({e})", source=source, hint=hint) from None
    try:
        if not isinstance(d, dict) or not isinstance(d.get("hosts"), list):
            raise TypeError("no hosts list")
        return Plan.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SpecError(f"not a plan ({type(e).__name__}: {e})", source=source, hint=hint) from None


def run(ns: argparse.Namespace) -> int:
    # imported here, not at the top: `atoll --help` (which registers every verb) stays fast
    # without loading PuLP, HiGHS and the specs
    from atoll.core.errors import SpecError
    from atoll.planner.api import PLANNERS, PlanOptions, explain, problem_from_specs
    from atoll.specs.cluster import check_hardware, load_cluster
    from atoll.specs.workflow import load_workflow

    if ns.time_limit <= 0:
        raise SpecError("must be > 0", source="flag --time-limit")
    if not 0 <= ns.gap < 1:
        raise SpecError("must be in [0, 1)", source="flag --gap")
    if ns.churn_penalty is not None and not ns.churn_penalty >= 0:
        raise SpecError("must be >= 0", source="flag --churn-penalty")
    if ns.churn_penalty is not None and ns.previous is None:
        raise SpecError("only means something with --previous", source="flag --churn-penalty")
    previous = load_previous(ns.previous) if ns.previous else None
    wf, catalog = load_workflow(ns.workflow)
    cluster = load_cluster(ns.cluster)
    profiled = {hw for vs in wf.resolved_variants(catalog).values() for v in vs
                for hw in (*v.throughput, *v.tokens_per_second)}
    for note in check_hardware(cluster, profiled, ns.cluster):
        print(f"note: {note}", file=sys.stderr)
    problem = problem_from_specs(wf, cluster, catalog, workflow_source=ns.workflow,
                                 cluster_source=ns.cluster)
    opts = PlanOptions(time_limit=ns.time_limit, gap=ns.gap, solver=ns.solver, data_up_only=ns.up_only,
                       **({} if ns.churn_penalty is None else {"churn_penalty": ns.churn_penalty}))
    plan = PLANNERS[ns.planner](problem, previous=previous, options=opts)
    info = explain(problem, plan, opts, replan=PLANNERS["milp"]) if ns.explain else None
    if ns.output == "json":
        d = plan.to_dict()
        if info:
            d["explain"] = info
        print(json.dumps(d, indent=2))
    else:
        print(format_table(problem, plan, info, previous=ns.previous))
    return 0


def format_table(problem, plan, info=None, previous: str | None = None) -> str:
    gap = "n/a" if plan.gap is None else f"{100 * plan.gap:.2f}%"
    lines = [f"plan {problem.name}  planner={plan.planner}  status={plan.status}  "
             f"solve {plan.solve_seconds:.2f} s  gap {gap}", ""]
    rows = [("TASK", "VARIANT", "POOL", "LOCATION", "NODES", "REQ/S", "UTIL", "$/H")]
    for r in plan.replicas:
        shared = " (shared)" if r.shared_with else ""
        rows.append((r.task, r.variant + shared, r.pool, r.location, str(r.replicas), f"{r.rate:.1f}",
                     f"{100 * r.utilization:.0f}%", f"{r.cost_per_hour:.3f}"))
    rows.append(("", "", "", "", "", "", "", ""))
    rows.append(("EDGE", "FROM", "TO", "", "MSG/S", "KB", "WEIGHT", "$/H"))
    for r in plan.routes:
        rows.append((f"{r.src}->{r.dst}", r.from_location, r.to_location, "", f"{r.rate:.1f}",
                     f"{r.size_kb:g}", f"{r.weight:.2f}", f"{r.cost_per_hour:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    slo = f" (SLO >= {problem.min_accuracy:g})" if problem.min_accuracy is not None else ""
    lines += ["", f"compute ${plan.compute_cost_per_hour:.3f}/h   transfer ${plan.transfer_cost_per_hour:.3f}/h   "
                  f"total ${plan.total_cost_per_hour:.3f}/h   nodes {plan.nodes_used()}   "
                  f"accuracy {plan.accuracy:.3f}{slo}"]
    if previous:
        lines.append(f"moved {plan.moved_replicas} replicas against {previous}")
    if info:
        lines += ["", "binding constraints:"]
        lines += [f"  - {b}" for b in info["binding"]] or ["  (none)"]
        lines += ["what each SLO costs:"]
        sc = info["slo_costs"]
        if "accuracy" in sc:
            lines.append(f"  - accuracy SLO: ${sc['accuracy']['slo_costs_per_hour']:.3f}/h "
                         f"(${sc['accuracy']['cost_without_slo']:.3f}/h without it)")
        th = sc["throughput"]
        lines.append(f"  - throughput: ${th['average_cost_per_req_s']:.4f}/h per req/s on average"
                     + ("" if th["marginal_cost_per_req_s"] is None else
                        f", ${th['marginal_cost_per_req_s']:.4f}/h per extra req/s (+10% load)"))
        if "data_up_only" in sc and sc["data_up_only"]["extra_per_hour"] is not None:
            lines.append(f"  - forbidding data to move down a tier would add "
                         f"${sc['data_up_only']['extra_per_hour']:.3f}/h")
    for n in plan.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
