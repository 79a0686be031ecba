"""Reconcile: desired assignments against what agents report -> the instructions to send.

Level-triggered, like a Kubernetes controller. Every pass computes each node's desired replica
set and its generation (a content digest, ``atoll.specs.assignment.generation_of``) from every
workflow's assignments (:func:`desired_by_node`), and sends the set down the node's heartbeat
stream only when the agent reports another generation (:func:`to_send`): again after
``RESEND_AFTER`` seconds if it still differs, at once to a new session. Running a pass twice
changes nothing. The decisions are pure; :class:`Deployer` is the thin loop that pushes them.

Nodes that must be told something: those named in assignments, and connected nodes that
report a non-empty applied set (they must be told to drop it). Every other node needs nothing
and costs nothing per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Mapping

from atoll.coordinator.records import Assignment
from atoll.specs.assignment import AssignmentSet, assignment_set

RESEND_AFTER = 5.0


@dataclass(frozen=True)
class Sent:
    """The last set sent to a node: its generation, when (monotonic), to which session."""

    generation: int
    when: float
    session: object


def desired_by_node(assignments: Iterable[Assignment], applied: Mapping[str, int],
                    connected: Collection[str]) -> dict[str, AssignmentSet]:
    """node id -> its desired set, for the nodes that hold or should hold something."""
    items: dict[str, list] = {}
    for a in assignments:
        items.setdefault(a.node_id, []).append(a.item())
    for node_id, gen in applied.items():
        if gen not in (0, -1) and node_id in connected:
            items.setdefault(node_id, [])
    return {node_id: assignment_set(its) for node_id, its in items.items()}


def to_send(desired: Mapping[str, AssignmentSet], applied: Mapping[str, int], sessions: Mapping[str, object],
            sent: Mapping[str, Sent], now: float,
            resend_after: float = RESEND_AFTER) -> list[tuple[str, AssignmentSet]]:
    """The (node id, set) pairs to send now: to connected nodes whose applied generation differs,
    unless the same set went to the same session less than ``resend_after`` seconds ago."""
    out = []
    for node_id, want in desired.items():
        sess = sessions.get(node_id)
        if sess is None:
            continue
        have = applied.get(node_id, -1)
        if have == want.generation or (not want.items and have in (-1, 0)):
            continue
        last = sent.get(node_id)
        if last is not None and last.generation == want.generation and now - last.when < resend_after \
                and last.session is sess:
            continue
        out.append((node_id, want))
    return out


class Deployer:
    """Sends what :func:`to_send` decides down each node's session (``registry.sessions``)."""

    def __init__(self, registry):
        self.registry = registry
        self.sent: dict[str, Sent] = {}

    def reconcile(self, assignments: Iterable[Assignment], now: float) -> int:
        """One pass; returns the number of sets sent."""
        reg = self.registry
        desired = desired_by_node(assignments, reg.applied_generation, reg.sessions)
        sends = to_send(desired, reg.applied_generation, reg.sessions, self.sent, now)
        for node_id, want in sends:
            sess = reg.sessions[node_id]
            sess.push({"assignments": want})
            self.sent[node_id] = Sent(want.generation, now, sess)
        return len(sends)
