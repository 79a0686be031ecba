"""Ports for child processes, and what a server does when its port is taken.

A port handed out by ``free_port`` lies outside the kernel's ephemeral range, so no port-0 bind
(an agent's Worker) or outgoing connection can take it before the child binds it; and a second
atoll server on a port that is already served fails at start instead of sharing it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from atoll.core import ports
from atoll.core.rpc import SERVER_OPTIONS
from tests.control.helpers import Proc, env, wait_for


def test_ports_lie_outside_the_ephemeral_range_and_never_repeat():
    lo, hi = ports.ephemeral_range()
    seen = [ports.free_port() for _ in range(300)]
    assert len(set(seen)) == 300
    assert not [p for p in seen if lo <= p <= hi]
    assert all(1024 < p <= 65535 for p in seen)


def test_a_port_in_use_is_not_handed_out(monkeypatch):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # a range of two ports, one of them taken: only the other comes back
        monkeypatch.setattr(ports, "ephemeral_range", lambda: (taken + 2, 65535))
        monkeypatch.setattr(ports, "_LOWEST", taken)        # the range below is taken .. taken+1
        monkeypatch.setattr(ports, "_given", set())
        if not ports._bindable("127.0.0.1", taken + 1):
            pytest.skip(f"port {taken + 1} is in use by something else")
        assert ports.free_port() == taken + 1
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port()           # the one free port was handed out already


def test_a_second_grpc_server_on_a_served_port_fails_to_bind():
    async def main():
        first = grpc.aio.server(options=SERVER_OPTIONS)
        port = first.add_insecure_port("127.0.0.1:0")
        await first.start()
        try:
            second = grpc.aio.server(options=SERVER_OPTIONS)
            with pytest.raises(RuntimeError):
                bound = second.add_insecure_port(f"127.0.0.1:{port}")
                if bound == 0:              # older grpcio reports a failed bind as port 0
                    raise RuntimeError("bind failed")
        finally:
            await first.stop(0)
    asyncio.run(main())


@pytest.mark.integration
def test_a_coordinator_on_a_taken_port_exits_with_a_clear_error(tmp_path):
    port = ports.free_port()
    first = Proc(["coordinator", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "a"),
                  "--join-token", "ports-test-token"], tmp_path / "a.log")
    try:
        wait_for(lambda: "listening" in first.log() or not first.alive(), 30, what="the first coordinator")
        assert first.alive(), first.log()
        second = subprocess.run([sys.executable, "-m", "atoll", "coordinator", "--listen", f"127.0.0.1:{port}",
                                 "--state-dir", str(tmp_path / "b"), "--join-token", "ports-test-token"],
                                env=env(), capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}" in second.stdout + second.stderr
        assert first.alive()
    finally:
        first.stop()


@pytest.mark.integration
@pytest.mark.parametrize("flag", ["--worker-listen", "--entry-listen"])
def test_an_agent_on_a_taken_port_exits_with_a_clear_error(tmp_path, flag):
    import socket

    from tests.control.helpers import node_yaml

    token = "ports-test-token"
    coord = Proc(["coordinator", "--listen", f"127.0.0.1:{ports.free_port()}", "--state-dir", str(tmp_path / "c"),
                  "--join-token", token], tmp_path / "c.log")
    try:
        wait_for(lambda: "listening" in coord.log() or not coord.alive(), 30, what="the coordinator")
        addr = coord.args[2]
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            taken = held.getsockname()[1]
            agent = subprocess.run([sys.executable, "-m", "atoll", "agent", "--coordinator", addr, "--join-token", token,
                                    "--config", str(node_yaml(tmp_path / "n.yaml")), "--state-dir", str(tmp_path / "a"),
                                    flag, f"127.0.0.1:{taken}"],
                                   env=env(), capture_output=True, text=True, timeout=90)
        assert agent.returncode != 0
        assert f"cannot listen on 127.0.0.1:{taken}" in agent.stdout + agent.stderr, agent.stdout + agent.stderr
    finally:
        coord.stop()
