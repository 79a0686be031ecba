"""The ``autoscaling:`` block of a workflow spec (see :mod:`atoll.coordinator.autoscaler`).

Every field has a default meant to work without tuning: ``autoscaling: {}`` follows the measured
demand, with delays and memory derived from the workflow's own measured reaction time (how long
a scale-up takes to serve) rather than fixed seconds.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from atoll.specs.common import Spec


class AutoscalingSpec(Spec):
    metric: Literal["demand", "in_flight", "queue_delay", "rate_only"] = Field(
        default="demand", description="what the planned rate follows: the measured demand (arrivals x work per "
                                       "request, recent peak and trend, queued requests), requests in flight per "
                                       "replica, queueing delay (s) per replica, or the arrival rate alone (a "
                                       "reactive baseline)")
    target: float = Field(default=4.0, gt=0, le=10_000, description="in_flight / queue_delay: the metric's target "
                                                                      "value per ready replica")
    headroom: float = Field(default=1.0, ge=1.0, le=10.0, description="plan for this multiple of the demand "
                            "(the short windows, the recent-peak floor and the queued work already add a margin)")
    max_step: float = Field(default=2.0, gt=1.0, le=100.0, description="the most one decision multiplies (or "
                                                                        "divides) the planned rate by")
    noise_z: float = Field(default=1.25, ge=0.0, le=10.0, description="a recent rise counts when it exceeds this "
                                                                      "many Poisson deviations of the arrival counts")
    forecast_cap: float = Field(default=0.0, ge=0.0, le=10.0, description="demand: carry a significant rise one "
                                "reaction time ahead, adding at most this share of the demand (0: no forecast)")
    min_replicas: int = Field(default=1, ge=0, le=10_000)
    max_replicas: int = Field(default=64, ge=1, le=10_000)
    scale_up_delay: float = Field(default=0.0, ge=0, le=3600, description="seconds above the plan before scaling "
                                                                          "out (0: at the next decision)")
    scale_down_delay: Optional[float] = Field(
        default=None, ge=0, le=86_400, description="seconds below the plan before scaling in; unset: one "
                                                   "decision interval (the drop seen on two decisions in a row)")
    peak_half_life: Optional[float] = Field(
        default=None, gt=0, le=86_400, description="half-life (s) of the floor the recent peak of demand "
                                                   "leaves; unset: two reaction times")
    scale_to_zero: bool = Field(default=False, description="allow zero replicas when idle")
    idle_seconds: float = Field(default=120.0, gt=0, le=86_400, description="idle time before scaling to zero")
    on_demand_floor: float = Field(default=0.0, ge=0, le=1, description="share of the rate that must be served "
                                   "by non-preemptible nodes, so losing every spot host keeps a minimum serving")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError("min_replicas 0 needs scale_to_zero: true")
        return self
