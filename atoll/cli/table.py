"""Plain-text tables for the CLI."""

from __future__ import annotations


def render(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """Columns left-aligned, except those marked 'r' in ``align`` (one char per column)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = align or "l" * len(headers)

    def fmt(row):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])
