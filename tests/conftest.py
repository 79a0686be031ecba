"""Shared fixtures. Tests never reach beyond loopback."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRITON_INTERPRET", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def atoll_bin() -> list[str]:
    """The command that runs the atoll CLI in this interpreter's environment."""
    return [sys.executable, "-m", "atoll"]
