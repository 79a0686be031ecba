"""Planner benchmark: what every planner costs on the scenario families and JellyBean's VQA
example, and what the MILP proves on random fleets of 10 to 10,000 nodes.

    .venv/bin/python bench/planner_bench.py [--quick] [--time-limit 5] [--out PATH]
    .venv/bin/python bench/planner_bench.py --reference 180     # once: the independent long solves

Cases (``bench/planner_cases.py``): geo-distributed DAGs with a fan-out of three and a join of
three (``dag/NODES/sSEED/lLOAD``: 27 variants, LoRA bases shared across tasks, explicit accuracy
profiles, transfer prices, two capped uplinks; several seeds, 100 to 10,000 nodes) and the
random chains of the earlier scaling table (``chain/NODES/POOLS/TASKS/VARIANTS/sSEED``). Each
case runs in a fresh process: cost, proven gap and status, wall and CPU seconds, and the
process' peak RSS. ``--reference S`` solves every case once with the independent MILP of
``tests/planner/planner_ref_milp.py`` for S seconds and stores its best plan and bound in
``bench/results/planner_reference.json`` (with a fingerprint of the problem, so a changed
generator is noticed; solving a stored case again, with ``--cases``, keeps the best plan and
the best bound of both solves); a normal run reads them and checks that the bound the planner claims,
cost x (1 - gap), is never above the best plan known -- the reported gap never understates
the true one -- and gives the true gap's upper limit, (cost - reference bound) / cost.

Writes bench/results/planner.json (machine, load average, every figure) and prints the tables.
The target: every case proves a gap of at most 1% within 5 s. The machine may be shared: CPU
seconds stand beside wall seconds, and the load average is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "planner"))

from atoll.core.errors import PlanInfeasible  # noqa: E402
from atoll.planner.api import PLANNERS, PlanOptions, PlanProblem, problem_from_specs  # noqa: E402
from atoll.specs.cluster import load_cluster  # noqa: E402
from atoll.specs.workflow import load_workflow  # noqa: E402
import planner_ref_milp as reference  # noqa: E402  (tests/planner: the independent MILP)
from planner_cases import SCENARIOS, dag_problem, scaling_problem  # noqa: E402

RESULTS = REPO / "bench" / "results"
REFERENCE = RESULTS / "planner_reference.json"
VQA = REPO / "examples" / "planner" / "jellybean-vqa"

DAG_CASES = ([f"dag/{n}/s{s}/l0.05" for n in (100, 300, 1000, 2000, 5000, 10000) for s in (0, 1, 2)]
             + [f"dag/{n}/s{s}/l0.3" for n in (1000, 10000) for s in (0, 1)])
CHAIN_CASES = ([f"chain/{n}/{p}/{t}/{v}/s0" for n, p in ((10, 5), (100, 10), (1000, 50), (10000, 200))
                for t, v in ((2, 4), (4, 6), (8, 8), (12, 8)) if t <= n // 2]
               + [f"chain/10000/200/8/8/s{s}" for s in (1, 2, 3)])
QUICK_CASES = ["dag/100/s0/l0.05", "dag/2000/s0/l0.05", "dag/10000/s0/l0.05", "chain/100/10/4/6/s0",
               "chain/1000/50/8/8/s0", "chain/10000/200/8/8/s0"]


def build(case: str) -> PlanProblem:
    kind, *rest = case.split("/")
    if kind == "dag":
        nodes, seed, load = rest
        return dag_problem(int(nodes), int(seed[1:]), float(load[1:]))
    nodes, pools, tasks, variants, seed = rest
    return scaling_problem(int(nodes), int(pools), int(tasks), int(variants), seed=int(seed[1:]))


def _canonical(x) -> str:
    """repr without the dataclass fields left at their defaults: a field added to the problem
    types later (with a default) leaves the fingerprints of the problems made before it alone."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        parts = []
        for f in dataclasses.fields(x):
            v = getattr(x, f.name)
            if f.default is not dataclasses.MISSING and v == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and v == f.default_factory():
                continue
            parts.append(f"{f.name}={_canonical(v)}")
        return f"{type(x).__name__}({', '.join(parts)})"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_canonical(v) for v in x) + ")"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_canonical(v)}" for k, v in sorted(x.items())) + "}"
    return repr(x)


