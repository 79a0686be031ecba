"""What the CLI (and the demo) print: the node table and a plan with its replicas."""

from __future__ import annotations

from atoll.cli.table import render


def gpus_text(n) -> str:
    if not n.gpus:
        return "-"
    names = sorted({g["name"] for g in n.gpus})
    gib = sum(g["memory_total_bytes"] for g in n.gpus) / 2 ** 30
    return f"{len(n.gpus)}x {'/'.join(names)} ({gib:.0f} GiB)"


def node_table(nodes) -> str:
    rows = [[n.name, n.id[:12], n.state, n.tier, n.region, "yes" if n.trusted else "no", f"{n.price_per_hour:.2f}",
             gpus_text(n), f"{n.last_heartbeat_age_seconds:.1f}", "yes" if n.simulated else "no"] for n in nodes]
    return render(["NAME", "ID", "STATE", "TIER", "REGION", "TRUSTED", "$/H", "GPUS", "LAST-HB(S)", "SIMULATED"],
                  rows, "llllllrlrl")


def print_plan(plan: dict, replicas: list[dict] | None = None) -> None:
    rows = []
    for task, t in plan.get("tasks", {}).items():
        for r in t.get("replicas", []):
            rows.append([task, t["variant"], r["pool"], r["location"], r["replicas"], f"{r['rate']:.2f}",
                         f"{r['cost_per_hour']:.4f}"])
    print(render(["TASK", "VARIANT", "POOL", "LOCATION", "HOSTS", "REQ/S", "$/H"], rows, "llllrrr"))
    gap = plan.get("gap")
    print(f"total ${plan.get('total_cost_per_hour', 0):.4f}/h (compute ${plan.get('compute_cost_per_hour', 0):.4f}, "
          f"transfer ${plan.get('transfer_cost_per_hour', 0):.4f}); predicted accuracy {plan.get('accuracy', 0):.4f}; "
          f"{plan.get('planner')} {plan.get('status')}, gap {'-' if gap is None else f'{gap:.2%}'}, "
          f"{plan.get('solve_seconds', 0):.2f} s")
    if replicas:
        rrows = [[r["task"], r["variant"], r["node"], r["region"], r["tier"], r["state"], f"{r['weight']:.2f}",
                  r["message"][:60]] for r in replicas]
        print(render(["TASK", "VARIANT", "NODE", "REGION", "TIER", "STATE", "WEIGHT", "MESSAGE"], rrows, "llllllrl"))
