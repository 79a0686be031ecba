"""The repository's top-level folders never shadow an installed distribution.

Python puts the current directory first on ``sys.path`` (``python -c``, ``python -m pytest``, a
shell in the checkout). A top-level folder holding an ``__init__.py`` is then a regular package
that wins over any installed distribution of the same name; a folder without one is a PEP 420
namespace portion, which the import system uses only when no regular package or module of that
name exists anywhere on ``sys.path``. atoll's parts are therefore namespace portions mapped into
``atoll`` (pyproject.toml), and these tests hold the layout to that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def top_level_python_folders() -> list[Path]:
    return sorted(p for p in REPO.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name.isidentifier()
                  and any(p.rglob("*.py")))


def run_from_root(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)


def test_no_top_level_folder_or_module_is_a_regular_package():
    folders = top_level_python_folders()
    assert {"atoll", "agent", "coordinator", "kernels", "planner", "proto"} <= {p.name for p in folders}
    inits = [str(p.relative_to(REPO) / "__init__.py") for p in folders if (p / "__init__.py").exists()]
    modules = [p.name for p in REPO.glob("*.py")]
    assert not inits, f"these make a top-level folder shadow installed distributions: {inits}"
    assert not modules, f"a top-level module shadows any distribution of its name: {modules}"


def test_every_top_level_folder_loses_to_an_installed_package(tmp_path):
    """Plant a regular package named after every folder, on PYTHONPATH (after the current
    directory on sys.path): from the repository root, the planted one must be imported."""
    names = [p.name for p in top_level_python_folders()]
    for name in names:
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("PLANTED = True\n")
    code = "; ".join(f"import {n}; assert getattr({n}, 'PLANTED', False), {n}.__path__" for n in names)
    proc = run_from_root(code + "; print('ok')", PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout


def test_hugging_face_kernels_and_transformers_import_from_the_root():
    proc = run_from_root(
        "import kernels, transformers, peft\n"
        "from importlib.metadata import version\n"
        "print(kernels.__file__); print(version('kernels'))\n"
        "import atoll.kernels.lora, atoll.agent.runtime.engine, atoll.planner.api, atoll.proto.v1.control_pb2\n"
        "print(atoll.kernels.lora.__file__)\n")
    assert proc.returncode == 0, proc.stdout
    hf_file, _version, ours = proc.stdout.split()[-3:]
    assert not Path(hf_file).resolve().is_relative_to(REPO / "kernels"), hf_file
    assert "site-packages" in Path(hf_file).parts, hf_file
    assert Path(ours).resolve() == REPO / "kernels" / "lora.py"


@pytest.mark.parametrize("module", ["atoll.cli", "atoll.coordinator.server", "atoll.agent.daemon"])
def test_parts_import_outside_the_checkout(tmp_path, module):
    """From elsewhere, the installed (editable) mapping still resolves every part."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    proc = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"], cwd=tmp_path,
                          env=environ, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert Path(proc.stdout.split()[-1]).resolve().is_relative_to(REPO)
