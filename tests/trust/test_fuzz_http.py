"""Hostile input for the OpenAI-compatible HTTP door: generated bodies, headers and paths.
Every answer is an HTTP status with OpenAI's error shape (never a 500 or a dropped connection)
and the door keeps serving."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.client import Client
from tests.control.helpers import Proc, free_port, wait_for

pytestmark = pytest.mark.integration

JSONV = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) | st.floats() | st.text(max_size=30),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                     max_leaves=12)
BODY = st.one_of(
    st.fixed_dictionaries({}, optional={"model": JSONV | st.sampled_from(["wf", "base:ad", "", "x" * 5000]),
                                        "prompt": JSONV, "messages": JSONV, "max_tokens": JSONV,
                                        "temperature": JSONV, "stream": JSONV, "n": JSONV, "input": JSONV,
                                        "stop": JSONV, "seed": JSONV, "logprobs": JSONV, "top_logprobs": JSONV,
                                        "top_p": JSONV, "stream_options": JSONV, "encoding_format": JSONV,
                                        "max_completion_tokens": JSONV}),
    JSONV)
RAW = st.binary(max_size=200)


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("door")
    port, oport = free_port(), free_port()
    p = Proc(["coordinator", "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{free_port()}",
              "--state-dir", str(tmp / "s"), "--join-token", "door-token-1", "--openai-listen",
              f"127.0.0.1:{oport}"], tmp / "c.log")
    wait_for(lambda: Client(f"127.0.0.1:{port}").workflows() == [], 20)
    yield oport, p
    p.stop()


def request(port, method, path, body: bytes | None, headers: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models",
                             "/v1/models/wf", "/v1/nope", "/", "/v1/%00"]),
       body=BODY, raw=RAW, use_raw=st.booleans(),
       auth=st.sampled_from([None, "Bearer ", "Bearer atoll_x_y", "Basic abc", "Bearer " + "k" * 3000]))
def test_openai_door_survives_hostile_requests(door, path, body, raw, use_raw, auth):
    port, proc = door
    data = raw if use_raw else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    status, payload = request(port, "GET" if path.startswith("/v1/models") else "POST", path, data, headers)
    assert status in (200, 400, 401, 403, 404, 405, 409, 413, 429, 503), (status, payload[:300])
    if status != 200:
        err = json.loads(payload)["error"]
        assert isinstance(err["message"], str) and err["type"]
    assert proc.alive()
