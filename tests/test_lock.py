"""The committed lock: it satisfies pyproject.toml, the environment is exactly it, and set-up
refuses a lock that disagrees with pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def setup_env():
    spec = importlib.util.spec_from_file_location("atoll_setup_env", REPO / "scripts" / "setup_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lock_satisfies_pyproject(setup_env):
    pins = setup_env.check_lock()
    assert {"torch", "grpcio", "pulp", "transformers", "peft", "setuptools"} <= set(pins)
    assert all("==" not in v and v for v in pins.values())


def test_every_locked_file_has_a_hash():
    text = (REPO / "requirements" / "lock.txt").read_text()
    blocks = [b for b in text.split("\n") if b and not b.startswith((" ", "#"))]
    assert blocks, "empty lock"
    for line in blocks:
        assert line.rstrip().endswith("\\"), f"pin without a hash: {line}"


def test_environment_is_exactly_the_lock(setup_env):
    pins, _ = setup_env.read_lock()
    wrong = {}
    for name, version in pins.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"locked vs installed: {wrong}"


@pytest.mark.parametrize("edit, replacement, said", [
    ('"pulp>=2.8"', '"pulp>=99"', "pulp>=99 ([project] dependencies) is not met by the locked pulp=="),
    ('"networkx>=3.0",', '"networkx>=3.0", "not-a-locked-package>=1",',
     "not-a-locked-package>=1 ([project] dependencies) is not in the lock"),
])
def test_disagreeing_lock_is_refused(setup_env, tmp_path, edit, replacement, said):
    text = (REPO / "pyproject.toml").read_text()
    assert edit in text
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace(edit, replacement))
    setup_env.PYPROJECT = changed
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.check_lock()
    msg = str(err.value)
    assert "disagree" in msg and "lock-upgrade" in msg
    assert said in msg


def test_setup_refuses_a_disagreeing_lock_before_touching_the_venv(tmp_path):
    """The whole command, as scripts/setup-env runs it, on a copy whose pyproject asks for more."""
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    (copy / "requirements").mkdir()
    shutil.copy(REPO / "scripts" / "setup_env.py", copy / "scripts")
    shutil.copy(REPO / "requirements" / "lock.txt", copy / "requirements")
    (copy / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text().replace('"pulp>=2.8"', '"pulp>=99"'))
    proc = subprocess.run([sys.executable, "scripts/setup_env.py", "sync", str(copy / ".venv")], cwd=copy,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert proc.returncode == 1
    assert "pulp>=99 ([project] dependencies) is not met by the locked pulp==" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (copy / ".venv").exists()
