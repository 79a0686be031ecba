"""Request ids and W3C trace context across every hop, and their export to OpenTelemetry.

Each request has an id (the client's ``request_id``, or one made at the entry) and a W3C trace
(``traceparent: 00-<trace id>-<parent span id>-<flags>``, taken from the client's metadata or
started at the entry). Every hop (the entry, each agent a request is handed to) runs as its own
span: it logs one line per request with ``request_id``, ``trace_id``, ``span_id`` and
``parent_span``, and sends ``traceparent`` (with its own span as the parent) and
``x-request-id`` on every call it makes, so one request can be followed across agents.

With an OTLP endpoint configured (``--otlp-endpoint http://collector:4318``) the spans are also
exported to OpenTelemetry: batched by :class:`OtlpExporter` and POSTed as OTLP/HTTP JSON to
``<endpoint>/v1/traces`` from a background thread (dropped, and counted, when the collector is
unreachable or the queue is full), never on the request's path.
"""

from __future__ import annotations

import json
import logging
import queue
import os
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from atoll.core.apikeys import header

log = logging.getLogger("atoll.agent")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass
class Span:
    """One hop of one request: what it logs and exports."""

    request_id: str
    trace_id: str
    span_id: str
    parent_span: str
    name: str
    start_unix: float = field(default_factory=time.time)
    attrs: dict = field(default_factory=dict)

    def traceparent(self) -> str:
        """The header for calls this hop makes (this span is their parent)."""
        return f"00-{self.trace_id}-{self.span_id}-01"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", self.traceparent()), ("x-request-id", self.request_id))

    def fields(self) -> dict:
        return {"request_id": self.request_id, "trace_id": self.trace_id, "span_id": self.span_id,
                "parent_span": self.parent_span or "-"}


def start_span(metadata, name: str, request_id: str = "") -> Span:
    """This hop's span: a child of the caller's ``traceparent`` (a new trace when absent or
    malformed); the request id from the request, else from ``x-request-id``, else a new one."""
    parent_header = header(metadata, "traceparent")
    m = _TRACEPARENT.match(parent_header.strip().lower()) if parent_header else None
    fresh = os.urandom(32).hex()          # one read: the span id, and the trace and request ids when new
    trace_id, parent = (m.group(1), m.group(2)) if m and m.group(1) != "0" * 32 else (fresh[:32], "")
    rid = (request_id or header(metadata, "x-request-id") or fresh[48:])[:64]
    return Span(rid, trace_id, fresh[32:48], parent, name)


class OtlpExporter:
    """Exports finished spans to an OTLP/HTTP collector (JSON encoding), in batches."""

    def __init__(self, endpoint: str, service: str, node: str, *, batch: int = 256, interval: float = 1.0,
                 max_queue: int = 10_000):
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.resource = {"attributes": [_attr("service.name", service), _attr("atoll.node", node)]}
        self.batch, self.interval = batch, interval
        self._q: queue.Queue = queue.Queue(max_queue)
        self.dropped = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def export(self, span: Span, end_unix: float, ok: bool, message: str = "") -> None:
        try:
            self._q.put_nowait((span, end_unix, ok, message))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            items = []
            try:
                items.append(self._q.get(timeout=self.interval))
                while len(items) < self.batch:
                    items.append(self._q.get_nowait())
            except queue.Empty:
                pass
            if items:
                self._post(items)

    def _post(self, items) -> None:
        body = {"resourceSpans": [{"resource": self.resource, "scopeSpans": [{
            "scope": {"name": "atoll.dataplane"}, "spans": [_otlp_span(*it) for it in items]}]}]}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(req, timeout=5).read()
            self.sent += len(items)
        except Exception as exc:  # noqa: BLE001 - the collector being away never hurts serving
            self.dropped += len(items)
            log.debug("otlp export failed", extra={"fields": {"error": str(exc)[:200]}})

    def close(self) -> None:
        self._stop.set()


def _attr(key: str, value) -> dict:
    if isinstance(value, bool):
        v = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}
    elif isinstance(value, float):
        v = {"doubleValue": value}
    else:
        v = {"stringValue": str(value)}
    return {"key": key, "value": v}


def _otlp_span(span: Span, end_unix: float, ok: bool, message: str) -> dict:
    out = {"traceId": span.trace_id, "spanId": span.span_id, "name": span.name, "kind": 2,
           "startTimeUnixNano": str(int(span.start_unix * 1e9)), "endTimeUnixNano": str(int(end_unix * 1e9)),
           "attributes": [_attr("atoll.request_id", span.request_id)] + [_attr(k, v) for k, v in span.attrs.items()],
           "status": {"code": 1} if ok else {"code": 2, "message": message[:500]}}
    if span.parent_span:
        out["parentSpanId"] = span.parent_span
    return out
