"""PlanOptions: the knobs every planner takes (the MILP's solver settings and the policies the
baselines share)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PlanOptions:
    """Solver and policy knobs. ``churn_penalty`` is $/h charged per replica moved against
    ``previous``; ``data_up_only`` forbids data moving to a lower tier (JellyBean's rule)."""

    time_limit: float = 20.0
    gap: float = 0.005
    solver: str = "auto"            # auto | highs | cbc
    data_up_only: bool = False
    churn_penalty: float = 0.25
    fallback: bool = True
    explain: bool = False
    threads: Optional[int] = None
    method: str = "auto"            # auto | exact | decompose (see atoll.planner.two_phase)
    decompose_above: int = 400      # auto: two-phase above this many node-count integers
    phase1_share: float = 0.65      # two-phase: share of the time limit for the variant phase
