"""Safe defaults and failures that say why, with real processes: an emptied or damaged store is
refused; plain HTTP off loopback is warned about; a refused TLS handshake is explained on both
sides; an agent refuses a coordinator whose signing key is not the one it pinned."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trustme

from atoll.client import Client
from atoll.core.errors import Unavailable
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration
TOKEN = "safe-defaults-token"


def coordinator(state, *extra, log=None):
    port = free_port()
    p = Proc(["coordinator", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
              "--state-dir", str(state), "--join-token", TOKEN, *extra], log or state.parent / f"{state.name}.log")
    return p, f"127.0.0.1:{port}"


def up(addr: str, **kw) -> None:
    with Client(addr, timeout=3, **kw) as c:
        wait_for(lambda: c.nodes() is not None, 30, what="the coordinator")


def test_an_emptied_or_damaged_store_is_refused_unless_told(tmp_path):
    state = tmp_path / "s"
    p, addr = coordinator(state)
    up(addr)
    with Client(addr) as c:
        c.create_key("ops", "admin")                   # the store now holds the only admin key
    p.term()
    for f in state.glob("atoll.db*"):
        f.unlink()
    (state / "atoll.db").write_bytes(b"")              # a 0-byte database: no keys, open to everyone
    cmd = [sys.executable, "-m", "atoll", "coordinator", "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen",
           f"127.0.0.1:{free_port()}", "--state-dir", str(state), "--join-token", TOKEN]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "looks emptied, truncated or replaced" in out.stderr
    assert "--allow-empty-store" in out.stderr and "Traceback" not in out.stderr
    (state / "atoll.db").write_bytes(b"this is not a database at all" * 100)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is damaged" in out.stderr and "Traceback" not in out.stderr
    (state / "atoll.db").unlink()
    p2, addr2 = coordinator(state, "--allow-empty-store", log=tmp_path / "again.log")
    try:
        up(addr2)
        assert "starting on an empty or replaced store" in p2.log()
    finally:
        p2.stop()
    p3, addr3 = coordinator(state, log=tmp_path / "third.log")          # and from now on the new store is it
    try:
        up(addr3)
    finally:
        p3.stop()


def test_plain_http_off_loopback_is_warned_about(tmp_path):
    p, addr = coordinator(tmp_path / "s", "--openai-listen", f"0.0.0.0:{free_port()}")
    p2 = None
    try:
        up(addr)
        log = p.log()
        assert "INSECURE" in log and "OpenAI door" in log and "not a loopback address" in log
        p2 = Proc(["coordinator", "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"0.0.0.0:{free_port()}",
                   "--state-dir", str(tmp_path / "s2"), "--join-token", TOKEN], tmp_path / "m.log")
        wait_for(lambda: "coordinator listening" in p2.log(), 30, what="the second coordinator")
        assert "INSECURE" in p2.log() and "metrics (--metrics-listen)" in p2.log()
    finally:
        p.stop()
        if p2 is not None:
            p2.stop()


def _pem(tmp, name, blob) -> str:
    path = tmp / name
    blob.write_to_path(str(path))
    return str(path)


def test_a_refused_tls_handshake_says_why_on_both_sides(tmp_path):
    ca, other = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    rogue = other.issue_cert("127.0.0.1")
    tls = {"ca": _pem(tmp_path, "ca.pem", ca.cert_pem), "other": _pem(tmp_path, "other.pem", other.cert_pem),
           "cert": _pem(tmp_path, "c.pem", cert.cert_chain_pems[0]), "key": _pem(tmp_path, "c.key", cert.private_key_pem),
           "rcert": _pem(tmp_path, "r.pem", rogue.cert_chain_pems[0]),
           "rkey": _pem(tmp_path, "r.key", rogue.private_key_pem)}
    agent_addr = f"127.0.0.1:{free_port()}"
    p, addr = coordinator(tmp_path / "s", "--tls-cert", tls["cert"], "--tls-key", tls["key"], "--tls-client-ca",
                          tls["ca"], "--agent-listen", agent_addr)
    agent = None
    try:
        up(addr, tls_ca=tls["ca"])
        with Client(addr, timeout=3, tls_ca=tls["other"]) as c:        # trusts the wrong CA
            with pytest.raises(Unavailable, match=r"TLS handshake failed: .*unknown CA"):
                c.nodes()
        with Client(addr, timeout=3) as c:                             # plaintext to a TLS port
            with pytest.raises(Unavailable, match="a TLS-only server does so to plaintext clients"):
                c.nodes()
        out = subprocess.run([sys.executable, "-m", "atoll", "nodes", "--coordinator", addr], capture_output=True,
                             text=True, timeout=60, env={**__import__("os").environ, "ATOLL_TLS_CA": tls["other"]})
        assert out.returncode == 2 and "TLS handshake failed" in out.stderr and len(out.stderr.splitlines()) == 1
        assert "is it running" not in out.stderr
        # an agent with a certificate from another CA: it says why, and keeps trying; the server logs its side
        agent = Proc(["agent", "--coordinator", agent_addr, "--config", str(node_yaml(tmp_path / "n.yaml")),
                      "--state-dir", str(tmp_path / "a"), "--join-token", TOKEN, "--tls-ca", tls["ca"],
                      "--tls-cert", tls["rcert"], "--tls-key", tls["rkey"]], tmp_path / "agent.log")
        wait_for(lambda: "TLS handshake with the coordinator failed" in agent.log(), 30,
                 what="the agent to say its handshake failed")
        assert "requires a client certificate" in agent.log() and agent.alive()
        wait_for(lambda: "Handshake failed" in p.log() and "CERTIFICATE_VERIFY_FAILED" in p.log(), 30,
                 what="the coordinator's side of the refused handshake")
    finally:
        p.stop()
        if agent is not None:
            agent.stop()


def test_an_agent_refuses_a_coordinator_with_another_signing_key(tmp_path):
    spec = node_yaml(tmp_path / "n.yaml", name="pinned-1")
    p, addr = coordinator(tmp_path / "one")
    try:
        a = Proc(["agent", "--coordinator", addr, "--config", str(spec), "--state-dir", str(tmp_path / "a"),
                  "--join-token", TOKEN], tmp_path / "a1.log")
        with Client(addr) as c:
            wait_for(lambda: [n.state for n in c.nodes()] == ["READY"], 40, what="the agent")
        assert (tmp_path / "a" / "coordinator.pub").exists()
        key = tmp_path / "a" / "node.key"
        assert key.stat().st_mode & 0o777 == 0o600
        a.stop()
    finally:
        p.stop()
    p2, addr2 = coordinator(tmp_path / "two")           # another coordinator, another signing key
    try:
        a2 = Proc(["agent", "--coordinator", addr2, "--config", str(spec), "--state-dir", str(tmp_path / "a"),
                   "--join-token", TOKEN], tmp_path / "a2.log")
        wait_for(lambda: not a2.alive(), 40, what="the agent to refuse the unknown coordinator")
        assert a2.p.returncode == 2 and "pinned" in a2.log() and "Traceback" not in a2.log()
    finally:
        p2.stop()
