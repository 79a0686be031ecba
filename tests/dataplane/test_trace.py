"""Request ids and W3C trace context: each hop is a child span of its caller; spans reach an
OpenTelemetry collector as OTLP/HTTP JSON when one is configured."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from atoll.agent.dataplane.trace import OtlpExporter, start_span
from tests.control.helpers import wait_for


def test_a_hop_continues_its_callers_trace():
    root = start_span((), "entry", "req-1")
    assert len(root.trace_id) == 32 and root.parent_span == "" and root.request_id == "req-1"
    hop = start_span(root.metadata(), "hop")
    assert (hop.trace_id, hop.parent_span, hop.request_id) == (root.trace_id, root.span_id, "req-1")
    assert hop.span_id != root.span_id
    # a malformed or all-zero traceparent starts a new trace instead of failing the request
    for bad in ("garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-XYZ-1-01"):
        s = start_span((("traceparent", bad),), "entry")
        assert s.parent_span == "" and len(s.trace_id) == 32 and s.trace_id != "0" * 32


def test_spans_are_exported_to_an_otlp_collector():
    got: list[dict] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append({"path": self.path, "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    exp = OtlpExporter(f"http://127.0.0.1:{srv.server_address[1]}", "atoll-agent", "node-1", interval=0.1)
    try:
        root = start_span((), "entry", "req-9")
        hop = start_span(root.metadata(), "hop")
        hop.attrs["atoll.task"] = "gen"
        exp.export(root, root.start_unix + 0.01, True)
        exp.export(hop, hop.start_unix + 0.01, False, "stage gen: UNAVAILABLE")
        wait_for(lambda: sum(len(s["spans"]) for g in got for rs in g["body"]["resourceSpans"]
                             for s in rs["scopeSpans"]) == 2, 10, what="two spans at the collector")
    finally:
        exp.close()
        srv.shutdown()
    assert got[0]["path"] == "/v1/traces"
    spans = [sp for g in got for rs in g["body"]["resourceSpans"] for s in rs["scopeSpans"] for sp in s["spans"]]
    by_name = {sp["name"]: sp for sp in spans}
    assert by_name["hop"]["parentSpanId"] == by_name["entry"]["spanId"]
    assert by_name["hop"]["traceId"] == by_name["entry"]["traceId"] == root.trace_id
    assert by_name["hop"]["status"]["code"] == 2 and by_name["entry"]["status"] == {"code": 1}
    assert {"key": "atoll.request_id", "value": {"stringValue": "req-9"}} in by_name["hop"]["attributes"]
    assert exp.sent == 2 and exp.dropped == 0
