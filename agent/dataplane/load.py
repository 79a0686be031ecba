"""What an entry tells the coordinator about the requests it took, for the autoscaler.

:class:`LoadBook` counts, per workflow, the requests that entered and ended (and how many of
those failed), the completion tokens of the answered ones per task, and the requests in flight
now. Each heartbeat takes what changed since the previous one (:meth:`LoadBook.take`). When a
heartbeat session starts (the coordinator restarted, or the stream was cut), the counts of the
gap are dropped and the requests still in flight are reported as entering again
(:meth:`LoadBook.rebase`), so the coordinator's view starts from what is true now rather than
from a burst of stale arrivals.
"""

from __future__ import annotations

from typing import Mapping

from atoll.wire.dataplane import EntryLoad


class LoadBook:
    def __init__(self):
        self._rows: dict[str, EntryLoad] = {}
        self.in_flight: dict[str, int] = {}

    def _row(self, workflow: str) -> EntryLoad:
        row = self._rows.get(workflow)
        if row is None:
            row = self._rows[workflow] = EntryLoad(workflow)
        return row

    def started(self, workflow: str) -> None:
        self._row(workflow).started += 1
        self.in_flight[workflow] = self.in_flight.get(workflow, 0) + 1

    def finished(self, workflow: str, ok: bool, completion_tokens: Mapping[str, int] | None = None) -> None:
        row = self._row(workflow)
        row.finished += 1
        if not ok:
            row.failed += 1
        for task, n in (completion_tokens or {}).items():
            row.completion_tokens[task] = row.completion_tokens.get(task, 0) + int(n)
        left = self.in_flight.get(workflow, 1) - 1
        if left > 0:
            self.in_flight[workflow] = left
        else:
            self.in_flight.pop(workflow, None)

    def take(self) -> list[EntryLoad]:
        """The rows that changed since the last take, with the in-flight counts now."""
        rows, self._rows = self._rows, {}
        for name, row in rows.items():
            row.in_flight = self.in_flight.get(name, 0)
        return list(rows.values())

    def rebase(self) -> None:
        """A new heartbeat session: forget the gap, report what is in flight as just entered."""
        self._rows = {name: EntryLoad(name, started=n, in_flight=n) for name, n in self.in_flight.items()}
