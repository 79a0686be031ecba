"""What a workflow spec says about serving it: :func:`serving_of`. Pure.

- its stages in topological order, each with its prompt template and sampling settings (what
  agents' data planes run, see :mod:`atoll.specs.routing`);
- each (task, variant)'s base model and adapter sources and kind (what placement puts on a
  node, see :mod:`atoll.coordinator.placement`);
- where requests enter (the first source's region and location) and the stage whose output is
  the answer (the last sink).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from atoll.specs.routing import Stage
from atoll.specs.workflow import WorkflowSpec


@dataclass(frozen=True)
class VariantServing:
    """The sources a replica of one (task, variant) loads."""

    base_model: str                # local path or sha256: name
    adapter: str = ""              # adapter name; empty: the bare base model
    adapter_source: str = ""
    kind: str = "llm"


@dataclass(frozen=True)
class WorkflowServing:
    stages: tuple[Stage, ...]      # topological order
    variants: Mapping[tuple[str, str], VariantServing]   # (task, variant) ->
    source_region: str
    source_location: str           # "region/tier" of the first source
    sink: str                      # the task whose output answers a request


def serving_of(spec: WorkflowSpec) -> WorkflowServing:
    """The serving view of a checked spec (``WorkflowSpec.check`` rejects cycles)."""
    variants = spec.resolved_variants(None)
    parents: dict[str, list[str]] = {t.name: [] for t in spec.tasks}
    for e in spec.edges:
        parents[e.to].append(e.from_)
    order, done = [], {s.name for s in spec.sources}
    pending = list(spec.tasks)
    while pending:
        for t in list(pending):
            if all(p in done for p in parents[t.name]):
                order.append(t)
                done.add(t.name)
                pending.remove(t)
    stages = tuple(Stage(task=t.name, kind=t.kind, prompt=t.prompt, parents=tuple(parents[t.name]),
                         max_tokens=int(t.max_tokens), temperature=float(t.temperature), stop=tuple(t.stop or ()),
                         chat=bool(t.chat))
                   for t in order)
    serving = {(t.name, v.name): VariantServing(base_model=v.model or v.base_model, adapter=v.adapter or "",
                                                adapter_source=v.adapter_path or "", kind=t.kind)
               for t in spec.tasks for v in variants[t.name]}
    producers = {e.from_ for e in spec.edges}
    sinks = [t.name for t in order if t.name not in producers]
    src = spec.sources[0]
    return WorkflowServing(stages, serving, src.region, f"{src.region}/{src.tier}", sinks[-1])
