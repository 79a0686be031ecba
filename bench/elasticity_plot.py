"""One picture per trace of the elasticity benchmark: for every policy on one time axis, the load,
the ready replicas, the planned cost ($/h) and the SLO misses, so a reader sees where a policy
overshoots or falls behind. Written with matplotlib (the ``test`` extra) as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")                 # files only, no display
import matplotlib.pyplot as plt       # noqa: E402

COLORS = {"atoll": "tab:blue", "static-peak": "tab:gray", "rate-only": "tab:orange", "atoll-storm": "tab:red"}
BUCKET_S = 2.0


def buckets(times: list[float], span: float, width: float = BUCKET_S) -> tuple[list[float], list[int]]:
    """Counts of ``times`` per ``width``-second bucket over [0, span): (bucket starts, counts)."""
    n = max(1, int(span // width) + 1)
    counts = [0] * n
    for t in times:
        i = int(t // width)
        if 0 <= i < n:
            counts[i] += 1
    return [i * width for i in range(n)], counts


def plain(text: str) -> str:
    """``text`` as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def draw(trace: dict, runs: dict, out: Path, title: str, load_curve: tuple[list[float], list[float], list[float]]) -> Path:
    """``runs[policy]`` holds ``timeline`` ({"t", "ready", "cost"} lists) and ``miss_times`` (send
    times of the requests that missed their SLO); ``load_curve`` is (t, requests/s, work/s in
    64-token requests) of the trace."""
    span = trace["duration_s"]
    fig, axes = plt.subplots(4, 1, figsize=(11, 9), sharex=True, gridspec_kw={"height_ratios": [1.2, 1, 1, 0.9]})
    t, req, work = load_curve
    axes[0].plot(t, req, color="black", lw=1.2, label="arrivals (req/s)")
    axes[0].plot(t, work, color="black", lw=1.0, ls="--", label="work (64-token req/s)")
    axes[0].set_ylabel("load")
    for policy, r in runs.items():
        tl = r.get("timeline") or {}
        c = COLORS.get(policy)
        if tl.get("t"):
            axes[1].step(tl["t"], tl["ready"], where="post", color=c, lw=1.1, label=policy)
            axes[2].step(tl["t"], tl["cost"], where="post", color=c, lw=1.1, label=policy)
        starts, counts = buckets(r.get("miss_times", []), span)
        axes[3].step(starts, counts, where="post", color=c, lw=1.1,
                     label=f"{policy}: {r.get('slo_misses', 0)} misses")
        storm = (r.get("storm") or {}).get("storm_at_s")
        if storm is not None:
            for ax in axes:
                ax.axvline(storm, color=c, ls=":", lw=1.0)
    axes[1].set_ylabel("ready replicas")
    axes[2].set_ylabel(plain("plan $/h"))
    axes[3].set_ylabel(f"SLO misses / {BUCKET_S:g} s")
    axes[3].set_xlabel(f"seconds into the trace (one day = {trace['day_s']:g} s; dotted: the preemption storm)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=4)
    axes[0].set_title(plain(title), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
