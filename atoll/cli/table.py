"""Plain-text tables for the CLI."""

from __future__ import annotations

import io

from atoll.core.logs import CONTROL_ESCAPES

# Every control character of the log's table but newline and tab: written as escapes.
_CONTROLS = {c: e for c, e in CONTROL_ESCAPES.items() if chr(c) not in "\n\t"}


def printable(value) -> str:
    """``value`` as text a terminal shows as it is: control characters (ESC and the rest of C0
    but newline and tab, DEL, C1) are written as escapes. Names, regions, labels and messages come from hosts and
    tenants, and a raw ESC sequence in one could retitle, move or erase the operator's terminal."""
    return str(value).translate(_CONTROLS)


def render(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Columns left-aligned, except those marked 'r' in ``align`` (one char per column)."""
    cells = [[printable(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = align or "l" * len(headers)

    def fmt(row):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


class SafeStream(io.TextIOBase):
    """A text stream that writes control characters as escapes (see :func:`printable`): the CLI
    wraps its stdout and stderr in it, so that what a coordinator, a host or a model sends
    (names, messages, generated text) cannot drive the terminal."""

    def __init__(self, inner):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(text.translate(_CONTROLS))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    @property
    def encoding(self):
        return self.inner.encoding

    def fileno(self) -> int:
        return self.inner.fileno()
