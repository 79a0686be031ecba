"""Lease-based liveness: a pure state machine over heartbeat times, with an injectable clock.

States::

    READY --(no heartbeat for suspect_after)--> SUSPECT --(none for lost_after)--> LOST
      ^                                            |                              |
      +-------------- heartbeat -------------------+------------------------------+
    DRAINING: the agent is leaving or an operator drained it. Heartbeats keep it DRAINING;
              when they stop for lost_after it becomes LOST (its capacity is gone either way).

With heartbeat interval I the defaults are ``suspect_after = 2.2 I`` and ``lost_after = 2.9 I``:
a hiccup shorter than one interval leaves a gap under 2 I between heartbeats and changes no
state; a killed agent stops being READY within 2.2 I plus one sweep, and is LOST within 3 I of
its kill when the sweep runs every ``I / 10``. (Kubernetes waits 40 s, Nomad at least 20 s.)

Times are monotonic seconds supplied by the caller (``now``), so tests drive the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

READY, SUSPECT, LOST, DRAINING = "READY", "SUSPECT", "LOST", "DRAINING"
STATES = (READY, SUSPECT, LOST, DRAINING)


@dataclass(frozen=True)
class Transition:
    node_id: str
    old: str
    new: str


@dataclass
class _Lease:
    last_seen: float
    state: str
    draining: bool


class Liveness:
    def __init__(self, interval: float, *, suspect_factor: float = 2.2, lost_factor: float = 2.9):
        if interval <= 0:
            raise ValueError("heartbeat interval must be > 0")
        if not (1.0 < suspect_factor < lost_factor):
            raise ValueError("need 1 < suspect_factor < lost_factor")
        self.interval = interval
        self.suspect_after = suspect_factor * interval
        self.lost_after = lost_factor * interval
        self._leases: dict[str, _Lease] = {}

    # -- inputs -------------------------------------------------------------------------------
    def track(self, node_id: str, state: str, last_seen: float, draining: bool = False) -> None:
        """Start tracking a node (on registration, or when restored from the store)."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        self._leases[node_id] = _Lease(last_seen, DRAINING if draining and state != LOST else state, draining)

    def forget(self, node_id: str) -> None:
        self._leases.pop(node_id, None)

    def heartbeat(self, node_id: str, now: float) -> Transition | None:
        """A heartbeat arrived. Returns the transition it caused, if any."""
        lease = self._leases.get(node_id)
        if lease is None:
            return None
        lease.last_seen = now
        want = DRAINING if lease.draining else READY
        if lease.state != want:
            old, lease.state = lease.state, want
            return Transition(node_id, old, want)
        return None

    def set_draining(self, node_id: str, draining: bool, now: float | None = None) -> Transition | None:
        lease = self._leases.get(node_id)
        if lease is None:
            return None
        lease.draining = draining
        if now is not None:
            lease.last_seen = max(lease.last_seen, now)
        if lease.state == LOST:
            return None
        want = DRAINING if draining else READY
        if lease.state != want and (draining or lease.state == DRAINING):
            old, lease.state = lease.state, want
            return Transition(node_id, old, want)
        return None

    # -- evaluation ---------------------------------------------------------------------------
    def sweep(self, now: float) -> list[Transition]:
        """Apply lease expiry at time ``now``; return every state change."""
        out = []
        for node_id, lease in self._leases.items():
            age = now - lease.last_seen
            new = lease.state
            if lease.state in (READY, SUSPECT, DRAINING) and age > self.lost_after:
                new = LOST
            elif lease.state == READY and age > self.suspect_after:
                new = SUSPECT
            if new != lease.state:
                out.append(Transition(node_id, lease.state, new))
                lease.state = new
        return out

    def state(self, node_id: str) -> str | None:
        lease = self._leases.get(node_id)
        return lease.state if lease else None

    def last_seen(self, node_id: str) -> float | None:
        lease = self._leases.get(node_id)
        return lease.last_seen if lease else None

    def __len__(self) -> int:
        return len(self._leases)
