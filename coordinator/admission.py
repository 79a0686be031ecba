"""Admission: is a submitted workflow spec one the coordinator can serve? :func:`admit`.

A spec is admitted when it is at most ``MAX_SPEC_BYTES`` of YAML within the loader's bounds
(UTF-8, nesting, values: ``atoll.specs.common.safe_yaml``), a valid
:class:`~atoll.specs.workflow.WorkflowSpec` that passes ``WorkflowSpec.check`` with its variants
inline (``atoll submit`` inlines a catalog), and servable: every edge carries text, an
embedding stage is a sink, and every variant's model (and adapter) is a local directory with a
``config.json`` (``adapter_config.json``), a GGUF model (a ``.gguf`` file, or a directory holding
one), or a ``sha256:`` name in the model store that the
caller's tenant may use. Pure except for those lookups: the model store is passed in as
``blob_info(name) -> {"owners": [...]}`` (raising NotFound or InvalidArgument), and local paths
are checked on this host's file system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from atoll.coordinator.blobs import may_use
from atoll.core.errors import InvalidArgument, NotFound, SpecError
from atoll.specs.common import parse_obj, safe_yaml
from atoll.specs.workflow import WorkflowSpec

MAX_SPEC_BYTES = 1 << 20

BlobInfo = Callable[[str], dict]


def is_source_ref(s: str) -> bool:
    """A model or adapter reference: a ``sha256:`` name or a path (absolute, relative or ``~``)."""
    return s.startswith(("sha256:", "/", ".", "~"))


def admit(spec_yaml: str, filename: str, tenant: Optional[str] = None,
          blob_info: Optional[BlobInfo] = None) -> WorkflowSpec:
    """The checked spec, or SpecError / NotFound naming the file, the field and the fix."""
    spec = parse_spec(spec_yaml, filename)
    check_serving(spec, source_name(filename), tenant, blob_info)
    return spec


def source_name(filename: str) -> str:
    return (filename or "workflow")[:200]


def parse_spec(spec_yaml: str, filename: str) -> WorkflowSpec:
    """The spec's own part of admission, pure (no lookups): bounded YAML, the model, its checks."""
    src = source_name(filename)
    spec = parse_obj(WorkflowSpec, safe_yaml(spec_yaml, src, MAX_SPEC_BYTES), source=src)
    if spec.catalog:
        raise SpecError("a submitted workflow must carry its variants inline", source=src, path="catalog",
                        hint="`atoll submit` inlines the catalog for you")
    spec.check(source=src)
    return spec


def parse_and_dump(spec_yaml: str, filename: str) -> tuple[WorkflowSpec, str]:
    """:func:`parse_spec` and the spec's canonical YAML, as one call (a planning worker runs it:
    validating a large spec holds the interpreter for a while)."""
    spec = parse_spec(spec_yaml, filename)
    return spec, spec.to_yaml()


def check_serving(spec: WorkflowSpec, src: str, tenant: Optional[str] = None,
                  blob_info: Optional[BlobInfo] = None) -> None:
    variants = spec.resolved_variants(None)
    sinks = {t.name for t in spec.tasks} - {e.from_ for e in spec.edges}
    for i, e in enumerate(spec.edges):
        if e.type != "text":
            raise SpecError(f"edge {e.from_} -> {e.to} carries a tensor, but every stage takes text",
                            source=src, path=f"edges[{i}].type",
                            hint="tensors (an embedding stage's output) are workflow outputs; use type: text")
    for i, t in enumerate(spec.tasks):
        if t.kind == "embedding" and t.name not in sinks:
            raise SpecError(f"task {t.name!r} is an embedding stage: its output is a tensor, which only "
                            "the workflow's output can take", source=src, path=f"tasks[{i}].kind",
                            hint="make it a sink, or use kind: llm")
        for j, v in enumerate(variants[t.name]):
            model = v.model or v.base_model
            where = f"tasks[{i}].variants[{j}]"
            if not is_source_ref(model):
                raise SpecError(f"variant {v.name!r}: model {model!r} is neither a path nor a sha256 name",
                                source=src, path=f"{where}.model",
                                hint="set model: to a local Hugging Face directory or a name from `atoll push`")
            check_source(model, "model", src, f"{where}.model", tenant, blob_info)
            if v.adapter:
                if not v.adapter_path:
                    raise SpecError(f"variant {v.name!r} names adapter {v.adapter!r} without adapter_path",
                                    source=src, path=f"{where}.adapter_path",
                                    hint="give the PEFT directory or its sha256 name")
                check_source(v.adapter_path, "adapter", src, f"{where}.adapter_path", tenant, blob_info)


def check_source(ref: str, kind: str, src: str, path: str, tenant: Optional[str] = None,
                 blob_info: Optional[BlobInfo] = None) -> None:
    """``ref`` exists: in the model store, visible to ``tenant``, or as a local directory."""
    if ref.startswith("sha256:"):
        if blob_info is None:
            return
        try:
            info = blob_info(ref)
        except (NotFound, InvalidArgument) as exc:
            raise NotFound(f"{src}: {path}: {kind} {ref[:19]}… is not in the model store ({exc.message})",
                           hint="push it with `atoll push DIR`") from None
        if tenant and not may_use(info, tenant):     # another tenant's blob: as if absent
            raise NotFound(f"{src}: {path}: {kind} {ref[:19]}… is not in the model store",
                           hint="push it with `atoll push DIR`")
        return
    if not ref.startswith("/"):       # relative to what? not this process's working directory
        raise SpecError(f"{kind} path {ref[:200]!r} is not absolute", source=src, path=path,
                        hint="give the absolute path the directory has on every host (`atoll submit` makes "
                             "paths relative to the workflow file absolute), or push it and use its sha256 name")
    p = Path(ref)
    marker = "adapter_config.json" if kind == "adapter" else "config.json"
    if kind != "adapter" and (p.suffix == ".gguf" and p.is_file() or p.is_dir() and len(list(p.glob("*.gguf"))) == 1):
        return                    # a GGUF model: the file, or a directory holding exactly one
    if not (p / marker).is_file():
        raise NotFound(f"{src}: {path}: {kind} directory {ref!r} does not exist or has no {marker}",
                       hint=f"give an existing {kind} directory (the same path on every host) or push it")
