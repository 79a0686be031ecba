"""Picking a free loopback port for a child process to listen on (the demo fleet, tests, benches).

Binding port 0 and closing the socket hands back a port from the kernel's ephemeral range, and the
kernel gives the same range to every later ``bind(port 0)`` and every outgoing connection. Between
closing the probe and the child binding the port, another process (an agent's Worker on port 0, a
client's connection) can take it. So ports come from below the ephemeral range, are checked free by
a bind, and are never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
_given: set[int] = set()
_lock = threading.Lock()
_rng = random.Random()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port-0 binds and outgoing connections (Linux's default elsewhere)."""
    try:
        lo, hi = (int(x) for x in _RANGE_FILE.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on now, outside the ephemeral range, and not
    returned before by this process."""
    lo, hi = ephemeral_range()
    # the larger of the two ranges the ephemeral one leaves free (below it on a default kernel)
    below, above = (_LOWEST, lo - 1), (hi + 1, 65535)
    first, last = max((below, above), key=lambda r: r[1] - r[0])
    if last < first:
        raise RuntimeError(f"no ports outside the ephemeral range {lo}-{hi} to pick from")
    with _lock:
        for _ in range(200):
            port = _rng.randint(first, last)
            if port not in _given and _bindable(host, port):
                _given.add(port)
                return port
    raise RuntimeError(f"no free port on {host} in {first}-{last} after 200 tries")
