"""Shared fixtures. Tests never reach beyond loopback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from atoll.core.ports import free_port

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def atoll_bin() -> list[str]:
    """The command that runs the atoll CLI in this interpreter's environment."""
    return [sys.executable, "-m", "atoll"]


@pytest.fixture(scope="session", autouse=True)
def _no_child_left_running():
    """Kill the atoll processes that a fixture failing half-way never stopped (they would hold
    ports and CPU for the rest of the run)."""
    yield
    for name in ("tests.control.helpers", "control.helpers"):   # tests/ha imports it rootdir-relative
        module = sys.modules.get(name)
        if module is not None:
            module.Proc.stop_all()
