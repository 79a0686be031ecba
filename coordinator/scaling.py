"""Autoscaling decisions: from one snapshot of a workflow's measured load to the request rate it
should be planned for. Pure: :func:`decide` reads a :class:`Sample`, the plan's rate and the
:class:`State` it returned last time, and returns a :class:`Decision` (the new state inside);
the clock is the sample's ``now``. :mod:`atoll.coordinator.autoscaler` measures the samples and
carries the decisions out.

Notation (one workflow, one decision; rates in requests/s of the size the throughput profile was
declared for, i.e. the planner's unit)::

    λ   arrivals/s over a long window (the pass's: the last 128 arrivals, or 4ρ if fewer came)
    n1  arrivals in the last ρ;  n2  arrivals in the ρ before it
    n0  arrivals in the last decision interval (PASS_S)
    w   work per request: finished requests' completion tokens / the task's (1 until measured)
    q   requests waiting at the workflow's replicas
    R   the rate the current plan is sized for
    ρ   reaction time: measured seconds from a replica appearing in the plan to it serving,
        plus one decision interval (``REACTION_DEFAULT_S`` until a replica start was measured)
    h   ``headroom`` (1.0)     s   ``max_step`` (2)     z   ``noise_z`` (1.25): Poisson deviations

The ``demand`` metric (the default)::

    D  = λ · w, or the largest of n1 / ρ · w and n0 / PASS_S · w that is above λ · w by more
         than noise: (n1 - z √n1) / ρ · w > λ · w, (n0 - (z + 0.75) √n0) / PASS_S · w > λ · w
                                       measured demand: the arrivals of the last ρ, or of the
                                       last pass (n0, one second: a sharp rise shows there
                                       first; a short window, so it needs more evidence),
                                       stand for it when they are above the long window by
                                       more than noise (a count n is n ± √n)
    F  = D + min((n1 - n2) / ρ · w, a · D)   when n1 - n2 > z √(n1 + n2), else D
                                       short-horizon forecast (off by default: a =
                                       ``forecast_cap`` = 0): a significant rise over the
                                       last reaction time, carried one reaction ahead
    P  = max over the kept past of D(t_i) · 2^(-(t - t_i) / H)
                                       decaying floor from the recent peak
                                       (H = ``peak_half_life``, 2ρ unset)
    B  = min(w · q / ρ, D)   if every planned replica is ready, else 0
                                       queued work cleared within one reaction
                                       (at most doubling the demand)
    T  = max(min_rate, h · (max(F, P) + B))      the rate to plan for

``h`` is 1 by default: a plan already rounds up to whole replicas and a replica's declared
throughput is a rate it sustains, not its limit; the short windows, the floor and the queue
term carry the margin, and each of them says so in the decision's reason.

Why these defaults (``bench/autoscaler_replay.py`` replays :func:`decide` on the benchmark's
traces with a queueing model of the simulated fleet, many seeds in seconds): a low ``z`` and
the one-second window catch a sharp rise sooner, and the false alarms they also raise cost
little because a plan comes down one pass after the demand is back (not one ρ) and the floor
halves every 2ρ (not 4ρ). The trend forecast added cost without removing misses, so it is off
unless ``forecast_cap`` is set. ``docs/benchmarks.md`` has the replay's and the benchmark's
figures for these defaults and the earlier ones.
``rate_only`` (a baseline) plans for ``h · λ``: no work per request, trend, floor or queue.
``in_flight`` and ``queue_delay`` plan for ``h · max(R · U, D)``, where ``U`` is requests in
flight per ready replica (or the queueing delay ``q / λ``) over ``target``.

Hysteresis and bounds: the plan moves up when ``T > (1 + UP_BAND) R`` has held for
``scale_up_delay`` (0: at once), to ``min(T, s R)``; down when ``T < (1 - DOWN_BAND) R`` has held
for ``scale_down_delay`` (unset: one pass, i.e. seen on two passes in a row) and every planned
replica serves, to ``max(T, R / s)``. A plan whose replicas are still starting is not judged
too big before it exists (it scales in anyway after ``2ρ`` more, so a replica that never starts
does not pin it). So one decision changes the planned
rate by at most a factor ``s`` either way, a burst is followed in steps as its demand is
measured (never by the queue it causes while replicas start), and the floor keeps the capacity a
peak needed for a few reaction times, so a lull just before the next rise does not scale in.
Every delay and window is a multiple of the measured ρ, so the same defaults serve a fleet whose
replicas start in a second and one whose replicas start in minutes.
Scale to zero: after ``idle_seconds`` without a request and none in flight; the first request
afterwards plans for ``max(min_rate, h λ w)``.

Every decision carries its :class:`Signals` (inputs and intermediate figures) and a reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

from atoll.specs.autoscaling import AutoscalingSpec

PASS_S = 1.0                 # the coordinator decides for every workflow once a second
UP_BAND = 0.05               # re-plan up when the target is more than 5% above the plan
DOWN_BAND = 0.05             # ... and down when it is more than 5% below
REACTION_DEFAULT_S = 30.0    # reaction time assumed before a replica start was measured
FLOOR_REACTIONS = 2.0
LAST_PASS_EXTRA_Z = 0.75     # the last pass's count (one second) needs z + 0.75 deviations
KEEP_HALF_LIVES = 4.0        # demand history kept: four floor half-lives (and at least 2ρ)

Metric = Literal["demand", "in_flight", "queue_delay", "rate_only"]


@dataclass(frozen=True)
class Policy:
    # what is measured, and the aim
    metric: Metric = "demand"
    target: float = 4.0
    headroom: float = 1.0
    noise_z: float = 1.25                         # move only on evidence beyond z Poisson deviations
    forecast_cap: float = 0.0                     # the trend forecast adds at most this share of D
    # how far and how soon one decision moves
    max_step: float = 2.0
    scale_down_delay: Optional[float] = None      # None: one pass (PASS_S)
    scale_up_delay: float = 0.0
    peak_half_life: Optional[float] = None        # None: two reaction times
    # bounds
    min_replicas: int = 1
    max_replicas: int = 64
    scale_to_zero: bool = False
    idle_seconds: float = 120.0


def policy_of(a: AutoscalingSpec) -> Policy:
    return Policy(metric=a.metric, target=a.target, headroom=a.headroom, max_step=a.max_step, noise_z=a.noise_z,
                  forecast_cap=a.forecast_cap,
                  min_replicas=a.min_replicas, max_replicas=a.max_replicas, scale_up_delay=a.scale_up_delay,
                  scale_down_delay=a.scale_down_delay, peak_half_life=a.peak_half_life,
                  scale_to_zero=a.scale_to_zero, idle_seconds=a.idle_seconds)


@dataclass(frozen=True)
class Sample:
    """One observation of a workflow, taken before every decision."""

    now: float
    arrivals_per_s: float              # λ, over the last window
    recent: int = -1                   # arrivals in the last ρ (-1: not counted) ...
    previous: int = -1                 # ... and in the ρ before it
    last_pass: int = -1                # arrivals in the last PASS_S (-1: not counted)
    work_per_request: float = 1.0      # w
    queued: float = 0.0                # q: requests waiting at the workflow's replicas
    in_flight: float = 0.0             # requests in flight in the workflow (the coordinator's count)
    ready_replicas: int = 0            # of the busiest stage, on READY nodes
    planned_replicas: int = 0          # of that stage, in the plan
    last_request_at: float = 0.0       # of the last request, or when the workflow became ready to
                                       # serve if that came later (idle time counts from there)
    reaction_s: float = REACTION_DEFAULT_S   # ρ

    @property
    def queue_delay_s(self) -> float:
        """Little's law over the waiting requests: q / λ."""
        return self.queued / max(self.arrivals_per_s, 1e-3)