def fingerprint(pb: PlanProblem) -> str:
    return hashlib.sha256(_canonical(pb).encode()).hexdigest()[:16]


def vqa() -> PlanProblem:
    wf, catalog = load_workflow(VQA / "workflow.yaml")
    return problem_from_specs(wf, load_cluster(VQA / "cluster.yaml"), catalog)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "pulp": version("pulp"), "highspy": version("highspy")}


# ---------------------------------------------------------------- one case, in a fresh process
def run_case(case: str, time_limit: float, gap: float) -> dict:
    pb = build(case)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        p = PLANNERS["milp"](pb, options=PlanOptions(time_limit=time_limit, gap=gap))
        row = {"cost": p.total_cost_per_hour, "gap": p.gap, "status": p.status,
               "method": p.notes[0] if p.notes else ""}
    except PlanInfeasible as e:
        row = {"cost": None, "gap": None, "status": "infeasible", "error": str(e)}
    row.update({"case": case, "fingerprint": fingerprint(pb), "nodes": sum(q.count for q in pb.pools),
                "pools": len(pb.pools), "tasks": len(pb.tasks), "variants": sum(len(t.variants) for t in pb.tasks),
                "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return row


def reference_case(case: str, seconds: float) -> dict:
    pb = build(case)
    r = reference.solve(pb, time_limit=seconds)
    return {"case": case, "fingerprint": fingerprint(pb), "status": r.status, "cost": r.cost,
            "bound": r.bound, "seconds": r.seconds, "time_limit": seconds}


def in_fresh_processes(fn, args_list) -> list[dict]:
    """One fresh process per call (spawned, so each reports its own peak RSS)."""
    ctx = multiprocessing.get_context("spawn")
    out = []
    for args in args_list:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
            out.append(ex.submit(fn, *args).result())
        print("  " + _case_line(out[-1]), flush=True)
    return out


def merge_reference(old: dict | None, new: dict) -> dict:
    """A new reference solve of a case already stored: when both solved the same problem (same
    fingerprint), keep the best plan and the best bound either reached (both are valid)."""
    if old is None or old.get("fingerprint") != new["fingerprint"]:
        return new
    if old["status"] == "optimal" and new["status"] != "optimal":
        return old
    if new["status"] == "optimal":
        return new
    costs = [r["cost"] for r in (old, new) if r["cost"] is not None]
    bounds = [r["bound"] for r in (old, new) if r["bound"] is not None]
    return {**new, "cost": min(costs) if costs else None, "bound": max(bounds) if bounds else None}


# ---------------------------------------------------------------- checks against the reference
def check(row: dict, ref: dict | None) -> dict:
    """The claimed bound cost * (1 - gap) must not exceed the best plan known (the planner's or the
    reference's): else the gap understates the true one. With the reference's bound, the true
    gap is at most (cost - bound) / cost."""
    if ref is None or ref.get("fingerprint") != row["fingerprint"] or row["cost"] is None:
        return {"reference": None}
    cost, gap = row["cost"], row["gap"]
    best = min(cost, ref["cost"]) if ref["cost"] is not None else cost
    claimed = cost * (1 - gap) if gap is not None else None
    tol = 1e-6 * max(1.0, best)
    return {"reference": {k: ref[k] for k in ("status", "cost", "bound", "seconds", "time_limit")},
            "claimed_bound": claimed,
            "true_gap_at_most": None if ref["bound"] is None else max(0.0, (cost - ref["bound"]) / cost),
            "true_gap": (cost - ref["cost"]) / cost if ref["status"] == "optimal" else None,
            "gap_honest": claimed is None or claimed <= best + tol}


# ---------------------------------------------------------------- the families and JellyBean's example
def run_families(opts: PlanOptions) -> list[dict]:
    rows = []
    for fam, pb in [*((f, b(1.0)) for f, b in SCENARIOS.items()), ("jellybean-vqa", vqa())]:
        costs = {}
        for name, f in PLANNERS.items():
            t0 = time.perf_counter()
            try:
                p = f(pb, options=opts)
                costs[name] = {"total": p.total_cost_per_hour, "compute": p.compute_cost_per_hour,
                               "transfer": p.transfer_cost_per_hour, "accuracy": p.accuracy,
                               "nodes": p.nodes_used(), "seconds": time.perf_counter() - t0,
                               "gap": p.gap, "status": p.status, "variants": p.variants}
            except PlanInfeasible as e:
                costs[name] = {"total": None, "error": str(e)}
        try:
            up_cost = PLANNERS["milp"](pb, options=PlanOptions(**{**opts.__dict__, "data_up_only": True})).total_cost_per_hour
        except PlanInfeasible:
            up_cost = None
        milp = costs["milp"]["total"]
        savings = {n: (None if c.get("total") is None or milp is None else 1 - milp / c["total"])
                   for n, c in costs.items() if n != "milp"}
        rows.append({"family": fam, "tasks": len(pb.tasks), "pools": len(pb.pools),
                     "nodes": sum(p.count for p in pb.pools), "rate": pb.total_source_rate,
                     "planners": costs, "milp_saving_over": savings, "milp_up_only_total": up_cost,
                     "milp_up_only_saving_over_jellybean": (
                         None if up_cost is None or costs["jellybean"].get("total") is None
                         else 1 - up_cost / costs["jellybean"]["total"])})
    return rows


def run_solvers() -> list[dict]:
    """CBC (bundled with PuLP) against HiGHS (highspy through PuLP) on the same exact MILPs."""
    rows = []
    cases = [("vision", SCENARIOS["vision"](1.0)), ("rag", SCENARIOS["rag"](1.0)), ("fleet-300", SCENARIOS["fleet"](0.1)),
             ("random-1000x4", scaling_problem(1000, 50, 4, 6, seed=0))]
    for name, pb in cases:
        for solver in ("highs", "cbc"):
            opts = PlanOptions(time_limit=20.0, gap=0.005, solver=solver, method="exact")
            t0 = time.perf_counter()
            try:
                p = PLANNERS["milp"](pb, options=opts)
                row = {"cost": p.total_cost_per_hour, "gap": p.gap, "status": p.status}
            except PlanInfeasible as e:
                row = {"cost": None, "gap": None, "status": "infeasible", "error": str(e)}
            row.update({"case": name, "solver": solver, "seconds": time.perf_counter() - t0})
            rows.append(row)
            print(f"  {name:<14} {solver:<5} {row['seconds']:6.2f} s  cost {row['cost']}  gap {_pct(row['gap'])}",
                  flush=True)
    return rows


# ---------------------------------------------------------------- tables
def _pct(x) -> str:
    return "  n/a" if x is None else f"{100 * x:5.2f}%"


def _case_line(r: dict) -> str:
    if "wall_seconds" not in r:                                   # a reference solve
        return f"{r['case']:<26} reference {r['status']:<11} cost {r['cost']}  bound {r['bound']}  {r['seconds']:.0f} s"
    cost = "-" if r["cost"] is None else f"{r['cost']:,.2f}"
    return (f"{r['case']:<26} {r['nodes']:>6} {cost:>10} {_pct(r['gap']):>7} {r['status']:<10} "
            f"{r['wall_seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s  {r['peak_rss_mb']:5.0f} MB")


def print_tables(fam_rows, case_rows, solver_rows=()) -> None:
    names = list(PLANNERS)
    print("\nCost per planner ($/h) and the MILP's saving over each")
    print(f"{'family':<14} " + " ".join(f"{n:>14}" for n in names) + f" {'MILP up-only':>13}")
    for r in fam_rows:
        cells = []
        for n in names:
            c, s = r["planners"][n].get("total"), r["milp_saving_over"].get(n)
            text = "-" if c is None else f"{c:,.3f}"
            cells.append(f"{text + ('' if n == 'milp' or s is None else f' ({100 * s:.0f}%)'):>14}")
        up = r["milp_up_only_total"]
        print(f"{r['family']:<14} " + " ".join(cells) + f" {'-' if up is None else f'{up:,.3f}':>13}")
    print(f"\nMILP on every case (gap target 1%; wall and CPU seconds; peak RSS of the case's process)")
    print(f"{'case':<26} {'nodes':>6} {'$/h':>10} {'gap':>7} {'status':<10} {'wall':>8} {'cpu':>8} {'RSS':>7}"
          f" {'ref bound':>10} {'true gap <=':>11} honest")
    for r in case_rows:
        c = r.get("check", {})
        ref = c.get("reference")
        bound = "-" if not ref or ref["bound"] is None else f"{ref['bound']:,.2f}"
        honest = "-" if not ref else ("yes" if c["gap_honest"] else "NO")
        cost = "-" if r["cost"] is None else f"{r['cost']:,.2f}"
        print(f"{r['case']:<26} {r['nodes']:>6} {cost:>10} {_pct(r['gap']):>7} {r['status']:<10} "
              f"{r['wall_seconds']:>8.2f} {r['cpu_seconds']:>8.2f} {r['peak_rss_mb']:>7.0f} {bound:>10} "
              f"{_pct(c.get('true_gap_at_most')):>11} {honest}")
    if solver_rows:
        print("\nSolvers on the same exact MILP (time limit 20 s, gap target 0.5%)")
        for r in solver_rows:
            cost = "-" if r["cost"] is None else f"{r['cost']:,.2f}"
            print(f"{r['case']:<14} {r['solver']:<6} {r['seconds']:>8.2f} {cost:>10} {_pct(r['gap']):>7}")


def summary(rows: list[dict], time_limit: float) -> dict:
    met = [r for r in rows if r["gap"] is not None and r["gap"] <= 0.01 + 1e-9 and r["wall_seconds"] <= time_limit + 0.5]
    worst = max(rows, key=lambda r: (1.0 if r["gap"] is None else r["gap"], r["wall_seconds"]))
    checked = [r for r in rows if r.get("check", {}).get("reference")]
    return {"rows": len(rows), "met": len(met), "missed": [r["case"] for r in rows if r not in met],
            "worst": {k: worst[k] for k in ("case", "gap", "status", "wall_seconds", "cpu_seconds")},
            "checked_against_reference": len(checked),
            "understated": [r["case"] for r in checked if not r["check"]["gap_honest"]]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="six cases and the families (about two minutes)")
    ap.add_argument("--time-limit", type=float, default=5.0, help="MILP time limit per case, seconds")
    ap.add_argument("--cases", default=None, help="comma-separated case ids instead of the grid")
    ap.add_argument("--reference", type=float, default=None, metavar="SECONDS",
                    help="solve every case with the independent MILP for SECONDS and store the results")
    ap.add_argument("--no-families", action="store_true", help="skip the families and the solver table")
    ap.add_argument("--out", default=str(RESULTS / "planner.json"))
    a = ap.parse_args(argv)
    cases = a.cases.split(",") if a.cases else (QUICK_CASES if a.quick else DAG_CASES + CHAIN_CASES)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.reference is not None:
        stored = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        print(f"reference solves, {a.reference:g} s each ...", flush=True)
        for row in in_fresh_processes(reference_case, [(c, a.reference) for c in cases]):
            stored[row["case"]] = merge_reference(stored.get(row["case"]), row)
            REFERENCE.write_text(json.dumps(stored, indent=1, sort_keys=True))
        print(f"wrote {REFERENCE}")
        return 0
    refs = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    t0, load0 = time.perf_counter(), os.getloadavg()
    fam, solvers = [], []
    if not a.no_families:
        print("families ...", flush=True)
        fam = run_families(PlanOptions(time_limit=20.0, gap=0.005))
    print(f"cases ({len(cases)}, {a.time_limit:g} s each) ...", flush=True)
    rows = in_fresh_processes(run_case, [(c, a.time_limit, 0.01) for c in cases])
    for r in rows:
        r["check"] = check(r, refs.get(r["case"]))
    stale = [r["case"] for r in rows if r["case"] in refs and refs[r["case"]].get("fingerprint") != r["fingerprint"]]
    if stale:
        print(f"stored reference solves of another problem (fingerprint differs), not checked: {stale}; "
              f"rerun --reference for them", flush=True)
    if not (a.quick or a.no_families):
        print("solvers ...", flush=True)
        solvers = run_solvers()
    print_tables(fam, rows, solvers)
    summ = summary(rows, a.time_limit)
    print(f"\n{summ['met']}/{summ['rows']} cases prove gap <= 1% within {a.time_limit:g} s; worst: {summ['worst']}; "
          f"checked against the reference: {summ['checked_against_reference']}, understated: {summ['understated']}")
    out = {"machine": {**machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
           "command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "quick": a.quick,
           "wall_seconds": time.perf_counter() - t0, "time_limit": a.time_limit, "gap_target": 0.01,
           "families": fam, "cases": rows, "solvers": solvers, "summary": summ}
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.out} in {out['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
