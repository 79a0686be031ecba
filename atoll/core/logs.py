"""Structured logs: one logfmt line per event (``ts=… level=… logger=… msg="…" key=value``)."""

from __future__ import annotations

import logging
import os
import re
import sys
import time


class LogfmtFormatter(logging.Formatter):
    def __init__(self):
        super().__init__()
        self._second: tuple[int, str] = (-1, "")       # the last whole second formatted (a request path logs often)

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelname, record.name, record.getMessage(),
                         getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            # the exception itself, not the traceback's last line (a gRPC error's is a lone ">")
            exc = record.exc_info[1]
            line += " exc=" + _q(f"{type(exc).__name__}: {exc}"[:1000])
        return line

    def line(self, created: float, levelname: str, name: str, msg: str, fields: dict) -> str:
        sec = int(created)
        if sec != self._second[0]:
            self._second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        head = (f"ts={self._second[1]}.{int((created - sec) * 1000):03d}Z level={levelname.lower()} "
                f"logger={name} msg={_q(msg)}")
        if not fields:
            return head
        return head + " " + " ".join([f"{k}={_q(v if type(v) is str else str(v))}" for k, v in fields.items()])


# a value left bare: letters and digits (``\w`` is exactly ``str.isalnum()`` or "_") and -_.:/@[]
_BARE = re.compile(r"[\w\-.:/@\[\]]+")


# Characters a value may not carry into a log line raw: the C0 controls (CR and ESC among them),
# DEL, the C1 controls and the Unicode line and paragraph separators, written as escapes. Host
# names, node ids and request ids reach the log from strangers; a raw CR, ESC sequence or U+2028
# in one forged records for a terminal or a reader that splits lines on them. The CLI writes
# what it prints through the same table (``atoll/cli/table.py``).
CONTROL_ESCAPES = {c: chr(c).encode("unicode_escape").decode("ascii")
                   for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]}
_QUOTED = {**CONTROL_ESCAPES, ord("\\"): "\\\\", ord('"'): '\\"'}


def _q(s: str) -> str:
    if s.isalnum() or _BARE.fullmatch(s):                # isalnum: most values, at a fifth of the match's cost
        return s
    return '"' + s.translate(_QUOTED) + '"'


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("ATOLL_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    root.handlers[:] = []
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(LogfmtFormatter())
    root.addHandler(h)
    root.setLevel(level)


def event(log: logging.Logger, level: int, msg: str, **fields) -> None:
    """``log.log(level, msg, extra=kv(**fields))`` for lines a request path writes on every
    request: where the line would reach only the handler :func:`setup` installed, it is formatted
    and written straight to that handler's stream, the same text without a ``LogRecord``, its
    caller lookup and the handler chain (about half the cost). Any other set-up (pytest's
    log capture, a handler of one's own, filters) takes the ordinary path."""
    if not log.isEnabledFor(level):
        return
    h = _only_handler(log, level)
    if h is None:
        log.log(level, msg, extra={"fields": fields})
        return
    text = h.formatter.line(time.time(), logging.getLevelName(level), log.name, msg, fields)
    with h.lock:
        try:
            h.stream.write(text + "\n")
            h.flush()
        except (OSError, ValueError):            # a closed or broken stream: as logging does, the request goes on
            pass


def _only_handler(log: logging.Logger, level: int) -> logging.StreamHandler | None:
    """The handler :func:`setup` installed, when it is the only one ``log``'s lines reach and
    nothing filters them; else None."""
    c = log
    while c is not None:
        if c.filters:
            return None
        if c.parent is None:                            # the root
            hs = c.handlers
            if len(hs) == 1 and type(hs[0]) is logging.StreamHandler and type(hs[0].formatter) is LogfmtFormatter \
                    and not hs[0].filters and hs[0].level <= level:
                return hs[0]
            return None
        if c.handlers or not c.propagate:
            return None
        c = c.parent
    return None


def kv(**fields) -> dict:
    """``log.info("msg", extra=kv(node=...))`` adds key=value fields to the line."""
    return {"fields": fields}
