"""A local fleet for the demo and the integration tests: a coordinator (with its OpenAI door) and
agents started and stopped as child processes of this one, on loopback."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from atoll.client import Client
from atoll.core.ports import free_port  # noqa: F401  (tests and benches import it from here)

TOKEN_BYTES = 18


class LocalFleet:
    """Starts and stops a coordinator and agents as child processes of this one."""

    def __init__(self, workdir: Path, heartbeat_interval: float = 1.0):
        self.dir = workdir
        self.port, self.mport, self.oport = free_port(), free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.mport}/metrics"
        self.openai_url = f"http://127.0.0.1:{self.oport}/v1"
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.interval = heartbeat_interval
        self.coordinator: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}

    def _spawn(self, args: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", ATOLL_JOIN_TOKEN=self.token, **(env or {}))
        return subprocess.Popen([sys.executable, "-m", "atoll", *args], stdout=open(self.dir / log, "a"),
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_coordinator(self) -> None:
        self.coordinator = self._spawn(["coordinator", "--listen", self.addr, "--metrics-listen",
                                        f"127.0.0.1:{self.mport}", "--state-dir", str(self.dir / "coordinator"),
                                        "--heartbeat-interval", str(self.interval),
                                        "--openai-listen", f"127.0.0.1:{self.oport}"], "coordinator.log")

    def start_agent(self, spec: dict, extra: list[str] | None = None, env: dict | None = None) -> None:
        cfg = self.dir / f"{spec['name']}.yaml"
        cfg.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.agents[spec["name"]] = self._spawn(
            ["agent", "--coordinator", self.addr, "--config", str(cfg),
             "--state-dir", str(self.dir / f"agent-{spec['name']}"), *(extra or [])], f"{spec['name']}.log", env)

    def client(self) -> Client:
        return Client(self.addr, timeout=5)

    def wait_states(self, want: dict[str, str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.client() as c:
                    got = {n.name: n.state for n in c.nodes()}
                if all(got.get(k) == v for k, v in want.items()):
                    return True
            except Exception:  # noqa: BLE001 - the coordinator may still be starting
                pass
            for name, p in self.agents.items():
                if p.poll() is not None and want.get(name) == "READY":
                    raise RuntimeError(f"agent {name} exited: see {self.dir / (name + '.log')}")
            time.sleep(0.2)
        return False

    def kill9(self, name: str) -> None:
        p = self.agents[name]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def shutdown(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.agents.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.send_signal(signal.SIGTERM)
            try:
                self.coordinator.wait(15)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()
