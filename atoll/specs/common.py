"""Loading pydantic specs from YAML with errors that name the file, the field path and the fix.

Every spec model derives from :class:`Spec` (extra fields forbidden, so a typo is an error
rather than a silently ignored key). :func:`load_yaml` / :func:`parse_obj` turn pydantic's
``ValidationError`` into one :class:`~atoll.core.errors.SpecError` listing every problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from atoll.core.errors import SpecError

T = TypeVar("T", bound=BaseModel)


class Spec(BaseModel):
    """Base of every spec: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

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


def read_yaml(path: str | os.PathLike) -> Any:
    p = Path(path)
    if not p.exists():
        raise SpecError("file not found", source=str(p), hint="give the path of an existing YAML file")
    if p.is_dir():
        raise SpecError("is a directory, expected a YAML file", source=str(p))
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=str(p)) from None


def load_yaml(model: type[T], path: str | os.PathLike) -> T:
    """Load and validate a YAML file as ``model``."""
    return parse_obj(model, read_yaml(path), source=str(path))
