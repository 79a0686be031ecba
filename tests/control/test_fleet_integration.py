"""Real processes on loopback: a coordinator and three agents, killed and restarted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration
TOKEN = "integration-token-1"


class Fleet:
    def __init__(self, tmp):
        self.tmp = tmp
        self.port, self.mport = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.coord = None
        self.agents: dict[str, Proc] = {}

    def start_coordinator(self):
        self.coord = Proc(["coordinator", "--listen", self.addr, "--metrics-listen", f"127.0.0.1:{self.mport}",
                           "--state-dir", str(self.tmp / "coord"), "--heartbeat-interval", "1",
                           "--join-token", TOKEN], self.tmp / "coord.log")
        wait_for(self.healthy, 20, what="coordinator health")

    def healthy(self):
        with grpc.insecure_channel(self.addr) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return r.status == health_pb2.HealthCheckResponse.SERVING

    def start_agent(self, name, **spec):
        cfg = node_yaml(self.tmp / f"{name}.yaml", name=name, **spec)
        self.agents[name] = Proc(["agent", "--coordinator", self.addr, "--config", str(cfg),
                                  "--state-dir", str(self.tmp / f"state-{name}"), "--join-token", TOKEN],
                                 self.tmp / f"{name}.log")
        return self.agents[name]

    def nodes(self) -> dict[str, dict]:
        out = subprocess.run([sys.executable, "-m", "atoll", "nodes", "--coordinator", self.addr, "-o", "json"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        return {n["name"]: n for n in json.loads(out.stdout)}

    def states(self) -> dict[str, str]:
        from atoll.client import Client

        with Client(self.addr, timeout=3) as c:
            return {n.name: n.state for n in c.nodes()}

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.mport}/metrics", timeout=5).read().decode()

    def close(self):
        for p in self.agents.values():
            p.stop()
        if self.coord:
            self.coord.stop()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def test_fleet_join_kill_restart_and_drain(fleet):
    fleet.start_coordinator()
    fleet.start_agent("dc-1", tier="datacenter", region="us-east", price_per_hour=2.5)
    fleet.start_agent("rent-1", tier="renter", region="us-west", price_per_hour=0.6, preemptible=True)
    fleet.start_agent("edge-1", tier="edge", region="eu-west", price_per_hour=0.05,
                      simulated_hardware=None)
    wait_for(lambda: fleet.states() == {"dc-1": "READY", "rent-1": "READY", "edge-1": "READY"}, 30,
             what="three READY nodes")

    nodes = fleet.nodes()
    for key in ("name", "id", "state", "tier", "region", "price_per_hour", "last_heartbeat_age_seconds", "simulated"):
        assert key in nodes["dc-1"]
    assert nodes["dc-1"]["simulated"] is True and nodes["edge-1"]["simulated"] is False
    assert nodes["rent-1"]["price_per_hour"] == 0.6 and nodes["rent-1"]["tier"] == "renter"
    assert nodes["dc-1"]["gpus"][0]["name"] == "NVIDIA L4"
    assert nodes["dc-1"]["last_heartbeat_age_seconds"] < 3
    ids = {n: v["id"] for n, v in nodes.items()}
    table = subprocess.run([sys.executable, "-m", "atoll", "nodes", "--coordinator", fleet.addr],
                           capture_output=True, text=True, timeout=20).stdout
    assert "dc-1" in table and "LAST-HB" in table and "SIMULATED" in table

    # filters
    from atoll.client import Client
    with Client(fleet.addr) as c:
        assert [n.name for n in c.nodes(tier="edge")] == ["edge-1"]
        assert [n.name for n in c.nodes(region="us-west")] == ["rent-1"]

    # metrics: the fleet by state/tier/region, and promtool accepts the exposition
    m = fleet.metrics()
    assert 'atoll_nodes{region="us-east",state="READY",tier="datacenter"} 1.0' in m
    assert "atoll_heartbeats_received_total" in m and "atoll_fleet_gpus" in m
    if shutil.which("promtool") is None:
        pytest.fail("promtool is needed (scripts/system-deps installs the Debian 'prometheus' package)")
    chk = subprocess.run(["promtool", "check", "metrics"], input=m, capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr

    # a hiccup shorter than one interval (agent frozen for 0.8 s) changes no state
    agent = fleet.agents["edge-1"]
    import signal
    agent.p.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    seen = set()
    while time.monotonic() - t0 < 0.8:
        seen.add(fleet.states()["edge-1"])
        time.sleep(0.1)
    agent.p.send_signal(signal.SIGCONT)
    for _ in range(15):
        seen.add(fleet.states()["edge-1"])
        time.sleep(0.1)
    assert seen == {"READY"}

    # kill -9 an agent: not READY within 3 s, LOST within 10 s
    fleet.agents["rent-1"].kill9()
    t_kill = time.monotonic()
    wait_for(lambda: fleet.states()["rent-1"] != "READY", 3.0, what="killed agent not READY")
    wait_for(lambda: fleet.states()["rent-1"] == "LOST", 10.0 - (time.monotonic() - t_kill), what="LOST")
    assert time.monotonic() - t_kill < 10

    # kill -9 the coordinator; an agent dies while it is away; restart it
    fleet.coord.kill9()
    fleet.agents["edge-1"].kill9()
    time.sleep(1.5)
    fleet.start_coordinator()
    wait_for(lambda: fleet.states().get("dc-1") == "READY", 15, what="dc-1 READY after restart")
    wait_for(lambda: fleet.states().get("edge-1") == "LOST", 20, what="edge-1 LOST after restart")
    after = fleet.nodes()
    assert {n: v["id"] for n, v in after.items()} == ids          # nothing acknowledged was lost
    assert after["rent-1"]["state"] == "LOST"
    assert after["dc-1"]["price_per_hour"] == 2.5

    # agent restart keeps its node id
    fleet.agents["dc-1"].kill9()
    fleet.start_agent("dc-1", tier="datacenter", region="us-east", price_per_hour=2.5)
    wait_for(lambda: fleet.nodes()["dc-1"]["heartbeats"] > 0 and fleet.states()["dc-1"] == "READY", 15)
    assert fleet.nodes()["dc-1"]["id"] == ids["dc-1"]

    # SIGTERM drains: DRAINING, then a clean exit
    rc = fleet.agents["dc-1"].term()
    assert rc == 0, fleet.agents["dc-1"].log()
    assert fleet.states()["dc-1"] == "DRAINING"
    assert "drained" in fleet.agents["dc-1"].log()
    assert "Traceback" not in fleet.coord.log()


def test_operator_drain_health_and_reflection(fleet):
    fleet.start_coordinator()
    fleet.start_agent("n-1")
    wait_for(lambda: fleet.states().get("n-1") == "READY", 30)
    out = subprocess.run([sys.executable, "-m", "atoll", "drain", "n-1", "--coordinator", fleet.addr],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "DRAINING" in out.stdout
    time.sleep(1.5)
    assert fleet.states()["n-1"] == "DRAINING"        # heartbeats keep it DRAINING, not READY
    assert "drained by the coordinator" in fleet.agents["n-1"].log()
    bad = subprocess.run([sys.executable, "-m", "atoll", "drain", "nobody", "--coordinator", fleet.addr],
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode != 0 and "NOT_FOUND" in bad.stderr and "Traceback" not in bad.stderr

    with grpc.insecure_channel(fleet.addr) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=5)))
        names = {s.name for s in resp.list_services_response.service}
    assert {"atoll.v1.AgentService", "atoll.v1.ClientService", "grpc.health.v1.Health"} <= names
