"""Autoscaling decisions: pure functions from measured load to the request rate to plan for.

The planner sizes a workflow for a request rate. The autoscaler watches what the fleet measures
— requests in flight per replica (or queueing delay), the arrival rate, and idle time — and
decides when the workflow should be re-planned for another rate. It returns a decision value; the
coordinator carries it out (re-plan with the churn penalty, so replicas that serve well stay).

Policy (per workflow, from the spec's ``autoscaling:`` block)::

    metric: in_flight | queue_delay   the per-replica signal (not only the request rate)
    target: 4                         its target value per ready replica
    min_replicas / max_replicas       bounds on replicas per stage
    scale_up_delay: 5                 seconds above the band before scaling out
    scale_down_delay: 60              seconds below the band before scaling in
    scale_to_zero: false              allow zero replicas after idle_seconds without requests
    idle_seconds: 120

Let ``U`` be the utilisation signal: mean in-flight requests per ready replica divided by
``target`` (or the mean queue delay over ``target``). The plan's rate ``R`` is kept while
``0.5 <= U <= 1``. Above the band for ``scale_up_delay`` seconds the new rate is
``max(R * U, arrivals) * headroom``; below it for ``scale_down_delay`` seconds it is
``max(arrivals * headroom, R * U * headroom)`` (never below the declared ``min_rate``). The
``rate_only`` policy (a baseline) ignores ``U`` and follows the arrival rate alone, the way a
reactive autoscaler keyed on requests/s does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

HEADROOM = 1.25


@dataclass(frozen=True)
class Policy:
    metric: Literal["in_flight", "queue_delay", "rate_only"] = "in_flight"
    target: float = 4.0
    min_replicas: int = 1
    max_replicas: int = 64
    scale_up_delay: float = 5.0
    scale_down_delay: float = 60.0
    scale_to_zero: bool = False
    idle_seconds: float = 120.0


@dataclass(frozen=True)
class Sample:
    """One observation of a workflow (every reconcile pass)."""

    now: float
    arrivals_per_s: float          # requests/s over the last window
    in_flight: float               # requests in flight in the workflow now
    queue_delay_s: float           # mean queueing delay at the replicas (agents' reports)
    ready_replicas: int            # ready replicas of the busiest stage
    last_request_at: float         # monotonic time of the last request (or -inf)


@dataclass
class State:
    """What the autoscaler remembers between samples (mutated only by ``decide``'s caller)."""

    above_since: Optional[float] = None
    below_since: Optional[float] = None
    last_change: float = float("-inf")


@dataclass(frozen=True)
class Decision:
    action: Literal["keep", "scale", "to_zero", "from_zero"]
    rate: float = 0.0
    reason: str = ""
    state: State = field(default_factory=State)


def utilisation(policy: Policy, s: Sample) -> float:
    if s.ready_replicas <= 0:
        return float("inf") if s.in_flight > 0 else 0.0
    if policy.metric == "queue_delay":
        return s.queue_delay_s / policy.target
    return (s.in_flight / s.ready_replicas) / policy.target


def decide(policy: Policy, s: Sample, plan_rate: float, min_rate: float, state: State,
           scaled_to_zero: bool = False) -> Decision:
    """Pure: the decision for this sample, and the autoscaler state to keep."""
    st = State(state.above_since, state.below_since, state.last_change)
    if scaled_to_zero:
        if s.in_flight > 0 or s.arrivals_per_s > 0:
            return Decision("from_zero", max(min_rate, s.arrivals_per_s * HEADROOM), "a request arrived", st)
        return Decision("keep", 0.0, "idle at zero", st)
    if policy.scale_to_zero and s.in_flight == 0 and s.now - s.last_request_at >= policy.idle_seconds:
        return Decision("to_zero", 0.0, f"no request for {policy.idle_seconds:.0f} s", State(last_change=s.now))
    if policy.metric == "rate_only":
        u = s.arrivals_per_s / plan_rate if plan_rate > 0 else float("inf")
    else:
        u = utilisation(policy, s)
    if u > 1.0:
        st.below_since = None
        st.above_since = st.above_since if st.above_since is not None else s.now
        if s.now - st.above_since >= policy.scale_up_delay:
            base = max(plan_rate * min(u, 4.0), s.arrivals_per_s) if policy.metric != "rate_only" else s.arrivals_per_s
            new = max(min_rate, base * HEADROOM)
            if new > plan_rate * 1.05:
                return Decision("scale", new, f"utilisation {u:.2f} above 1 for {s.now - st.above_since:.0f} s",
                                State(last_change=s.now))
        return Decision("keep", plan_rate, f"utilisation {u:.2f}", st)
    if u < 0.5:
        st.above_since = None
        st.below_since = st.below_since if st.below_since is not None else s.now
        if s.now - st.below_since >= policy.scale_down_delay:
            want = s.arrivals_per_s * HEADROOM if policy.metric == "rate_only" else max(
                s.arrivals_per_s * HEADROOM, plan_rate * u * HEADROOM)
            new = max(min_rate, want)
            if new < plan_rate * 0.8:
                return Decision("scale", new, f"utilisation {u:.2f} below 0.5 for {s.now - st.below_since:.0f} s",
                                State(last_change=s.now))
        return Decision("keep", plan_rate, f"utilisation {u:.2f}", st)
    return Decision("keep", plan_rate, f"utilisation {u:.2f} in band", State(last_change=st.last_change))
