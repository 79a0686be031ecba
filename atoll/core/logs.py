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
        sec = int(record.created)
        if sec != self._second[0]:
            self._second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        ts = self._second[1] + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 "msg=" + _q(record.getMessage())]
        for k, v in getattr(record, "fields", {}).items():
            parts.append(f"{k}={_q(str(v))}")
        if record.exc_info:
            parts.append("exc=" + _q(self.formatException(record.exc_info).splitlines()[-1]))
        return " ".join(parts)


# a value left bare: letters and digits (``\w`` is exactly ``str.isalnum()`` or "_") and -_.:/@[]
_BARE = re.compile(r"[\w\-.:/@\[\]]+")


def _q(s: str) -> str:
    if _BARE.fullmatch(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("ATOLL_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    root.handlers[:] = []
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(LogfmtFormatter())
    root.addHandler(h)
    root.setLevel(level)


def kv(**fields) -> dict:
    """``log.info("msg", extra=kv(node=...))`` adds key=value fields to the line."""
    return {"fields": fields}
