"""A real fleet for workflow tests: a coordinator and five agents as processes on loopback,
a tiny random-weight Llama and three tenants' LoRA adapters built on the spot."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from atoll.demo.fleet import LocalFleet, free_port

NODES = [
    {"name": "dc-1", "tier": "datacenter", "region": "us-east", "price_per_hour": 4.0, "labels": {"hardware": "a100"}},
    {"name": "dc-2", "tier": "datacenter", "region": "us-east", "price_per_hour": 4.0, "labels": {"hardware": "a100"}},
    {"name": "dc-3", "tier": "datacenter", "region": "us-east", "price_per_hour": 4.0, "labels": {"hardware": "a100"}},
    {"name": "rent-1", "tier": "renter", "region": "us-west", "price_per_hour": 0.5, "preemptible": True,
     "labels": {"hardware": "rtx4090"}},
    {"name": "edge-1", "tier": "edge", "region": "eu-west", "price_per_hour": 0.1, "labels": {"hardware": "orin"}},
]


class Harness:
    def __init__(self, fleet: LocalFleet, models: Path):
        self.fleet = fleet
        self.models = models
        self.metrics_ports: dict[str, int] = {}
        self.started: dict[str, float] = {}        # node name -> when its agent process started

    def start_agent(self, spec: dict) -> None:
        """An agent with its /metrics served (the data plane's bytes per region pair live there)."""
        port = self.metrics_ports.setdefault(spec["name"], free_port())
        self.started[spec["name"]] = time.time()
        self.fleet.start_agent(spec, ["--metrics-listen", f"127.0.0.1:{port}"])

    def agent_metrics(self) -> str:
        """Every live agent's /metrics, one after the other."""
        return "\n".join(self.each_agent_metrics().values())

    def each_agent_metrics(self) -> dict[str, str]:
        """Every live agent's /metrics, by node name."""
        out = {}
        for name, port in self.metrics_ports.items():
            try:
                out[name] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            except OSError:
                pass            # a killed agent
        return out

    @property
    def addr(self) -> str:
        return self.fleet.addr

    def client(self, timeout: float = 30):
        from atoll.client import Client

        return Client(self.fleet.addr, timeout=timeout)

    def metrics(self) -> str:
        return urllib.request.urlopen(self.fleet.metrics_url, timeout=10).read().decode()

    def write(self, name: str, spec: dict) -> Path:
        p = self.fleet.dir / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec, sort_keys=False))
        return p

    def restart_agent(self, name: str) -> None:
        spec = next(n for n in NODES if n["name"] == name)
        self.start_agent(spec)

    def wait_nodes_ready(self, names, timeout=40) -> None:
        """Every node named READY, heartbeating from the agent process started last under that name
        (a killed agent's node stays READY until its lease runs out: that one does not count)."""
        def ready():
            with self.client(timeout=5) as c:
                got = {n.name: n for n in c.nodes()}
            return all(n in got and got[n].state == "READY" and got[n].last_heartbeat_unix >= self.started.get(n, 0)
                       for n in names)
        wait_until(ready, timeout, f"nodes READY by their current agents: {list(names)}")

    def heal(self) -> None:
        """Restart whatever a test left dead (the coordinator, agents), wait until every node is
        READY, and delete the workflows left behind, so one test's failure does not become the
        next test's."""
        if self.fleet.coordinator.poll() is not None:
            self.fleet.start_coordinator()
        for spec in NODES:
            p = self.fleet.agents.get(spec["name"])
            if p is None or p.poll() is not None:
                self.start_agent(spec)
        self.wait_nodes_ready([n["name"] for n in NODES], 60)
        with self.client() as c:                    # what a failed test did not delete
            for wf in c.workflows():
                c.delete(wf["name"])

    def restart_coordinator(self) -> None:
        self.fleet.coordinator.send_signal(signal.SIGKILL)
        self.fleet.coordinator.wait(10)
        self.fleet.start_coordinator()


@pytest.fixture(scope="package")
def harness(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama, with_chat_template

    root = tmp_path_factory.mktemp("wf")
    models = root / "models"
    with_chat_template(build_tiny_llama(models / "base"))
    for i, name in enumerate(["tenant-a", "tenant-b", "tenant-c"]):
        build_tiny_adapter(models / name, models / "base", rank=4 + 4 * i, alpha=8 + i, seed=10 + i)
    fleet = LocalFleet(root, heartbeat_interval=1.0)
    fleet.start_coordinator()
    h = Harness(fleet, models)
    for spec in NODES:
        h.start_agent(spec)
    try:
        h.wait_nodes_ready([n["name"] for n in NODES], 60)
        yield h
    finally:
        fleet.shutdown()


@pytest.fixture(autouse=True)
def _whole_fleet(request):
    """Every test that uses the fleet starts with all of it up."""
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").heal()
    yield


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")
