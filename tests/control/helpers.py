"""Builders and process helpers for control-plane tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from atoll.core.ports import free_port  # noqa: F401  (the tests import it from here)


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
    """A child process running `python -m atoll ...`, logging to a file. Every one started is
    remembered, so a timed-out wait can show the logs of those that died, and the session's end
    can kill those a failed fixture left running."""

    started: list["Proc"] = []

    def __init__(self, args: list[str], log: Path):
        self.args = args
        self.log_path = log
        self._log = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "atoll", *args], stdout=self._log,
                                  stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        Proc.started.append(self)

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
        if self in Proc.started:
            Proc.started.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(cls.started):
            proc.stop()


def _dead_children() -> str:
    """The last log lines of every started child that has exited (why a fleet never came up)."""
    out = []
    for proc in Proc.started:
        if not proc.alive():
            tail = "\n    ".join(proc.log().splitlines()[-8:])
            out.append(f"\n  `atoll {' '.join(proc.args[:1])}` exited {proc.p.returncode}; its log ends:\n    {tail}")
    return "".join(out)


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
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}{_dead_children()}")