@dataclass(frozen=True)
class State:
    """What a decision leaves for the next one."""

    history: tuple[tuple[float, float], ...] = ()     # (time, D) of past decisions, oldest first
    above_since: Optional[float] = None
    below_since: Optional[float] = None


@dataclass(frozen=True)
class Signals:
    """A decision's inputs and intermediate figures (the names of the module docstring)."""

    arrivals: float = 0.0          # λ
    work: float = 1.0              # w
    demand: float = 0.0            # D
    trend: float = 0.0             # slope of D, per second
    forecast: float = 0.0          # F
    floor: float = 0.0             # P
    queued: float = 0.0            # q
    backlog: float = 0.0           # B
    in_flight: float = 0.0
    utilisation: float = 0.0       # U (in_flight / queue_delay metrics)
    ready: int = 0
    planned_replicas: int = 0
    reaction_s: float = 0.0        # ρ
    plan_rate: float = 0.0         # R
    target_rate: float = 0.0       # T

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Decision:
    action: Literal["keep", "scale", "to_zero", "from_zero"]
    rate: float = 0.0
    reason: str = ""
    state: State = field(default_factory=State)
    signals: Signals = field(default_factory=Signals)

    @property
    def direction(self) -> str:
        """``up`` / ``down`` for a scale decision, else the action."""
        if self.action != "scale":
            return self.action
        return "up" if self.rate > self.signals.plan_rate else "down"


