"""The ``autoscaling:`` block of a workflow spec (see :mod:`atoll.coordinator.autoscaler`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from atoll.specs.common import Spec


class AutoscalingSpec(Spec):
    metric: Literal["in_flight", "queue_delay", "rate_only"] = Field(
        default="in_flight", description="per-replica signal: requests in flight, queueing delay (s), or the "
                                         "arrival rate alone (a reactive baseline)")
    target: float = Field(default=4.0, gt=0, le=10_000, description="target value of the metric per replica")
    min_replicas: int = Field(default=1, ge=0, le=10_000)
    max_replicas: int = Field(default=64, ge=1, le=10_000)
    scale_up_delay: float = Field(default=5.0, ge=0, le=3600, description="seconds above target before scaling out")
    scale_down_delay: float = Field(default=60.0, ge=0, le=86_400, description="seconds below before scaling in")
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
