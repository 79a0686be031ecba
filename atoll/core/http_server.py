"""An ASGI application served by uvicorn inside the running event loop, hardened for clients
that never finish: :class:`HttpServer`.

Every connection is an asyncio protocol on the loop that already serves gRPC (no thread per
connection, no second loop). What a slow or idle client can hold is bounded:

- **connections**: at most ``max_connections`` open at once; one more closes the oldest
  connection that is not being served (no request head yet, or idle between requests), and
  is itself closed only when every open connection has a request in progress. A stranger
  holding the cap's worth of half-sent heads thus gives way to each client that arrives
  (closing new arrivals instead failed 14 of another tenant's 19 requests);
- **request heads**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of connecting (or of its previous response plus the keep-alive
  time), else it is closed: a "slowloris" client trickling header bytes holds a socket for
  seconds, not forever;
- **idle keep-alive**: ``keep_alive`` seconds without a byte after a response, then closed;
- **heads** larger than ``max_head_bytes`` are answered 400 by the HTTP parser;
- **bodies**: the application bounds their size and the time to read them (see
  :mod:`atoll.core.openai_http`).

The listen backlog is ``backlog`` (clients arriving together queue in the kernel, not in
SYN retries). Every accepted socket has ``TCP_NODELAY`` set, so a response written in two
pieces (head, then body) is never held back by Nagle's algorithm and the client's delayed ACK. Signals stay with the host process: uvicorn's own signal
handling is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("atoll.http")


@dataclass(frozen=True)
class HttpLimits:
    backlog: int = 2048
    max_connections: int = 4096
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    max_head_bytes: int = 64 * 1024
    shutdown_grace: float = 5.0


class _Refusals:
    """Connections closed at the cap, logged at most once a second with their count."""

    def __init__(self):
        self.count, self.said = 0, 0.0

    def note(self, loop: asyncio.AbstractEventLoop, what: str, open_now: int) -> None:
        self.count += 1
        now = loop.time()
        if now - self.said >= 1.0:
            log.warning("http: %d connections open, the cap; closed %d %s since the last line", open_now,
                        self.count, what)
            self.count, self.said = 0, now


def _guarded(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the connection cap and the request-head deadline."""
    waiting: OrderedDict = OrderedDict()      # connections not being served, oldest first
    refusals = _Refusals()

    class Guarded(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _armed_cycle = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)    # never wait for Nagle
            if len(self.connections) > limits.max_connections and not self._evict_one():
                refusals.note(self.loop, "new ones (every open one has a request in progress)",
                              len(self.connections) - 1)
                transport.close()
                return
            self._arm(limits.header_timeout)

        def _serving(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _evict_one(self) -> bool:
            """Close the oldest connection that is not being served; False when there is none."""
            while waiting:
                other, _ = waiting.popitem(last=False)
                if other is self or other.transport.is_closing():
                    continue
                if other._serving():             # a request arrived since: it goes back in the queue
                    continue                     # when its response completes
                refusals.note(self.loop, "waiting ones to make room", len(self.connections) - 1)
                other.transport.close()
                return True
            return False

        def _arm(self, seconds: float) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._armed_cycle = self.cycle
            self._head_timer = self.loop.call_later(seconds, self._head_deadline)
            waiting[self] = None                 # waiting for a request head, newest last
            waiting.move_to_end(self)

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.cycle is not self._armed_cycle:       # a request head arrived meanwhile
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return                                     # a request is being served
            if not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(limits.keep_alive + limits.header_timeout)

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            waiting.pop(self, None)
            super().connection_lost(exc)

    return Guarded


class HttpServer:
    """``app`` on ``host:port`` in the running loop. The socket is bound by the constructor (a
    taken port raises ``OSError`` there); :meth:`start` begins serving, :meth:`stop` closes the
    listener, lets requests in flight finish for ``shutdown_grace`` seconds, then cancels them."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, limits: HttpLimits = HttpLimits()):
        self.limits = limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets that say they are TCP
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(limits.backlog)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.config = uvicorn.Config(app, http=_guarded(limits), lifespan="off", log_config=None, access_log=False,
                                     server_header=False, backlog=limits.backlog,
                                     timeout_keep_alive=max(1, round(limits.keep_alive)),
                                     h11_max_incomplete_event_size=limits.max_head_bytes,
                                     timeout_graceful_shutdown=max(1, round(limits.shutdown_grace)))
        self.server = uvicorn.Server(self.config)
        self._ticks: asyncio.Task | None = None

    async def start(self) -> None:
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.sock])
        self._ticks = asyncio.get_running_loop().create_task(self.server.main_loop(), name="http-ticks")

    @property
    def connections(self) -> int:
        return len(self.server.server_state.connections)

    async def stop(self) -> None:
        if self._ticks is None:
            self.sock.close()
            return
        self.server.should_exit = True
        await self._ticks
        self._ticks = None
        await self.server.shutdown(sockets=[self.sock])
