"""Model variants and the variant catalog.

A *variant* is one way to run a task: a base model, an optional LoRA adapter, a precision or
quantization, its accuracy, its memory need and its throughput per hardware class. Variants can
be written inline in a workflow (``tasks[i].variants``) or kept in a catalog file that several
workflows reference by name. Catalog file::

    variants:
      - name: llama8b-fp16
        base: llama-3-8b          # variants with the same base and precision share weights
        precision: fp16
        accuracy: 0.82
        memory_gb: 16             # the base weights (plus KV cache) on one GPU
        tokens_per_second: {a100-80g: 2400, l4: 700}
      - name: llama8b-legal
        base: llama-3-8b
        adapter: legal-v3         # LoRA adapter: pays adapter_memory_gb only when co-located
        adapter_memory_gb: 0.2
        accuracy: 0.88
        memory_gb: 16
        tokens_per_second: {a100-80g: 2200, l4: 640}

Throughput is ``throughput`` (requests/s per replica) or ``tokens_per_second`` (prompt plus
completion tokens per second per replica; the task's mean ``prompt_tokens + completion_tokens``
turns it into requests/s). ``profile`` gives the JellyBean accuracy profile: points
``[input_accuracy, output_accuracy]``, concave and non-decreasing; without it the output
accuracy is ``accuracy * input_accuracy``.
"""

from __future__ import annotations

import re
from typing import Optional

from pydantic import Field, field_validator, model_validator

from atoll.core.errors import SpecError
from atoll.specs.common import Spec, load_yaml

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_RATE = 1e12          # requests or tokens per second: anything larger is a typo (or an attack)
MIN_RATE = 1e-6          # ... and anything smaller (one request in 11 days) only makes the solver's numbers degenerate


def check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-63 characters of letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return v


class VariantSpec(Spec):
    """One candidate model variant for a task."""

    name: str = Field(description="variant name, unique within its task")
    base: Optional[str] = Field(default=None, description="base model; defaults to the name")
    adapter: Optional[str] = Field(default=None, description="LoRA adapter name, if any")
    precision: str = Field(default="fp16", min_length=1, max_length=16,
                           description="fp32 | bf16 | fp16 | int8 | int4 | ...")
    accuracy: float = Field(gt=0, le=1, description="accuracy on clean input, in (0, 1]")
    memory_gb: float = Field(default=0.0, ge=0, le=4096, description="GPU memory of the base weights")
    adapter_memory_gb: float = Field(default=0.0, ge=0, le=1024,
                                     description="extra GPU memory of the adapter")
    throughput: dict[str, float] = Field(default_factory=dict, max_length=256,
                                         description="requests/s per replica, per hardware class")
    tokens_per_second: dict[str, float] = Field(default_factory=dict, max_length=256,
                                                description="tokens/s per replica, per hardware class")
    profile: Optional[list[tuple[float, float]]] = Field(
        default=None, max_length=64, description="accuracy profile: [input_accuracy, output_accuracy] points")
    # Serving (used by the coordinator; the offline planner ignores them).
    model: Optional[str] = Field(default=None, max_length=1024,
                                 description="base model: a local Hugging Face directory or a sha256: name")
    adapter_path: Optional[str] = Field(default=None, max_length=1024,
                                        description="PEFT adapter directory or sha256: name (with `adapter`)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("throughput", "tokens_per_second")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        for hw, x in v.items():
            if not (x > 0):
                raise ValueError(f"{hw}: throughput must be > 0 (drop the entry if the hardware "
                                 f"cannot run this variant)")
            if not MIN_RATE <= x <= MAX_RATE:
                raise ValueError(f"{hw}: throughput must be in {MIN_RATE:g}..{MAX_RATE:g}")
        return v

    @field_validator("profile")
    @classmethod
    def _profile(cls, v):
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("give at least two [input_accuracy, output_accuracy] points")
        pts = sorted(v)
        for x, y in pts:
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError("profile points must lie in [0, 1] x [0, 1]")
        slopes = []
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x1 - x0 <= 1e-12:
                raise ValueError("profile input accuracies must be distinct")
            slopes.append((y1 - y0) / (x1 - x0))
        if any(s < -1e-9 for s in slopes):
            raise ValueError("profile must be non-decreasing (better input never hurts)")
        if any(b > a + 1e-9 for a, b in zip(slopes, slopes[1:])):
            raise ValueError("profile must be concave (slopes non-increasing); "
                             "fit a concave curve to the measured points")
        return [tuple(p) for p in pts]

    @model_validator(mode="after")
    def _has_throughput(self):
        if not self.throughput and not self.tokens_per_second:
            raise ValueError("give `throughput` (req/s) or `tokens_per_second` for at least "
                             "one hardware class")
        return self

    @property
    def base_model(self) -> str:
        """The sharing key's base: ``base``, else the served ``model`` (so variants serving one
        model directory share it), else the variant's own name."""
        return self.base or self.model or self.name

    def requests_per_second(self, hardware: str, tokens_per_request: float) -> float | None:
        """Requests/s of one replica on ``hardware``; None if it has no profile there."""
        if hardware in self.throughput:
            return self.throughput[hardware]
        if hardware in self.tokens_per_second:
            if tokens_per_request <= 0:
                return None
            return self.tokens_per_second[hardware] / tokens_per_request
        return None


class Catalog(Spec):
    """A library of variants that workflows reference by name."""

    variants: list[VariantSpec] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _unique(self):
        seen = set()
        for i, v in enumerate(self.variants):
            if v.name in seen:
                raise ValueError(f"variants[{i}]: duplicate variant name {v.name!r}")
            seen.add(v.name)
        return self

    def get(self, name: str) -> VariantSpec | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None


def load_catalog(path) -> Catalog:
    """Load a catalog YAML file (errors name the file and the field path)."""
    cat = load_yaml(Catalog, path)
    if not cat.variants:
        raise SpecError("no variants", source=str(path), path="variants",
                        hint="list at least one variant")
    return cat
