"""Builders and process helpers for control-plane tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_yaml(path: Path, **overrides) -> Path:
    spec = {"name": "node-1", "tier": "datacenter", "region": "us-east", "zone": "us-east-1a",
            "price_per_hour": 1.5, "preemptible": False, "labels": {"provider": "test"},
            "simulated_hardware": {"gpus": [{"name": "NVIDIA L4", "memory_gb": 24}]}}
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONUNBUFFERED"] = "1"
    return e


class Proc:
    """A child process running `python -m atoll ...`, logging to a file."""

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "atoll", *args], stdout=self._log,
                                  stderr=subprocess.STDOUT, env=env(), start_new_session=True)

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def term(self, timeout: float = 15) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout)

    def alive(self) -> bool:
        return self.p.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)
        self._log.close()


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")
