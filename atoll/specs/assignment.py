"""What a node is told to hold: one replica per item, and the generation of the whole set.

The coordinator computes each node's desired set (``atoll.coordinator.deploy``) and sends it
down the node's heartbeat stream with its generation; the agent converges to it
(``atoll.agent.replicas``) and reports the generation it applied. The generation is a content
digest of the set, so two equal sets have the same generation and re-sending one changes
nothing. Both sides import these plain types; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class ReplicaItem:
    """One replica a node must hold: a base model and, for an adapter variant, the adapter."""

    replica_id: str
    workflow: str
    task: str
    variant: str
    base_model: str          # local path or content-addressed name (sha256:...)
    adapter: str             # adapter name; empty for the bare base model
    adapter_source: str      # local path or content-addressed name
    kind: str = "llm"        # llm | embedding


@dataclass(frozen=True)
class AssignmentSet:
    """The full desired set of one node (level-triggered: it replaces what came before)."""

    generation: int
    items: tuple[ReplicaItem, ...]


def generation_of(items: Iterable[ReplicaItem]) -> int:
    """The generation of a desired set: a 63-bit content digest, independent of item order."""
    rows = [asdict(i) for i in sorted(items, key=lambda i: i.replica_id)]
    h = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def assignment_set(items: Iterable[ReplicaItem]) -> AssignmentSet:
    """The set of ``items`` (ordered by replica id) with its generation."""
    ordered = tuple(sorted(items, key=lambda i: i.replica_id))
    return AssignmentSet(generation_of(ordered), ordered)
