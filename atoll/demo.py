"""``atoll demo``: a local fleet on loopback, as separate processes.

A coordinator and three agents — a datacenter host, a marketplace renter and an edge box in
three regions, their GPUs simulated (and shown as such) — join, the node table is printed,
the renter vanishes without notice (kill -9) and is detected LOST, and everything shuts down
cleanly (agents drain first).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TOKEN_BYTES = 18

FLEET = [
    {"name": "dc-us-east-1", "tier": "datacenter", "region": "us-east", "zone": "us-east-1a",
     "price_per_hour": 4.10, "preemptible": False, "labels": {"provider": "cloud"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80, "count": 1}]}},
    {"name": "rent-us-west-1", "tier": "renter", "region": "us-west", "zone": "",
     "price_per_hour": 0.45, "preemptible": True, "labels": {"provider": "marketplace"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "memory_gb": 24, "count": 1}]}},
    {"name": "edge-eu-west-1", "tier": "edge", "region": "eu-west", "zone": "",
     "price_per_hour": 0.06, "preemptible": False, "labels": {"provider": "on-prem"},
     "simulated_hardware": {"gpus": [{"name": "NVIDIA Jetson AGX Orin", "memory_gb": 32, "count": 1}]}},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(msg: str) -> None:
    print(msg, flush=True)


class LocalFleet:
    """Starts and stops a coordinator and agents as child processes of this one."""

    def __init__(self, workdir: Path, heartbeat_interval: float = 1.0):
        import secrets

        self.dir = workdir
        self.port, self.mport = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.mport}/metrics"
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.interval = heartbeat_interval
        self.coordinator: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", ATOLL_JOIN_TOKEN=self.token)
        return subprocess.Popen([sys.executable, "-m", "atoll", *args], stdout=open(self.dir / log, "w"),
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_coordinator(self) -> None:
        self.coordinator = self._spawn(["coordinator", "--listen", self.addr, "--metrics-listen",
                                        f"127.0.0.1:{self.mport}", "--state-dir", str(self.dir / "coordinator"),
                                        "--heartbeat-interval", str(self.interval)], "coordinator.log")

    def start_agent(self, spec: dict, extra: list[str] | None = None) -> None:
        cfg = self.dir / f"{spec['name']}.yaml"
        cfg.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.agents[spec["name"]] = self._spawn(
            ["agent", "--coordinator", self.addr, "--config", str(cfg),
             "--state-dir", str(self.dir / f"agent-{spec['name']}"), *(extra or [])], f"{spec['name']}.log")

    def client(self):
        from atoll.client import Client

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


def run(keep: bool = False) -> int:
    from atoll.cli.cmd_nodes import node_table

    work = Path(tempfile.mkdtemp(prefix="atoll-demo-"))
    t0 = time.monotonic()
    fleet = LocalFleet(work)
    say(f"atoll demo — working directory {work}")
    say("[1/4] starting a coordinator and three agents (separate processes, GPUs simulated) ...")
    try:
        fleet.start_coordinator()
        for spec in FLEET:
            fleet.start_agent(spec)
        if not fleet.wait_states({s["name"]: "READY" for s in FLEET}, 60):
            say(f"agents did not become READY in 60 s; logs are in {work}")
            return 1
        say(f"      coordinator {fleet.addr}, metrics {fleet.metrics_url}")
        say("[2/4] the fleet:")
        with fleet.client() as c:
            say(node_table(c.nodes()))
        say("[3/4] the marketplace renter vanishes without notice (kill -9) ...")
        t_kill = time.monotonic()
        fleet.kill9("rent-us-west-1")
        ok = fleet.wait_states({"rent-us-west-1": "LOST"}, 15)
        say(f"      rent-us-west-1 is {'LOST' if ok else 'not LOST yet'} after "
            f"{time.monotonic() - t_kill:.1f} s (heartbeat interval {fleet.interval:.0f} s)")
        with fleet.client() as c:
            say(node_table(c.nodes()))
        say("[4/4] shutting down: agents drain, then the coordinator stops")
    finally:
        fleet.shutdown()
    say(f"done in {time.monotonic() - t0:.1f} s; logs in {work}")
    return 0
