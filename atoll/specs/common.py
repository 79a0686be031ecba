"""Loading pydantic specs from YAML with errors that name the file, the field path and the fix.

Every spec model derives from :class:`Spec` (extra fields forbidden, so a typo is an error
rather than a silently ignored key; every number finite, so ``.inf`` and ``.nan`` are errors).
:func:`load_yaml` / :func:`parse_obj` turn pydantic's ``ValidationError`` into one
:class:`~atoll.core.errors.SpecError` listing every problem.

Bounds, checked before YAML builds anything (:func:`safe_yaml`): at most ``MAX_FILE_BYTES``
(a file is refused by its size before it is read), UTF-8 text, nesting at most ``MAX_DEPTH``
deep (counted on the parser's event stream, which does not recurse), and at most
``MAX_NODES`` values once aliases are expanded (a "billion laughs" document is refused after
that many, not after it is walked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from atoll.core.errors import SpecError

T = TypeVar("T", bound=BaseModel)


MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 64
MAX_NODES = 1_000_000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Spec(BaseModel):
    """Base of every spec: unknown keys are errors; every number finite; values are validated
    on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    def dump(self) -> dict:
        """The spec as plain data, fields under their YAML names (``from``, not ``from_``)."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.dump(), sort_keys=False)


def field_path(loc: tuple) -> str:
    """('tasks', 2, 'variants', 0, 'name') -> 'tasks[2].variants[0].name'"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict) -> str:
    msg = err.get("msg", "invalid value")
    ctx = err.get("ctx") or {}
    if err.get("type") == "extra_forbidden":
        return "unknown field (check its spelling)"
    if err.get("type") in ("literal_error", "enum") and "expected" in ctx:
        return f"{msg}"
    return msg


def validation_to_spec_error(exc: ValidationError, source: str | None) -> SpecError:
    problems = []
    for err in exc.errors():
        # Drop pydantic's internal tags (e.g. function-after[...]) from the location.
        loc = tuple(p for p in err.get("loc", ()) if not (isinstance(p, str) and "[" in p and p.endswith("]")))
        problems.append(f"{field_path(loc)}: {_describe(err)}")
    first_path = problems[0].split(":", 1)[0] if problems else None
    if len(problems) == 1:
        return SpecError(problems[0].split(": ", 1)[1], source=source, path=first_path)
    return SpecError("; ".join(problems), source=source)


def parse_obj(model: type[T], data: Any, source: str | None = None) -> T:
    """Validate ``data`` as ``model``; raise SpecError naming ``source`` and the field path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping at the top level, got {type(data).__name__}", source=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_to_spec_error(exc, source) from None


def safe_yaml(data: bytes | str, source: str, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse YAML within the bounds above; SpecError naming ``source`` otherwise."""
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise SpecError(f"is more than the {max_bytes} bytes a spec may have", source=source,
                            hint="split it, or drop what the planner does not need")
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError("is not valid Unicode text (a lone surrogate)", source=source) from None
    if len(data) > max_bytes:
        raise SpecError(f"is {len(data)} bytes, more than the {max_bytes} a spec may have", source=source,
                        hint="split it, or drop what the planner does not need")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                        source=source, hint="save the file as UTF-8") from None
    try:
        depth = 0
        for ev in yaml.parse(text, Loader=_LOADER):
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    mark = ev.start_mark
                    raise SpecError(f"nests deeper than {max_depth} levels (at line {mark.line + 1})",
                                    source=source, hint="a spec is a few levels deep; flatten it")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        doc = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=source) from None
    _count(doc, source)
    return doc


def _count(doc: Any, source: str) -> None:
    """Refuse a document of more than MAX_NODES values (aliases counted every time they occur)."""
    budget, stack = MAX_NODES, [doc]
    while stack:
        x = stack.pop()
        budget -= 1
        if budget < 0:
            raise SpecError(f"holds more than {MAX_NODES} values (anchors and aliases expanded)", source=source,
                            hint="a spec has at most a few thousand values; do not nest aliases")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def read_yaml(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> Any:
    p = Path(path)
    if not p.exists():
        raise SpecError("file not found", source=str(p), hint="give the path of an existing YAML file")
    if p.is_dir():
        raise SpecError("is a directory, expected a YAML file", source=str(p))
    size = p.stat().st_size
    if size > max_bytes:                       # refused by its size, before a byte is read
        raise SpecError(f"is {size} bytes, more than the {max_bytes} a spec may have", source=str(p),
                        hint="split it, or drop what the planner does not need")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read it: {exc.strerror}", source=str(p)) from None
    return safe_yaml(data, str(p), max_bytes)


def load_yaml(model: type[T], path: str | os.PathLike) -> T:
    """Load and validate a YAML file as ``model``."""
    return parse_obj(model, read_yaml(path), source=str(path))
