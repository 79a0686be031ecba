"""A real fleet for the security tests: a coordinator (with the OpenAI door) and agents as
processes on loopback, a tiny random-weight Llama and two tenants' adapters, API keys for an
admin and three tenants. Only what the code before issue 15 also had is used to set it up, so
the attack tests run unchanged against that code (see the report of issue 15)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml

from atoll.client import Client
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

TOKEN = "security-test-token"
DC = dict(name="dc-1", tier="datacenter", region="us-east", price_per_hour=3.0, labels={"hardware": "a100"})
RENTER = dict(name="rent-1", tier="renter", region="us-east", price_per_hour=0.3, labels={"hardware": "a100"})


@dataclass
class Fleet:
    tmp: Path
    addr: str
    openai: str
    metrics: str
    coord: Proc
    agents: dict[str, Proc] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, who: str | None = None, timeout: float = 30) -> Client:
        return Client(self.addr, api_key=self.keys[who] if who else None, timeout=timeout)

    def agent(self, spec: dict, *extra: str, state: str | None = None, token: str = TOKEN, env: dict | None = None):
        name = spec["name"]
        cfg = node_yaml(self.tmp / f"{name}.yaml", **spec)
        p = Proc(["agent", "--coordinator", self.addr, "--config", str(cfg), "--state-dir",
                  str(self.tmp / (state or f"a-{name}")), "--join-token", token, *extra], self.tmp / f"{name}.log")
        self.agents[name] = p
        return p

    def node(self, name: str, who: str = "admin"):
        with self.client(who) as c:
            return next((n for n in c.nodes() if n.name == name), None)

    def wait_ready(self, *names: str, timeout: float = 60) -> None:
        wait_for(lambda: all((n := self.node(x)) is not None and n.state == "READY" for x in names), timeout,
                 what=f"nodes {names} READY")

    def meta(self, key: str) -> str | None:
        db = sqlite3.connect(str(self.tmp / "state" / "atoll.db"))
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            db.close()
        return row[0] if row else None

    def workflow(self, name: str, *, adapter_path=None, trusted: bool = False, rate: float = 2) -> Path:
        v = {"name": "v", "model": str(self.tmp / "base"), "accuracy": 0.9, "memory_gb": 1,
             "throughput": {"a100": 20}}
        if adapter_path:
            v.update(adapter=f"ad-{name}", adapter_path=str(adapter_path))
        spec = {"name": name, "sources": [{"name": "u", "rate": rate, "region": "us-east", "tier": "datacenter"}],
                "tasks": [{"name": "chat", "max_tokens": 4, "variants": [v]}],
                "edges": [{"from": "u", "to": "chat"}], "placement": {"trusted_only": trusted}}
        p = self.tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec))
        return p

    def stop(self) -> None:
        for p in self.agents.values():
            p.stop()
        self.coord.stop()


def start_fleet(tmp: Path, *agents: dict, env_agents: dict | None = None) -> Fleet:
    from tests.fixtures.tiny_models import build_tiny_adapter, build_tiny_llama

    build_tiny_llama(tmp / "base")
    build_tiny_adapter(tmp / "adapter-a", tmp / "base", rank=4, seed=5)
    build_tiny_adapter(tmp / "adapter-b", tmp / "base", rank=8, seed=6)
    port, oport, mport = free_port(), free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    coord = Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir",
                  str(tmp / "state"), "--heartbeat-interval", "1", "--join-token", TOKEN,
                  "--openai-listen", f"127.0.0.1:{oport}"], tmp / "coord.log")
    f = Fleet(tmp, addr, f"http://127.0.0.1:{oport}/v1", f"http://127.0.0.1:{mport}/metrics", coord)
    with Client(addr) as anon:
        admin = wait_for(lambda: anon.create_key("ops", "admin")["key"], 30, what="the coordinator")
    f.keys["admin"] = admin
    with f.client("admin") as c:
        for t in ("a", "b", "c"):
            f.keys[t] = c.create_key(f"team-{t}")["key"]
    for spec in agents:
        f.agent(spec)
    if agents:
        f.wait_ready(*(a["name"] for a in agents))
    return f


def rpc_code(fn) -> grpc.StatusCode:
    """The status code a call ends with (OK when it returns)."""
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def eventually(pred, timeout: float, what: str):
    return wait_for(pred, timeout, interval=0.2, what=what)


def now() -> float:
    return time.time()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory):
    f = start_fleet(tmp_path_factory.mktemp("sec"), DC, RENTER)
    try:
        yield f
    finally:
        f.stop()
