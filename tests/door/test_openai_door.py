"""The OpenAI door's HTTP protocol, with the official ``openai`` client against a scripted
backend: every field reaches the backend, answers have OpenAI's shapes (streaming included),
errors have OpenAI's error shape and status, bodies and times are bounded."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import struct

import openai
import pytest

from atoll.core.errors import PermissionDenied, Unauthenticated

from .helpers import WORDS, Scripted, serving


@pytest.fixture(scope="module")
def door():
    backend = Scripted()

    def authenticate(authorization: str):
        if authorization == "Bearer good":
            return "tenant-a"
        if authorization == "Bearer readonly":
            raise PermissionDenied("this key may not generate")
        raise Unauthenticated("unknown API key")

    with serving(backend, authenticate, max_body=64 * 1024, body_timeout=1.0) as d:
        d.backend = backend
        yield d


@pytest.fixture
def oa(door):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{door.port}/v1", api_key="good", max_retries=0, timeout=20)


def raw(door, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Authorization": "Bearer good", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_models(oa):
    assert [(m.id, m.owned_by) for m in oa.models.list().data] == [("scripted", "tests")]
    assert oa.models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError) as ei:
        oa.models.retrieve("nope")
    assert ei.value.body["code"] == "model_not_found"


def test_completion_fields_reach_the_backend_and_come_back(door, oa):
    r = oa.completions.create(model="scripted", prompt="hi there", max_tokens=3, temperature=0.5, top_p=0.9,
                              seed=-7, stop=["zzz"], n=2, logprobs=2, user="someone")
    got = door.backend.requests[-1]
    assert (got.prompt, got.max_tokens, got.temperature, got.top_p, got.seed, got.stop, got.n) == \
        ("hi there", 3, 0.5, 0.9, -7, ("zzz",), 2)
    assert got.logprobs and got.top_logprobs == 2 and not got.chat
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == "0:Hello0: from0: the" and r.choices[1].text.startswith("1:Hello")
    assert all(c.finish_reason == "length" for c in r.choices)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["0:Hello", "0: from", "0: the"] and lp.token_logprobs == [-0.25, -0.5, -0.75]
    assert lp.text_offset == [0, 7, 14] and len(lp.top_logprobs[0]) == 2
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 6 and r.usage.total_tokens == 11


def test_a_batch_of_prompts_gets_choices_in_prompt_order(door, oa):
    r = oa.completions.create(model="scripted", prompt=["a", "b", "c"], max_tokens=1, n=2)
    assert [c.index for c in r.choices] == list(range(6))
    assert [door_req.prompt for door_req in door.backend.requests[-3:]] == ["a", "b", "c"]
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens == 15


def test_finish_reason_stop_and_length(oa):
    assert oa.completions.create(model="scripted", prompt="x").choices[0].finish_reason == "stop"
    assert oa.completions.create(model="scripted", prompt="x", max_tokens=2).choices[0].finish_reason == "length"
    r = oa.completions.create(model="scripted", prompt="x", stop=" the")
    assert r.choices[0].text == "Hello from" and r.choices[0].finish_reason == "stop"


def test_chat_keeps_the_messages_whole(door, oa):
    r = oa.chat.completions.create(model="scripted", max_completion_tokens=4, logprobs=True, top_logprobs=3,
                                   messages=[{"role": "developer", "content": "be brief"},
                                             {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                          {"type": "text", "text": "there"}]},
                                             {"role": "assistant", "content": "hello"},
                                             {"role": "user", "content": "again", "name": "bob"}])
    got = door.backend.requests[-1]
    assert got.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                            {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": "again", "name": "bob"})
    assert got.prompt is None and got.max_tokens == 4 and got.input_text == "again"
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "".join(WORDS[:4]) and r.choices[0].finish_reason == "length"
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == WORDS[:4] and content[0].bytes == list(b"Hello")
    assert len(content[0].top_logprobs) == 3


def test_streaming_chat_with_usage(oa):
    chunks = list(oa.chat.completions.create(model="scripted", stream=True, n=2, max_tokens=3,
                                             stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": "hi"}]))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    assert sorted(c.choices[0].index for c in roles) == [0, 1]
    texts = {0: "", 1: ""}
    finish = {}
    for c in chunks[:-1]:
        ch = c.choices[0]
        texts[ch.index] += ch.delta.content or ""
        if ch.finish_reason:
            finish[ch.index] = ch.finish_reason
        assert c.usage is None
    assert texts == {0: "0:Hello0: from0: the", 1: "1:Hello1: from1: the"}
    assert finish == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_streaming_completion_and_the_done_marker(door):
    status, body = raw(door, "POST", "/v1/completions", json.dumps({"model": "scripted", "prompt": "x",
                                                                  "stream": True, "max_tokens": 2}))
    events = [e for e in body.decode().split("\n\n") if e]
    assert status == 200 and events[-1] == "data: [DONE]"
    parts = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert [p["choices"][0]["text"] for p in parts] == ["Hello", " from"]
    assert parts[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in parts[0]


def test_embeddings_float_and_base64(oa):
    r = oa.embeddings.create(model="scripted", input=["ab", "abcd"], encoding_format="float")
    assert [d.embedding for d in r.data] == [[2.0, 0.5, -1.0], [4.0, 0.5, -1.0]] and r.usage.prompt_tokens == 6
    r = oa.embeddings.create(model="scripted", input="abc")          # the client asks for base64 itself
    assert r.data[0].embedding == [3.0, 0.5, -1.0]


def test_embeddings_base64_on_the_wire(door):
    status, body = raw(door, "POST", "/v1/embeddings", json.dumps({"model": "scripted", "input": [1, 2],
                                                                 "encoding_format": "base64"}))
    vec = json.loads(body)["data"][0]["embedding"]
    assert status == 200 and struct.unpack("<3f", base64.b64decode(vec)) == (2.0, 0.5, -1.0)


@pytest.mark.parametrize("body, param", [
    ({"model": "scripted", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "scripted", "prompt": "x", "max_tokens": "4"}, "max_tokens"),          # strict: no coercion
    ({"model": "scripted", "prompt": "x", "temperature": 2.5}, "temperature"),
    ({"model": "scripted", "prompt": "x", "n": 17}, "n"),
    ({"model": "scripted", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "scripted", "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": "scripted", "prompt": "x", "echo": True}, "echo"),
    ({"model": "scripted", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": "scripted", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "scripted", "prompt": ""}, "prompt"),
    ({"model": "scripted"}, "prompt"),
    ({"prompt": "x"}, "model"),
    ({"model": "scripted", "prompt": [-1, 2]}, "prompt"),
    ({"model": "scripted", "prompt": ["x"] * 5, "n": 16}, "n"),                         # 80 completions in one request
])
def test_bad_completion_bodies_name_the_field(door, body, param):
    status, payload = raw(door, "POST", "/v1/completions", json.dumps(body))
    err = json.loads(payload)["error"]
    assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize("body, param", [
    ({"model": "scripted", "messages": []}, "messages"),
    ({"model": "scripted", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "scripted", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools"),
    ({"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
      "max_completion_tokens": 4}, "max_tokens"),
])
def test_bad_chat_bodies_name_the_field(door, body, param):
    status, payload = raw(door, "POST", "/v1/chat/completions", json.dumps(body))
    err = json.loads(payload)["error"]
    assert status == 400 and err["param"] == param, err


def test_errors_have_openais_shape_and_status(door, oa):
    with pytest.raises(openai.NotFoundError) as ei:
        oa.completions.create(model="other", prompt="x")
    assert ei.value.status_code == 404 and ei.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):           # and the same for a stream: a plain 404, no stream
        oa.chat.completions.create(model="other", stream=True, messages=[{"role": "user", "content": "x"}])
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{door.port}/v1", api_key="bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.models.list()
    assert ei.value.body["code"] == "invalid_api_key" and ei.value.body["type"] == "authentication_error"
    ro = openai.OpenAI(base_url=f"http://127.0.0.1:{door.port}/v1", api_key="readonly", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        ro.completions.create(model="scripted", prompt="x")
    for method, path, status in (("GET", "/v1/nope", 404), ("GET", "/", 404), ("GET", "/v1/completions", 405),
                                 ("DELETE", "/v1/models", 405)):
        got, payload = raw(door, method, path)
        assert got == status and json.loads(payload)["error"]["message"]


def test_bodies_are_bounded(door):
    status, payload = raw(door, "POST", "/v1/completions", b"x" * (64 * 1024 + 1))
    assert status == 413 and json.loads(payload)["error"]["type"] == "invalid_request_error"
    for body, msg in ((b"{not json", "not JSON"), (b"[1, 2]", "JSON object"), (b"", "empty")):
        status, payload = raw(door, "POST", "/v1/completions", body)
        assert status == 400 and msg in json.loads(payload)["error"]["message"]


def test_a_body_of_too_many_arrays_is_refused_before_it_is_parsed(door, monkeypatch):
    """Parsing and validating hold the event loop: a body of more arrays and objects than any
    request needs is refused from a byte count, before json.loads sees it."""
    import atoll.core.openai_http as http

    parsed = []
    real = http.json.loads
    monkeypatch.setattr(http.json, "loads", lambda b, *a, **k: (isinstance(b, bytes) and b.startswith(b'{"model"')
                                                                and parsed.append(len(b))) or real(b, *a, **k))
    many = b'{"model":"scripted","prompt":[' + b",".join([b"[]"] * (http.MAX_CONTAINERS + 10)) + b"]}"
    status, payload = raw(door, "POST", "/v1/completions", many, {"Content-Type": "application/json"})
    err = json.loads(payload)["error"]
    assert status == 400 and "at most 16384" in err["message"] and not parsed, (status, err, parsed)
    fits = b'{"model":"scripted","prompt":[' + b",".join([b"[1]"] * 64) + b"]}"
    status, payload = raw(door, "POST", "/v1/completions", fits, {"Content-Type": "application/json"})
    assert status == 200 and parsed, payload


def test_deeply_nested_json_is_invalid_not_an_internal_error(door, caplog):
    """Arrays nested deeper than the parser's stack (within the body bound) are a 400 of
    OpenAI's shape, like any body that is not JSON, and log nothing at error level (before: a
    500 and an error line with a traceback per request)."""
    deep = b"[" * 10000 + b"]" * 10000          # deeper than the parser follows, within the container cap
    bodies = (deep, b'{"model":"scripted","messages":' + deep + b"}",
              b'{"model":"scripted","prompt":"x","logit_bias":{"a":' + deep + b"}}")
    with caplog.at_level(logging.INFO, logger="atoll.http"):
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            for body in bodies:
                status, payload = raw(door, "POST", path, body, {"Content-Type": "application/json"})
                err = json.loads(payload)["error"]
                assert status == 400 and err["type"] == "invalid_request_error", (path, status, err)
                assert "nest too deeply" in err["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _read_response(s: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body), however the segments came."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            re.search(rb"(?i)content-length: *(\d+)", data).group(1)):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_body_that_never_arrives_times_out(door):
    s = socket.create_connection(("127.0.0.1", door.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
              b"Content-Length: 100\r\n\r\n{\"model\"")
    s.settimeout(10)
    data = _read_response(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 408") and b"did not arrive" in data


def test_authorize_is_asked_with_the_route_and_its_refusal_is_403():
    """``authorize(route, caller)`` sees each route as the authorization table names it (the
    model's id is not part of it), after ``authenticate``; a refusal answers 403 in OpenAI's shape
    and the backend never sees the request."""
    asked = []

    def authorize(route: str, caller) -> None:
        asked.append((route, caller))
        if route == "POST /v1/embeddings":
            raise PermissionDenied("this caller may not embed")

    backend = Scripted()
    with serving(backend, lambda authorization: authorization[7:], authorize=authorize) as d:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="k1", max_retries=0, timeout=20)
        assert client.models.retrieve("scripted").id == "scripted"
        client.completions.create(model="scripted", prompt="hi", max_tokens=1)
        with pytest.raises(openai.PermissionDeniedError) as ei:
            client.embeddings.create(model="scripted", input="hi")
    assert ei.value.status_code == 403 and "may not embed" in ei.value.body["message"]
    assert asked == [("GET /v1/models/{model}", "k1"), ("POST /v1/completions", "k1"), ("POST /v1/embeddings", "k1")]
    assert len(backend.requests) == 1