def utilisation(policy: Policy, s: Sample) -> float:
    """U: in-flight requests per ready replica (or the queueing delay) over ``target``."""
    if policy.metric == "queue_delay":
        return s.queue_delay_s / policy.target
    if s.ready_replicas <= 0:
        return math.inf if s.in_flight > 0 else 0.0
    return (s.in_flight / s.ready_replicas) / policy.target


def peak_floor(points: tuple[tuple[float, float], ...], now: float, half_life: float) -> float:
    """max_i y_i · 2^(-(now - t_i) / half_life)."""
    return max((y * 0.5 ** ((now - t) / half_life) for t, y in points), default=0.0)


def decide(policy: Policy, s: Sample, plan_rate: float, min_rate: float, state: State,
           scaled_to_zero: bool = False) -> Decision:
    """Pure: the decision for this sample, and the state to pass to the next call."""
    rho = max(s.reaction_s, PASS_S)
    h, step = policy.headroom, policy.max_step
    work = s.work_per_request if policy.metric != "rate_only" else 1.0
    base = Signals(arrivals=s.arrivals_per_s, work=work, queued=s.queued, in_flight=s.in_flight,
                   ready=s.ready_replicas, planned_replicas=s.planned_replicas, reaction_s=rho,
                   plan_rate=plan_rate)
    if scaled_to_zero:
        if s.in_flight > 0 or s.arrivals_per_s > 0:
            rate = max(min_rate, h * s.arrivals_per_s * work)
            return Decision("from_zero", rate, "a request arrived", state, _with(base, target_rate=rate))
        return Decision("keep", 0.0, "idle at zero", state, base)
    if policy.scale_to_zero and s.in_flight == 0 and s.now - s.last_request_at >= policy.idle_seconds:
        return Decision("to_zero", 0.0, f"no request for {policy.idle_seconds:g} s", State(), base)

    demand = s.arrivals_per_s * work
    z = policy.noise_z
    trend = 0.0
    if s.recent >= 0:
        # Two disjoint windows of one reaction time: n1 arrivals in the last, n2 in the one before
        # (Poisson: a count n is n ± sqrt(n)). The last one stands for the demand when it is above
        # the long window by more than z deviations; their difference is a rise when it is more
        # than z deviations of the difference.
        n1, n2 = s.recent, max(s.previous, 0)
        long = demand
        # the last pass's arrivals too (n0 in one PASS_S): a sharp rise shows there first
        for n, window, zz in ((n1, rho, z), (s.last_pass, PASS_S, z + LAST_PASS_EXTRA_Z)):
            if n >= 0 and (n - zz * math.sqrt(n)) / window * work > long:
                demand = max(demand, n / window * work)
        if s.previous >= 0 and n1 - n2 > z * math.sqrt(n1 + n2):
            trend = (n1 - n2) / rho / rho * work
    u = 0.0
    if policy.metric in ("in_flight", "queue_delay"):
        u = utilisation(policy, s)
        demand = max(plan_rate * min(u, step * h), demand)
    half = policy.peak_half_life or FLOOR_REACTIONS * rho
    keep_s = max(KEEP_HALF_LIVES * half, 2.0 * rho)
    history = tuple(p for p in state.history if s.now - p[0] <= keep_s) + ((s.now, demand),)
    floor = backlog = 0.0
    if policy.metric != "demand":
        trend = 0.0
    else:
        floor = peak_floor(history, s.now, half)
        if s.ready_replicas >= s.planned_replicas:
            backlog = min(work * s.queued / rho, demand)
    ahead = min(trend * rho, policy.forecast_cap * demand)
    forecast = demand + ahead
    target = max(min_rate, h * (max(forecast, floor) + backlog))
    sig = _with(base, demand=demand, trend=trend, forecast=forecast, floor=floor, backlog=backlog,
                utilisation=u, target_rate=target)
    why = _explain(policy, sig)

    if target > (1 + UP_BAND) * plan_rate:
        since = state.above_since if state.above_since is not None else s.now
        if s.now - since >= policy.scale_up_delay:
            new = target if plan_rate <= 0 else min(target, step * plan_rate)
            bound = f"; one step is at most x{step:g}" if new < target else ""
            return Decision("scale", new, f"up: {why} above the plan {plan_rate:.2f}{bound}",
                            State(history), sig)
        return Decision("keep", plan_rate, f"{why} above the plan for {s.now - since:.0f} s",
                        State(history, above_since=since), sig)
    if target < (1 - DOWN_BAND) * plan_rate:
        since = state.below_since if state.below_since is not None else s.now
        delay = policy.scale_down_delay if policy.scale_down_delay is not None else PASS_S
        starting = s.ready_replicas < s.planned_replicas and s.now - since < delay + 2 * rho
        if s.now - since >= delay and not starting:
            new = max(target, plan_rate / step)
            bound = f"; one step is at most /{step:g}" if new > target else ""
            return Decision("scale", new, f"down: {why} below the plan {plan_rate:.2f} for "
                                          f"{s.now - since:.0f} s{bound}", State(history), sig)
        wait = (f"; {s.planned_replicas - s.ready_replicas} planned replica(s) still starting"
                if s.now - since >= delay else "")
        return Decision("keep", plan_rate, f"{why} below the plan for {s.now - since:.0f} s{wait}",
                        State(history, below_since=since), sig)
    return Decision("keep", plan_rate, f"{why} within the plan {plan_rate:.2f}", State(history), sig)


def _with(sig: Signals, **changes) -> Signals:
    return Signals(**{**asdict(sig), **changes})


def _explain(policy: Policy, g: Signals) -> str:
    """The figures behind a target rate, in words."""
    if policy.metric == "rate_only":
        return f"target {g.target_rate:.2f} = {policy.headroom:g} x arrivals {g.arrivals:.2f}/s"
    if policy.metric in ("in_flight", "queue_delay"):
        return (f"target {g.target_rate:.2f} = {policy.headroom:g} x max(plan x utilisation {g.utilisation:.2f}, "
                f"arrivals {g.arrivals:.2f}/s x work {g.work:.2f})")
    parts = [f"demand {g.demand:.2f} (arrivals {g.arrivals:.2f}/s x work {g.work:.2f})"]
    if g.forecast > g.demand + 1e-9:
        parts.append(f"forecast {g.forecast:.2f}")
    if g.floor > max(g.forecast, g.demand) + 1e-9:
        parts.append(f"recent-peak floor {g.floor:.2f}")
    if g.backlog > 0:
        parts.append(f"+ {g.queued:.0f} queued -> {g.backlog:.2f}/s")
    return f"target {g.target_rate:.2f} = {policy.headroom:g} x " + ", ".join(parts)
