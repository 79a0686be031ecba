"""Entries' load reports, fed to the autoscaler as if the requests had come through here.

Each agent's entry reports per workflow, in its heartbeats, the requests that entered and ended
since its last report (answered or failed), the completion tokens of the answered ones per
task, and its in-flight count. :class:`EntryLoads` replays them through the autoscaler's own
functions (``WorkflowManager.request_started`` / ``request_finished``), so the autoscaler sees
every request wherever it entered: arrivals, requests in flight, and work per request. A report
of a workflow at zero wakes it (``WorkflowManager.wake``). Workflows without an
``autoscaling:`` block are not counted (nothing reads their load, and nothing would trim it).
When a node's session ends, the requests it still had in flight are counted as ended, so a
vanished entry leaves no phantom load behind.
"""

from __future__ import annotations

from typing import Sequence

from atoll.core.errors import AtollError
from atoll.wire.dataplane import EntryLoad


def spread(total: int, n: int) -> list[int]:
    """``total`` split over ``n`` parts as evenly as integers allow (the sum is exact)."""
    base, extra = divmod(int(total), n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class EntryLoads:
    def __init__(self, workflows):
        self.workflows = workflows
        self.outstanding: dict[tuple[str, str], int] = {}      # (node id, workflow) -> started - ended

    def _counted(self, name: str) -> bool:
        try:
            return self.workflows.spec(name).autoscaling is not None
        except AtollError:            # deleted since, or not ours
            return False

    def report(self, node_id: str, loads: Sequence[EntryLoad]) -> None:
        wm = self.workflows
        for x in loads:
            rec = wm.records.get(x.workflow)
            if rec is None:
                continue
            if rec.state == "IDLE" and (x.started or x.in_flight):
                wm.wake(x.workflow)
            if not self._counted(x.workflow):
                continue
            for _ in range(x.started):
                wm.request_started(x.workflow)
            ok = max(0, x.finished - x.failed)
            per_task = {t: spread(v, ok) for t, v in x.completion_tokens.items()} if ok else {}
            for i in range(ok):
                wm.request_finished(x.workflow, {t: parts[i] for t, parts in per_task.items()})
            for _ in range(min(x.failed, x.finished)):
                wm.request_finished(x.workflow)
            key = (node_id, x.workflow)
            self.outstanding[key] = max(0, self.outstanding.get(key, 0) + x.started - x.finished)

    def node_gone(self, node_id: str) -> None:
        for key in [k for k in self.outstanding if k[0] == node_id]:
            for _ in range(self.outstanding.pop(key)):
                if key[1] in self.workflows.records:
                    self.workflows.request_finished(key[1])
