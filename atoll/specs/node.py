"""An agent's node.yaml: what a host cannot know about itself.

Example::

    name: dc-a100-1
    tier: datacenter          # datacenter | renter | edge
    region: us-east
    zone: us-east-1a
    price_per_hour: 2.10      # USD
    preemptible: false
    labels: {provider: aws}
    simulated_hardware:       # optional: declare GPUs for tests and demos (marked simulated)
      gpus:
        - {name: "NVIDIA A100-SXM4-80GB", memory_gb: 80, compute_capability: "8.0"}
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from atoll.specs.common import Spec

Tier = Literal["datacenter", "renter", "edge"]
TIERS: tuple[str, ...] = ("datacenter", "renter", "edge")
# Trust order: data born at an edge box may move "up" to a renter or datacenter host.
TIER_RANK = {"edge": 0, "renter": 1, "datacenter": 2}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class SimulatedGpu(Spec):
    name: str = Field(min_length=1, max_length=128, description="GPU model name, e.g. 'NVIDIA L4'")
    memory_gb: float = Field(gt=0, le=4096, description="GPU memory in GiB")
    compute_capability: str = Field(default="8.0", pattern=r"^\d+\.\d+$")
    count: int = Field(default=1, ge=1, le=64, description="how many GPUs of this kind")


class SimulatedHardware(Spec):
    """GPUs declared instead of probed (tests and demos). Such a node is shown as simulated."""

    gpus: list[SimulatedGpu] = Field(default_factory=list)
    cpu_cores: int | None = Field(default=None, ge=1, le=4096)
    memory_gb: float | None = Field(default=None, gt=0, le=1e7)


class NodeConfig(Spec):
    name: str = Field(description="unique node name: letters, digits, '.', '_' or '-', at most 63")
    tier: Tier = Field(description="datacenter | renter | edge")
    region: str = Field(min_length=1, max_length=64)
    zone: str = Field(default="", max_length=64)
    price_per_hour: float = Field(default=0.0, ge=0, le=10_000, description="USD per hour")
    preemptible: bool = False
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    simulated_hardware: SimulatedHardware | None = None

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-63 characters of letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit")
        return v

    @field_validator("labels")
    @classmethod
    def _labels_ok(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 64:
            raise ValueError("at most 64 labels")
        for k, val in v.items():
            if not k or len(k) > 63 or len(str(val)) > 256:
                raise ValueError(f"label {k!r}: keys 1-63 characters, values at most 256")
        return v
