"""The Prometheus ``/metrics`` endpoint of the coordinator and the agents, with an optional bearer
token.

Off by default: ``/metrics`` answers anyone who reaches it, and the processes bind loopback
unless told otherwise (and warn when they are not, ``atoll.core.tls.plain_http_warning``). With a
token (``--metrics-token-file`` / ``ATOLL_METRICS_TOKEN_FILE``: a file holding it, so it never
shows in a process list) every request must carry ``Authorization: Bearer <token>``; a missing
or wrong one is 401, compared in constant time. Prometheus sends it with
``authorization: {credentials_file: ...}`` in its scrape config (``deploy/prometheus/``).

The server is prometheus_client's WSGI application on a threading ``wsgiref`` server in a daemon
thread, as ``prometheus_client.start_http_server`` does, with the token check in front, and
bounded: at most ``MAX_CONNECTIONS`` connections at once (a new one past it closes the oldest,
so a scrape, which takes milliseconds, always gets through), each closed after ``IDLE_S``
without a byte. The stock server started a thread per connection and waited for its request
for ever: a stranger's 1,200 idle connections held 1,016 threads and every file descriptor of
a coordinator limited to 1,024, and its gRPC port stopped accepting.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
from collections import OrderedDict
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from atoll.core.errors import InvalidArgument

MAX_TOKEN_BYTES = 4096
MAX_CONNECTIONS = 16
IDLE_S = 10.0


def read_token_file(path: str | None) -> str | None:
    """The token in ``path`` (surrounding whitespace stripped), None when no path is given; an
    unreadable, empty or oversized file is an InvalidArgument naming it."""
    if not path:
        return None
    try:
        if os.path.getsize(path) > MAX_TOKEN_BYTES:
            raise InvalidArgument(f"metrics token file {path} is larger than {MAX_TOKEN_BYTES} bytes",
                                  hint="the file holds one token, e.g. `openssl rand -hex 32 > FILE`")
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the metrics token file {path}: {exc}",
                              hint="check --metrics-token-file / ATOLL_METRICS_TOKEN_FILE") from None
    if not token or any(c.isspace() for c in token):
        raise InvalidArgument(f"metrics token file {path} holds no token (empty, or whitespace inside)",
                              hint="the file holds one token, e.g. `openssl rand -hex 32 > FILE`")
    return token


def authorized(header: str | None, token: str | None) -> bool:
    """May a request with this ``Authorization`` header read the metrics? (Always, without a token.)"""
    if token is None:
        return True
    scheme, _, presented = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def guarded_app(registry: CollectorRegistry, token: str | None):
    """prometheus_client's WSGI app behind the bearer-token check."""
    app = make_wsgi_app(registry)

    def guarded(environ, start_response):
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", 'Bearer realm="atoll metrics"')])
            return [b"401: /metrics needs Authorization: Bearer <the metrics token>\n"]
        return app(environ, start_response)

    return guarded


class _Quiet(WSGIRequestHandler):
    timeout = IDLE_S       # the socket's: a connection that sends nothing this long is closed

    def log_message(self, format, *args):      # noqa: A002 - the base class's signature
        """Scrapes every 15 s would fill the log; say nothing."""


def serve_metrics(host: str, port: int, registry: CollectorRegistry, token: str | None = None) -> WSGIServer:
    """Serve ``/metrics`` on ``host:port`` (port 0: any; read ``server_address``) in a daemon
    thread; stop it with ``shutdown()``. OSError when the address cannot be bound."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family
        request_queue_size = 128

        def __init__(self, *args, **kwargs):
            self._open: OrderedDict[socket.socket, None] = OrderedDict()
            self._lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def process_request(self, request, client_address):
            with self._lock:
                while len(self._open) >= MAX_CONNECTIONS:      # the oldest gives way to the newest
                    old, _ = self._open.popitem(last=False)
                    try:
                        old.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self._open[request] = None
            super().process_request(request, client_address)

        def shutdown_request(self, request):
            with self._lock:
                self._open.pop(request, None)
            super().shutdown_request(request)

    httpd = make_server(host, port, guarded_app(registry, token), _Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
