"""``/metrics`` behind an optional bearer token (``--metrics-token-file``): no token 401, a wrong
one 401, the right one 200, on the coordinator and on an agent; open when no token is set; the
Prometheus example with its ``authorization`` lines uncommented passes ``promtool check config``.

Before ``--metrics-token-file`` existed, /metrics answered every caller (and the flag was refused)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from atoll.client import Client
from atoll.core.errors import InvalidArgument
from atoll.core.metrics_http import authorized, read_token_file, serve_metrics
from tests.control.helpers import Proc, free_port, node_yaml, wait_for
from tests.deploy.deploy_helpers import PROMETHEUS_CONFIG, run, tool

SECRET = "m3tr1cs-" + "x" * 24


def get(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            assert resp.status != 200 or b"# TYPE" in body, body[:200]
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def codes(url: str) -> tuple[int, int, int, int]:
    """No header, a wrong token, the right token with another scheme, the right token."""
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {SECRET}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            other_scheme = resp.status
    except urllib.error.HTTPError as exc:
        other_scheme = exc.code
    return get(url, None), get(url, SECRET[:-1] + "y"), other_scheme, get(url, SECRET)


def test_the_token_check():
    assert authorized(None, None) and authorized("Bearer anything", None)
    assert authorized(f"Bearer {SECRET}", SECRET) and authorized(f"bearer {SECRET}", SECRET)
    for header in (None, "", "Bearer", f"Bearer {SECRET}x", f"Basic {SECRET}", SECRET, f"Bearer {SECRET[:-1]}"):
        assert not authorized(header, SECRET), header


def test_the_token_file_is_read_and_checked(tmp_path):
    assert read_token_file(None) is None
    (tmp_path / "t").write_text(f"  {SECRET}\n")
    assert read_token_file(str(tmp_path / "t")) == SECRET
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidArgument, match="holds no token"):
        read_token_file(str(tmp_path / "empty"))
    with pytest.raises(InvalidArgument, match="cannot read the metrics token file"):
        read_token_file(str(tmp_path / "missing"))


def test_serve_metrics_with_and_without_a_token():
    reg = CollectorRegistry()
    Counter("atoll_probe", "a probe", registry=reg).inc()
    guarded = serve_metrics("127.0.0.1", 0, reg, SECRET)
    open_ = serve_metrics("127.0.0.1", 0, reg, None)
    try:
        assert codes(f"http://127.0.0.1:{guarded.server_address[1]}/metrics") == (401, 401, 401, 200)
        assert get(f"http://127.0.0.1:{open_.server_address[1]}/metrics", None) == 200
    finally:
        for s in (guarded, open_):
            s.shutdown()
            s.server_close()


@pytest.mark.integration
def test_the_coordinator_and_an_agent_require_the_metrics_token(tmp_path):
    tok = tmp_path / "metrics-token"
    tok.write_text(SECRET + "\n")
    port, cport, aport = free_port(), free_port(), free_port()
    addr = f"127.0.0.1:{port}"
    coord = Proc(["coordinator", "--listen", addr, "--metrics-listen", f"127.0.0.1:{cport}", "--state-dir",
                  str(tmp_path / "state"), "--join-token", "metrics-join-token", "--metrics-token-file", str(tok)],
                 tmp_path / "coord.log")
    agent = None
    try:
        with Client(addr, timeout=3) as c:
            wait_for(lambda: c.nodes() is not None, 30, what="the coordinator")
        agent = Proc(["agent", "--coordinator", addr, "--config", str(node_yaml(tmp_path / "n.yaml", name="m-1")),
                      "--state-dir", str(tmp_path / "a"), "--join-token", "metrics-join-token",
                      "--metrics-listen", f"127.0.0.1:{aport}", "--metrics-token-file", str(tok)],
                     tmp_path / "agent.log")
        assert codes(f"http://127.0.0.1:{cport}/metrics") == (401, 401, 401, 200)
        wait_for(lambda: get(f"http://127.0.0.1:{aport}/metrics", SECRET) == 200, 60, what="the agent's /metrics")
        assert codes(f"http://127.0.0.1:{aport}/metrics") == (401, 401, 401, 200)
    finally:
        if agent is not None:
            agent.stop()
        coord.stop()


def test_the_prometheus_example_with_its_authorization_lines_passes_promtool(tmp_path):
    text = PROMETHEUS_CONFIG.read_text()
    on = re.sub(r"(?m)^    # (authorization:|  credentials_file: )", r"    \1", text)
    assert len(re.findall(r"(?m)^      credentials_file: /etc/prometheus/atoll-metrics-token$", on)) == 1
    (tmp_path / "prometheus.yml").write_text(on)
    (tmp_path / "alerts.yaml").write_text((PROMETHEUS_CONFIG.parent / "alerts.yaml").read_text())
    res = run([tool("promtool"), "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")])
    assert res.returncode == 0, f"promtool check config failed:\n{res.stdout}{res.stderr}"
    job = next(j for j in yaml.safe_load(on)["scrape_configs"] if j["job_name"] == "atoll-coordinator")
    assert job["authorization"] == {"credentials_file": "/etc/prometheus/atoll-metrics-token"}


def test_idle_connections_to_metrics_hold_no_more_than_the_bound(monkeypatch):
    """A stranger's idle connections to /metrics held a thread and a descriptor each, for ever
    (1,200 of them filled a coordinator's 1,024 descriptors and its gRPC port stopped accepting):
    at most MAX_CONNECTIONS are held, a new one closes the oldest, an idle one is closed after
    IDLE_S, and a scrape among hundreds of idle connections is answered."""
    import socket
    import threading
    import time

    import atoll.core.metrics_http as mh

    monkeypatch.setattr(mh._Quiet, "timeout", 1.0)
    registry = CollectorRegistry()
    Counter("atoll_probe", "a series", registry=registry).inc()
    httpd = serve_metrics("127.0.0.1", 0, registry)
    port = httpd.server_address[1]
    threads = threading.active_count()
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")          # a request head begun, never finished
            idle.append(s)
        time.sleep(0.5)
        assert threading.active_count() - threads <= mh.MAX_CONNECTIONS
        t0 = time.monotonic()
        assert get(f"http://127.0.0.1:{port}/metrics", None) == 200
        assert time.monotonic() - t0 < 5
        def closed_ones() -> int:
            n = 0
            for s in idle:
                s.settimeout(0.01)
                try:
                    n += s.recv(1) == b""
                except ConnectionResetError:
                    n += 1
                except socket.timeout:
                    pass
            return n

        assert closed_ones() >= 300 - mh.MAX_CONNECTIONS        # the oldest gave way to the newest
        time.sleep(mh._Quiet.timeout + 1.0)
        assert closed_ones() == 300                             # and the rest timed out, idle
    finally:
        for s in idle:
            s.close()
        httpd.shutdown()
