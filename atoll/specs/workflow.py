"""The workflow spec: a DAG of tasks fed by sources, candidate variants and the SLOs.

Design: each task lists its candidate variants; an entry is either an inline variant (a
mapping, see :class:`~atoll.specs.catalog.VariantSpec`) or the name of a variant in the catalog
file named by ``catalog:`` (a path relative to the workflow file). Inline is simplest; a
catalog lets many workflows share measured profiles. Locations are ``(region, tier)``.

Example::

    name: video-analytics
    sources:
      - {name: cameras, rate: 40, region: us-east, tier: edge}   # req/s born at the edge
    tasks:
      - name: detect
        variants:
          - {name: yolov8n, accuracy: 0.90, memory_gb: 1, throughput: {jetson-orin: 60, a10g: 400}}
          - {name: yolov8x, accuracy: 0.97, memory_gb: 4, throughput: {a10g: 90}}
      - name: classify
        variants: [resnet50]                 # from the catalog
    edges:
      - {from: cameras, to: detect, size_kb: 150}
      - from: detect
        to: classify
        ratio: 3                             # three objects per frame
        size_kb: 20
        sizes: [{from_variant: yolov8x, size_kb: 30}]   # size may depend on both ends
    slo:
      min_accuracy: 0.80
      accuracy_model: profile                # profile | additive | table
    placement:
      forbid_tiers: []
      data_up_only: false                    # JellyBean's rule: data never moves down a tier

Rates: streams from several sources into one task add up; a task with several task inputs
joins them (JellyBean): its rate is the minimum of its inputs' rates times their ratios.

Accuracy models: ``profile`` composes per-variant profiles along the DAG (input accuracy of a
task is the minimum over its parents, sources give 1.0; the SLO applies to every sink);
``additive`` sums per-task losses ``1 - accuracy`` (``min_accuracy`` bounds ``1 - sum``, and
``max_accuracy_loss`` bounds the sum of losses against each task's best variant); ``table``
takes a measured end-to-end accuracy per listed combination of variants (unlisted combinations
are not allowed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from atoll.core.errors import SpecError
from atoll.core.openai_api import MAX_STOP_CHARS
from atoll.specs.autoscaling import AutoscalingSpec
from atoll.specs.catalog import MIN_RATE, Catalog, VariantSpec, check_name, load_catalog
from atoll.specs.cluster import parse_location
from atoll.specs.common import Spec, load_yaml
from atoll.specs.node import TIERS, Tier

# The largest workflow accepted: the planner's work grows with tasks x variants x pools.
MAX_TASKS = 256
MAX_VARIANTS = 64
MAX_EDGES = 4096


class SourceSpec(Spec):
    name: str
    rate: float = Field(ge=MIN_RATE, le=1e9, description="requests/s born at this source")
    region: str = Field(min_length=1, max_length=64)
    tier: Tier = "edge"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class TaskSpec(Spec):
    name: str
    prompt_tokens: float = Field(default=0.0, ge=0, le=1e7, description="mean prompt tokens (LLM tasks)")
    completion_tokens: float = Field(default=0.0, ge=0, le=1e7, description="mean completion tokens")
    variants: list[Union[str, VariantSpec]] = Field(min_length=1, max_length=MAX_VARIANTS)
    # Serving (used by the coordinator; the offline planner ignores them).
    kind: Literal["llm", "embedding"] = Field(default="llm", description="llm: text in, text out; "
                                              "embedding: text in, a vector out (only as a sink)")
    prompt: str = Field(default="{input}", max_length=20_000,
                        description="prompt template; {input} is the request or the parents' outputs")
    max_tokens: int = Field(default=32, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0, le=5)
    stop: list[str] = Field(default_factory=list, max_length=16,
                            description="strings that end the stage's answer (each 1 to 256 characters)")
    chat: bool = Field(default=False, description="send the prompt as a user message through the serving model's "
                       "own chat template (instruct models)")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if any(not s or len(s) > MAX_STOP_CHARS for s in v):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_CHARS} characters")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @property
    def tokens_per_request(self) -> float:
        return self.prompt_tokens + self.completion_tokens


class SizeOverride(Spec):
    from_variant: Optional[str] = None
    to_variant: Optional[str] = None
    size_kb: float = Field(ge=0, le=1e9)


class EdgeSpec(Spec):
    from_: str = Field(alias="from")
    to: str
    ratio: float = Field(default=1.0, ge=1e-6, le=1e6, description="messages to `to` per message from `from`")
    size_kb: float = Field(default=1.0, ge=0, le=1e9, description="message size in KB (10^3 bytes)")
    sizes: list[SizeOverride] = Field(default_factory=list, max_length=1024)
    type: Literal["text", "tensor"] = Field(default="text", description="what the edge carries")

    model_config = {**Spec.model_config, "populate_by_name": True}


class TableRow(Spec):
    variants: dict[str, str]
    accuracy: float = Field(ge=0, le=1)


class SLOSpec(Spec):
    min_accuracy: Optional[float] = Field(default=None, ge=0, le=1)
    accuracy_model: Literal["profile", "additive", "table"] = "profile"
    max_accuracy_loss: Optional[float] = Field(default=None, ge=0, le=1e3)
    accuracy_table: list[TableRow] = Field(default_factory=list, max_length=10_000)


class PlacementSpec(Spec):
    forbid_tiers: list[Tier] = Field(default_factory=list)
    forbid_regions: list[str] = Field(default_factory=list)
    forbid_locations: list[str] = Field(default_factory=list, description="region/tier")
    data_up_only: bool = False
    trusted_only: bool = Field(default=False, description="place stages (and so their data) only on nodes the "
                               "operator trusts (a trusted join token or `atoll nodes trust`)")
    min_failure_domains: int = Field(default=1, ge=1, le=64, description="spread every stage's replicas over at "
                                     "least this many failure domains")
    failure_domain: str = Field(default="provider", min_length=1, max_length=63,
                                description="node label naming a node's failure domain ('region' uses the region)")

    @field_validator("forbid_locations")
    @classmethod
    def _locs(cls, v: list[str]) -> list[str]:
        for x in v:
            parse_location(x)
        return v


class WorkflowSpec(Spec):
    name: str = "workflow"
    catalog: Optional[str] = Field(default=None, description="catalog file, relative to this file")
    sources: list[SourceSpec] = Field(min_length=1, max_length=MAX_TASKS)
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_TASKS)
    edges: list[EdgeSpec] = Field(min_length=1, max_length=MAX_EDGES)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    autoscaling: Optional[AutoscalingSpec] = Field(default=None, description="follow the measured load "
                                                   "(see atoll.specs.autoscaling); unset: a static plan")

    # ---------------------------------------------------------------- semantic checks
    def check(self, source: str | None = None, catalog: Catalog | None = None) -> None:
        """Raise SpecError (file, field path, fix) for what pydantic cannot see: names, the
        DAG, the variants each task lists, edge size overrides and the accuracy SLO."""
        names = self._check_names(source)
        parents = self._check_edges(names, source)
        for i, t in enumerate(self.tasks):
            if not parents[t.name]:
                raise SpecError(f"task {t.name!r} has no input", source=source, path=f"tasks[{i}]",
                                hint="add an edge from a source or a task to it")
        tvars = self._check_variants(catalog, source)
        self._check_sizes(tvars, source)
        self._check_slo(tvars, source)

    def _check_names(self, source: str | None) -> dict[str, str]:
        """Sources and tasks have distinct names: name -> "source" | "task"."""
        names: dict[str, str] = {}
        for kind, items in (("source", self.sources), ("task", self.tasks)):
            for i, x in enumerate(items):
                if x.name in names:
                    raise SpecError(f"duplicate name {x.name!r}", source=source, path=f"{kind}s[{i}].name",
                                    hint="sources and tasks need distinct names")
                names[x.name] = kind
        return names

    def _check_edges(self, names: dict[str, str], source: str | None) -> dict[str, list[str]]:
        """Edges join known names, never into a source, once each, without a cycle: name -> parents."""
        children: dict[str, list[str]] = {n: [] for n in names}
        parents: dict[str, list[str]] = {n: [] for n in names}
        for i, e in enumerate(self.edges):
            for end, val in (("from", e.from_), ("to", e.to)):
                if val not in names:
                    raise SpecError(f"edge to nowhere: {val!r} is neither a source nor a task",
                                    source=source, path=f"edges[{i}].{end}",
                                    hint=f"use one of: {', '.join(sorted(names))}")
            if names[e.to] == "source":
                raise SpecError(f"{e.to!r} is a source; sources have no inputs", source=source,
                                path=f"edges[{i}].to", hint="point the edge at a task")
            if e.to in children[e.from_]:
                raise SpecError(f"duplicate edge {e.from_} -> {e.to}", source=source, path=f"edges[{i}]",
                                hint="merge the two edges into one")
            children[e.from_].append(e.to)
            parents[e.to].append(e.from_)
        cyc = _find_cycle(children)
        if cyc:
            raise SpecError("the workflow has a cycle: " + " -> ".join(cyc), source=source, path="edges",
                            hint="a workflow must be a DAG; remove one edge of the cycle")
        return parents

    def _check_variants(self, catalog: Catalog | None, source: str | None) -> dict[str, list[str]]:
        """Every listed variant is inline or in the catalog, once per task: task -> variant names."""
        tvars: dict[str, list[str]] = {}
        for i, t in enumerate(self.tasks):
            seen: set[str] = set()
            for j, v in enumerate(t.variants):
                vname = v if isinstance(v, str) else v.name
                if isinstance(v, str):
                    if catalog is None:
                        raise SpecError(f"unknown variant {v!r}: no catalog given", source=source,
                                        path=f"tasks[{i}].variants[{j}]",
                                        hint="define it inline or set `catalog:` to a catalog file")
                    if catalog.get(v) is None:
                        known = ", ".join(x.name for x in catalog.variants[:12])
                        raise SpecError(f"unknown variant {v!r}", source=source,
                                        path=f"tasks[{i}].variants[{j}]",
                                        hint=f"catalog variants are: {known}")
                if vname in seen:
                    raise SpecError(f"duplicate variant {vname!r}", source=source,
                                    path=f"tasks[{i}].variants[{j}]", hint="list each variant once")
                seen.add(vname)
            tvars[t.name] = sorted(seen)
        return tvars

    def _check_sizes(self, tvars: dict[str, list[str]], source: str | None) -> None:
        """Size overrides name variants of the edge's own ends."""
        for i, e in enumerate(self.edges):
            for k, so in enumerate(e.sizes):
                for end, task, val in (("from_variant", e.from_, so.from_variant),
                                       ("to_variant", e.to, so.to_variant)):
                    if val is not None and val not in tvars.get(task, []):
                        raise SpecError(f"unknown variant {val!r} of {task!r}", source=source,
                                        path=f"edges[{i}].sizes[{k}].{end}",
                                        hint=f"use one of: {', '.join(tvars.get(task, [])) or '(none: a source has no variants)'}")

    def _check_slo(self, tvars: dict[str, list[str]], source: str | None) -> None:
        """A table accuracy model lists whole, known combinations; max_accuracy_loss is additive."""
        slo = self.slo
        if slo.accuracy_model == "table":
            if not slo.accuracy_table:
                raise SpecError("accuracy_model is 'table' but accuracy_table is empty", source=source,
                                path="slo.accuracy_table", hint="list measured combinations")
            for r, row in enumerate(slo.accuracy_table):
                if set(row.variants) != set(tvars):
                    raise SpecError("a row must name a variant for every task", source=source,
                                    path=f"slo.accuracy_table[{r}].variants",
                                    hint=f"tasks are: {', '.join(tvars)}")
                for tname, vname in row.variants.items():
                    if vname not in tvars[tname]:
                        raise SpecError(f"unknown variant {vname!r} of task {tname!r}", source=source,
                                        path=f"slo.accuracy_table[{r}].variants.{tname}",
                                        hint=f"use one of: {', '.join(tvars[tname])}")
        if slo.max_accuracy_loss is not None and slo.accuracy_model != "additive":
            raise SpecError("max_accuracy_loss needs accuracy_model: additive", source=source,
                            path="slo.max_accuracy_loss", hint="set accuracy_model: additive or use min_accuracy")

    def resolved_variants(self, catalog: Catalog | None = None) -> dict[str, list[VariantSpec]]:
        """task name -> its variants, catalog references resolved (call check() first)."""
        out = {}
        for t in self.tasks:
            out[t.name] = [catalog.get(v) if isinstance(v, str) else v for v in t.variants]
        return out


def _find_cycle(children: dict[str, list[str]]) -> list[str] | None:
    color = {n: 0 for n in children}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        stack.append(n)
        for c in children[n]:
            if color[c] == 1:
                return stack[stack.index(c):] + [c]
            if color[c] == 0:
                found = visit(c)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in children:
        if color[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def load_workflow(path) -> tuple[WorkflowSpec, Catalog | None]:
    """Load a workflow YAML (and its catalog, if it names one) and check it."""
    wf = load_yaml(WorkflowSpec, path)
    catalog = None
    if wf.catalog:
        cpath = Path(path).parent / wf.catalog
        if not cpath.exists():
            raise SpecError(f"catalog file {str(cpath)!r} not found", source=str(path), path="catalog",
                            hint="give a path relative to the workflow file")
        catalog = load_catalog(cpath)
    wf.check(source=str(path), catalog=catalog)
    return wf, catalog


__all__ = ["WorkflowSpec", "TaskSpec", "SourceSpec", "EdgeSpec", "SLOSpec", "PlacementSpec",
           "load_workflow", "TIERS"]
