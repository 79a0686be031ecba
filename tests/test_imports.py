"""The import rules of atoll's product code, read from the source (the AST of every module in
atoll/, coordinator/, agent/, planner/, kernels/ and proto/), imports inside functions included.

Layers import downward only:

1. ``atoll.core`` (errors, rpc, tls, logs, archive, version, HTTP plumbing) imports nothing of
   atoll's but itself; ``atoll.specs`` (plain spec types) only ``atoll.core`` and itself.
2. ``atoll.kernels`` imports nothing of atoll's but itself.
3. ``atoll.planner`` imports only ``atoll.core``, ``atoll.specs`` and itself.
4. ``atoll.agent.runtime`` imports only ``atoll.kernels``, ``atoll.core``, ``atoll.specs`` and itself.
5. ``atoll.proto`` (the generated stubs and their generator) imports only itself;
   ``atoll.wire`` (proto <-> domain, one module per service) only ``atoll.proto``,
   ``atoll.core``, ``atoll.specs``, the planner's plan types (``atoll.planner.plan``) and itself.
6. The SDK (``atoll.client``) never imports ``atoll.coordinator`` or ``atoll.agent``, not even
   through another module.
7. ``atoll.coordinator`` and ``atoll.agent`` never import each other (nor the CLI, the demo or
   the SDK): only the roof, ``atoll.cli`` and ``atoll.demo``, imports both. Nothing below the
   roof imports it.
8. The generated ``atoll.proto.v1.*_pb2`` / ``*_pb2_grpc`` modules are imported only by
   ``atoll.wire`` and by the servicers and converter listed in ``PB2_USERS``.
9. No import cycles at all, including ones that imports inside functions would hide.
10. An import inside a function says why beside it (a comment on its line or the lines just
    above), outside ``atoll.cli`` (whose commands import lazily so that ``atoll --help`` stays
    fast) and outside the planner's and runtime's packages (held to their own rules).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PARTS = {"atoll": "atoll", "coordinator": "atoll.coordinator", "agent": "atoll.agent", "planner": "atoll.planner",
         "kernels": "atoll.kernels", "proto": "atoll.proto"}

PB2_USERS = {
    "atoll.coordinator.convert",          # the coordinator's side of the wire
    "atoll.coordinator.agent_api",        # servicers
    "atoll.coordinator.client_api",
    "atoll.coordinator.model_store_api",
    "atoll.agent.worker",
    "atoll.agent.serving",
}

# layer -> the layers it may import (a module's layer is the longest prefix listed here)
MAY_IMPORT = {
    "atoll.core": {"atoll.core"},
    "atoll.specs": {"atoll.core", "atoll.specs"},
    "atoll.kernels": {"atoll.kernels"},
    "atoll.planner": {"atoll.core", "atoll.specs", "atoll.planner"},
    "atoll.agent.runtime": {"atoll.kernels", "atoll.core", "atoll.specs", "atoll.agent.runtime"},
    "atoll.proto": {"atoll.proto"},
    "atoll.wire": {"atoll.proto", "atoll.core", "atoll.specs", "atoll.planner.plan", "atoll.wire"},
    "atoll.client": {"atoll.core", "atoll.specs", "atoll.wire", "atoll.client"},
    "atoll.coordinator": {"atoll.core", "atoll.specs", "atoll.proto", "atoll.wire", "atoll.planner",
                          "atoll.coordinator"},
    "atoll.agent": {"atoll.core", "atoll.specs", "atoll.proto", "atoll.wire", "atoll.agent"},
    "atoll.cli": {"atoll"},
    "atoll.demo": {"atoll"},
    "atoll.__main__": {"atoll.cli"},
}


@dataclass(frozen=True)
class Import:
    target: str        # the module imported (a submodule when ``from pkg import submodule``)
    line: int
    in_function: bool
    reason: str        # the comment on its line or just above it ("" when none)


def module_files() -> dict[str, Path]:
    out = {}
    for folder, pkg in PARTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


MODULES = module_files()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _comment_near(lines: list[str], line: int) -> str:
    """The comment on source line ``line`` (1-based), or the comment lines just above it or
    above the group of imports it belongs to."""
    text = lines[line - 1]
    if "#" in text:
        return text.split("#", 1)[1].strip()
    i = line - 2
    while i >= 0 and (not lines[i].strip() or lines[i].strip().startswith(("import ", "from "))):
        i -= 1
    above = []
    while i >= 0 and lines[i].strip().startswith("#"):
        above.append(lines[i].strip().lstrip("#").strip())
        i -= 1
    return " ".join(reversed(above))


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "atoll" or t.startswith("atoll."):
                out.append(Import(t, node.lineno, id(node) in inside, _comment_near(lines, node.lineno)))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> str:
    best = ""
    for layer in MAY_IMPORT:
        if (module == layer or module.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def _within(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


def test_every_product_module_has_a_layer():
    assert [m for m in MODULES if not layer_of(m)] == []


def test_layers_import_downward_only():
    wrong = [f"{m}:{i.line} imports {i.target}" for m, imps in GRAPH.items() for i in imps
             if not _within(i.target, MAY_IMPORT[layer_of(m)])]
    assert wrong == [], "\n".join(wrong)


def test_the_sdk_never_reaches_the_coordinator_or_the_agent():
    seen, todo = set(), ["atoll.client"]
    while todo:
        m = todo.pop()
        if m in seen or m not in GRAPH:
            continue
        seen.add(m)
        todo += [i.target for i in GRAPH[m]]
    assert sorted(m for m in seen if _within(m, {"atoll.coordinator", "atoll.agent"})) == []


def test_generated_stubs_only_in_wire_converters_and_servicers():
    wrong = [f"{m}:{i.line} imports {i.target}" for m, imps in GRAPH.items() for i in imps
             if i.target.startswith("atoll.proto.v1.") and i.target.split(".")[-1].endswith(("_pb2", "_pb2_grpc"))
             and not _within(m, {"atoll.wire", "atoll.proto"}) and m not in PB2_USERS]
    assert wrong == [], "\n".join(wrong)


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {i.target for i in GRAPH[v] if i.target in GRAPH}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(i.target == v for i in GRAPH[v]):
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles() == []


@pytest.mark.parametrize("layer", ["atoll.planner", "atoll.agent.runtime", "atoll.kernels"])
def test_the_rules_see_the_planner_runtime_and_kernels(layer):
    """The rules above cover the parts other packages own too: each has modules and imports."""
    assert any(layer_of(m) == layer and GRAPH[m] for m in MODULES)


def test_imports_inside_functions_say_why():
    exempt = {"atoll.cli", "atoll.planner", "atoll.agent.runtime", "atoll.kernels"}
    silent = [f"{m}:{i.line} imports {i.target}" for m, imps in GRAPH.items() if not _within(m, exempt)
              for i in imps if i.in_function and not i.reason]
    assert silent == [], "\n".join(silent)
