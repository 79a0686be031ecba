"""TLS on the client API, mutual TLS between agents and the coordinator (and from the coordinator
to agents' Workers); plaintext and wrongly-signed peers refused. Certificates come from trustme."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import trustme
import yaml

from atoll.client import Client
from atoll.core.errors import Unavailable
from tests.control.helpers import Proc, free_port, node_yaml, wait_for

pytestmark = pytest.mark.integration
TOKEN = "tls-test-token"


def pem(tmp, name, blob) -> str:
    p = tmp / name
    blob.write_to_path(str(p))
    return str(p)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca, rogue = trustme.CA(), trustme.CA()
    out = {"ca": pem(tmp, "ca.pem", ca.cert_pem), "tmp": tmp}
    for who, issuer in (("coord", ca), ("agent", ca), ("rogue", rogue)):
        cert = issuer.issue_cert("127.0.0.1", "localhost")
        out[f"{who}_cert"] = pem(tmp, f"{who}.pem", cert.cert_chain_pems[0])
        out[f"{who}_key"] = pem(tmp, f"{who}.key", cert.private_key_pem)
    return out


def test_mutual_tls_fleet_and_refusals(pki, tmp_path):
    from tests.fixtures.tiny_models import build_tiny_llama

    build_tiny_llama(tmp_path / "base")
    port = free_port()
    addr, agent_addr = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    coord = Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{free_port()}",
                  "--state-dir", str(tmp_path / "s"), "--heartbeat-interval", "1", "--join-token", TOKEN,
                  "--tls-cert", pki["coord_cert"], "--tls-key", pki["coord_key"], "--tls-client-ca", pki["ca"],
                  "--agent-listen", agent_addr], tmp_path / "c.log")
    procs = [coord]
    try:
        def agent(name, *tls, target=agent_addr):
            p = Proc(["agent", "--coordinator", target, "--config", str(node_yaml(tmp_path / f"{name}.yaml", name=name,
                     labels={"hardware": "a100"})), "--state-dir", str(tmp_path / name), "--join-token", TOKEN, *tls],
                     tmp_path / f"{name}.log")
            procs.append(p)
            return p

        good = agent("good", "--tls-ca", pki["ca"], "--tls-cert", pki["agent_cert"], "--tls-key", pki["agent_key"])
        with Client(addr, tls_ca=pki["ca"]) as c:
            wait_for(lambda: [n.state for n in c.nodes()] == ["READY"], 30, what="the mTLS agent READY")
        # an agent whose certificate another CA signed: the handshake fails, it never joins
        agent("rogue", "--tls-ca", pki["ca"], "--tls-cert", pki["rogue_cert"], "--tls-key", pki["rogue_key"])
        # an agent with TLS but no client certificate, on the client port: refused (it exits)
        nocert = agent("nocert", "--tls-ca", pki["ca"], target=addr)
        # a plaintext agent: cannot talk to a TLS port
        agent("plain")
        wait_for(lambda: not nocert.alive(), 20, what="the certificate-less agent to be refused")
        assert nocert.p.returncode == 2 and "mutual TLS" in nocert.log()
        time.sleep(2)
        with Client(addr, tls_ca=pki["ca"]) as c:
            assert [n.name for n in c.nodes()] == ["good"]
            # the coordinator reaches the agent's Worker over mutual TLS too
            spec = {"name": "wf-tls", "sources": [{"name": "u", "rate": 1, "region": "us-east", "tier": "datacenter"}],
                    "tasks": [{"name": "t", "max_tokens": 3, "variants": [
                        {"name": "v", "model": str(tmp_path / "base"), "accuracy": 0.9, "throughput": {"a100": 5}}]}],
                    "edges": [{"from": "u", "to": "t"}]}
            (tmp_path / "wf.yaml").write_text(yaml.safe_dump(spec))
            c.submit(str(tmp_path / "wf.yaml"))
            c.wait_ready("wf-tls", 60)
            assert isinstance(c.invoke("wf-tls", {"text": "secure"})["output"]["text"], str)
        # a plaintext client is refused
        with Client(addr, timeout=3) as plain:
            with pytest.raises(Unavailable):
                plain.nodes()
        assert good.alive() and "Traceback" not in coord.log()
    finally:
        for p in procs:
            p.stop()


def test_plaintext_only_on_loopback_unless_insecure(tmp_path):
    base = [sys.executable, "-m", "atoll", "coordinator", "--listen", f"0.0.0.0:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "s"), "--join-token", TOKEN]
    out = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "plaintext" in out.stderr and "--insecure" in out.stderr
    p = subprocess.Popen(base[:-2] + ["--join-token", TOKEN, "--insecure"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            lines.append(line)
            if "coordinator listening" in line:
                break
        assert any("INSECURE" in l for l in lines), lines
    finally:
        p.kill()
        p.wait()
