"""The coordinator's records: what it knows of each node and each workflow, and their row form.

A :class:`NodeRecord` keeps a node's spec, capacity and status as plain dicts (the fields of
the node messages, see ``atoll.wire.nodes``). A :class:`WorkflowRecord` keeps the workflow's
spec, its typed :class:`~atoll.planner.plan.Plan`, the typed :class:`Assignment` values derived
from it, and the :class:`Deployment` facts decided around the plan.

Records become rows only at the store boundary (:func:`workflow_row`, :func:`node_row` and
their inverses), the same for SQLite and PostgreSQL: the ``plan`` column holds
``Plan.to_dict()`` with the deployment facts as extra keys (``constraints``,
``on_demand_floor``, ``failure_domains``, ``autoscale``), the ``assignments`` column a list of
assignment dicts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from atoll.planner.plan import Plan
from atoll.specs.assignment import ReplicaItem

SCHEMA_VERSION = 3      # 2: nodes.identity (bound node key, trust, join scope); 3: retired_nodes


@dataclass
class NodeRecord:
    """One node as the coordinator knows it. ``spec``/``capacity``/``status`` are plain dicts
    (the JSON form of the proto messages), so the store never touches protobuf."""

    id: str
    name: str
    spec: dict
    capacity: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    state: str = "READY"            # READY | SUSPECT | LOST | DRAINING
    registered_at: float = 0.0
    last_heartbeat: float = 0.0     # wall clock, seconds since the epoch
    heartbeats: int = 0
    drain_requested: bool = False   # an operator drained it: stays DRAINING across restarts
    # Identity (the operator's and the coordinator's, never the host's claim; see coordinator/identity.py):
    public_key: str = ""            # the node key bound to this id at its first registration (base64url)
    trusted: bool = False           # trusted_only workflows may run here (a trusted join token, or an admin)
    scope: dict = field(default_factory=dict)   # what its join token allowed: {"tiers", "regions", "token"}
    tokens_before: float = 0.0      # node tokens issued before this (unix seconds) are revoked (an untrust);
    #                                 infinity: the operator removed the node (cut off for good)

    @property
    def tier(self) -> str:
        return self.spec.get("tier", "")

    @property
    def region(self) -> str:
        return self.spec.get("region", "")


@dataclass(frozen=True)
class Assignment:
    """One replica of a workflow on a concrete node, as placement decided it."""

    replica_id: str
    workflow: str
    task: str
    variant: str
    node_id: str
    base_model: str
    adapter: str
    adapter_source: str
    kind: str
    weight: float          # req/s the plan routes to this replica
    group: str             # the plan's host group (base model) the node runs

    def item(self) -> ReplicaItem:
        """What the node is told to hold for this replica."""
        return ReplicaItem(self.replica_id, self.workflow, self.task, self.variant, self.base_model, self.adapter,
                           self.adapter_source, self.kind)


@dataclass(frozen=True)
class Constraints:
    """The placement rules a plan was made under."""

    trusted_only: bool
    on_demand_only: bool
    forbid_tiers: tuple[str, ...]
    forbid_regions: tuple[str, ...]


@dataclass(frozen=True)
class OnDemandFloor:
    share: float                    # of the rate, planned on non-preemptible nodes
    cost_per_hour: float            # of that share


@dataclass(frozen=True)
class FailureDomains:
    label: str                      # node label (or "region") naming a node's domain
    domains: int


@dataclass(frozen=True)
class Autoscale:
    """The autoscaler's last decision for a workflow."""

    scale: float                    # the declared source rates times this were planned
    rate: float                     # req/s planned for
    reason: str
    decided_unix: float
    scale_before_zero: Optional[float] = None   # while scaled to zero: the scale a wake-up restores


@dataclass(frozen=True)
class Deployment:
    """What the coordinator decided around the planner's plan."""

    constraints: Optional[Constraints] = None
    on_demand_floor: Optional[OnDemandFloor] = None
    failure_domains: Optional[FailureDomains] = None
    autoscale: Optional[Autoscale] = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.constraints is not None:
            c = self.constraints
            out["constraints"] = {"trusted_only": c.trusted_only, "on_demand_only": c.on_demand_only,
                                  "forbid_tiers": list(c.forbid_tiers), "forbid_regions": list(c.forbid_regions)}
        for key in ("on_demand_floor", "failure_domains"):
            if getattr(self, key) is not None:
                out[key] = asdict(getattr(self, key))
        if self.autoscale is not None:
            out["autoscale"] = {k: v for k, v in asdict(self.autoscale).items()
                                if k != "scale_before_zero" or v is not None}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Deployment":
        c = d.get("constraints")
        return cls(
            constraints=None if c is None else Constraints(
                trusted_only=bool(c.get("trusted_only", False)), on_demand_only=bool(c.get("on_demand_only", False)),
                forbid_tiers=tuple(c.get("forbid_tiers", ())), forbid_regions=tuple(c.get("forbid_regions", ()))),
            on_demand_floor=OnDemandFloor(**d["on_demand_floor"]) if d.get("on_demand_floor") else None,
            failure_domains=FailureDomains(**d["failure_domains"]) if d.get("failure_domains") else None,
            autoscale=Autoscale(**d["autoscale"]) if d.get("autoscale") else None)


@dataclass
class WorkflowRecord:
    """A submitted workflow: its spec, its current plan and the assignments derived from it."""

    name: str
    spec_yaml: str
    state: str = "PLANNED"
    message: str = ""
    plan: Optional[Plan] = None
    assignments: tuple[Assignment, ...] = ()
    generation: int = 0
    created: float = 0.0
    updated: float = 0.0
    tenant: str = ""
    deployment: Deployment = Deployment()


# ---------------------------------------------------------------------- row form
# The tables, once for both stores: (column, type, constraint) with a portable type ("text",
# "real", "int", "bool") that :func:`create_tables` spells in each SQL dialect. A column's
# default is part of its constraint, written with a Python value so each dialect can render it.
TABLES: dict[str, tuple[tuple[str, ...], ...]] = {
    "meta": (("key", "text", "PRIMARY KEY"), ("value", "text", "NOT NULL")),
    "nodes": (("id", "text", "PRIMARY KEY"), ("name", "text", "NOT NULL UNIQUE"), ("spec", "text", "NOT NULL"),
              ("capacity", "text", "{}"), ("status", "text", "{}"), ("state", "text", "NOT NULL"),
              ("registered_at", "real", "NOT NULL"), ("last_heartbeat", "real", "NOT NULL"),
              ("heartbeats", "int", 0), ("drain_requested", "bool", False), ("identity", "text", "{}")),
    # A node record whose name another node took over (the old one was LOST): kept under its id,
    # off the fleet's listings, so that its bound key and its removal or join token's revocation
    # still hold (the same columns as ``nodes``; a name may repeat here).
    "retired_nodes": (("id", "text", "PRIMARY KEY"), ("name", "text", "NOT NULL"), ("spec", "text", "NOT NULL"),
                      ("capacity", "text", "{}"), ("status", "text", "{}"), ("state", "text", "NOT NULL"),
                      ("registered_at", "real", "NOT NULL"), ("last_heartbeat", "real", "NOT NULL"),
                      ("heartbeats", "int", 0), ("drain_requested", "bool", False), ("identity", "text", "{}")),
    "workflows": (("name", "text", "PRIMARY KEY"), ("spec_yaml", "text", "NOT NULL"), ("state", "text", "NOT NULL"),
                  ("message", "text", ""), ("plan", "text", "{}"), ("assignments", "text", "[]"),
                  ("generation", "int", 0), ("created", "real", "NOT NULL"), ("updated", "real", "NOT NULL"),
                  ("tenant", "text", "")),
    "profiles": (("variant_key", "text", "NOT NULL"), ("hardware", "text", "NOT NULL"), ("rps", "real", "NOT NULL"),
                 ("tps", "real", "NOT NULL"), ("source", "text", "NOT NULL"), ("updated", "real", "NOT NULL"),
                 ("PRIMARY KEY", "(variant_key, hardware)", "")),
}
_SQL_TYPES = {"sqlite": {"text": "TEXT", "real": "REAL", "int": "INTEGER", "bool": "INTEGER"},
              "postgres": {"text": "TEXT", "real": "DOUBLE PRECISION", "int": "BIGINT", "bool": "BOOLEAN"}}


def column_sql(column: tuple, dialect: str) -> str:
    """One column of :data:`TABLES` in ``dialect`` ("sqlite" or "postgres")."""
    name, kind, rule = column
    if name == "PRIMARY KEY":                                   # a table constraint
        return f"PRIMARY KEY {kind}"
    if isinstance(rule, str) and rule.isupper():                # PRIMARY KEY, NOT NULL, NOT NULL UNIQUE
        return f"{name} {_SQL_TYPES[dialect][kind]} {rule}"
    if isinstance(rule, bool):
        default = str(rule).upper() if dialect == "postgres" else str(int(rule))
    elif isinstance(rule, int):
        default = str(rule)
    else:
        default = "'" + rule.replace("'", "''") + "'"
    return f"{name} {_SQL_TYPES[dialect][kind]} NOT NULL DEFAULT {default}"


def create_tables(dialect: str) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` for every table of :data:`TABLES` in ``dialect``."""
    return [f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(column_sql(c, dialect) for c in columns)})"
            for table, columns in TABLES.items()]


def _names(table: str) -> str:
    return ", ".join(c[0] for c in TABLES[table] if c[0] != "PRIMARY KEY")


NODE_COLUMNS = _names("nodes")
assert _names("retired_nodes") == NODE_COLUMNS


def retire_displaced_sql(p: str) -> str:
    """The statement moving the rows a node taking its name over displaces (same name, another
    id) to ``retired_nodes``, in a store's placeholder ``p``; parameters: the name, the new id.
    Idempotent (a retry after an unknown outcome changes nothing)."""
    return (f"INSERT INTO retired_nodes({NODE_COLUMNS}) SELECT {NODE_COLUMNS} FROM nodes "
            f"WHERE name = {p} AND id <> {p} ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
            "spec=excluded.spec, capacity=excluded.capacity, status=excluded.status, state=excluded.state, "
            "registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat, "
            "heartbeats=excluded.heartbeats, drain_requested=excluded.drain_requested, identity=excluded.identity")
WORKFLOW_COLUMNS = _names("workflows")


def node_identity(rec: NodeRecord) -> str:
    """The ``identity`` column: the bound key, trust and join scope, as JSON."""
    return json.dumps({"public_key": rec.public_key, "trusted": bool(rec.trusted), "scope": rec.scope,
                       "tokens_before": rec.tokens_before}, sort_keys=True)


def node_row(rec: NodeRecord) -> tuple:
    return (rec.id, rec.name, json.dumps(rec.spec), json.dumps(rec.capacity), json.dumps(rec.status), rec.state,
            rec.registered_at, rec.last_heartbeat, rec.heartbeats, bool(rec.drain_requested), node_identity(rec))


def node_from_row(r) -> NodeRecord:
    ident = json.loads(r[10] or "{}")
    return NodeRecord(id=r[0], name=r[1], spec=json.loads(r[2]), capacity=json.loads(r[3]),
                      status=json.loads(r[4]), state=r[5], registered_at=r[6],
                      last_heartbeat=r[7], heartbeats=r[8], drain_requested=bool(r[9]),
                      public_key=ident.get("public_key", ""), trusted=bool(ident.get("trusted", False)),
                      scope=dict(ident.get("scope") or {}), tokens_before=float(ident.get("tokens_before", 0.0)))


def workflow_row(rec: WorkflowRecord) -> tuple:
    plan = {**(rec.plan.to_dict() if rec.plan is not None else {}), **rec.deployment.to_dict()}
    return (rec.name, rec.spec_yaml, rec.state, rec.message, json.dumps(plan),
            json.dumps([asdict(a) for a in rec.assignments]), rec.generation, rec.created, rec.updated, rec.tenant)


def workflow_from_row(r) -> WorkflowRecord:
    plan = json.loads(r[4])
    return WorkflowRecord(name=r[0], spec_yaml=r[1], state=r[2], message=r[3],
                          plan=Plan.from_dict(plan) if "planner" in plan else None,
                          assignments=tuple(Assignment(**a) for a in json.loads(r[5])), generation=r[6],
                          created=r[7], updated=r[8], tenant=r[9], deployment=Deployment.from_dict(plan))


class RecordReads:
    """The reads both stores share; a store supplies ``_fetch(sql, args, one=...)`` and its
    parameter placeholder ``P`` (``?`` for SQLite, ``%s`` for PostgreSQL)."""

    P = "?"

    def _fetch(self, sql: str, args: tuple = (), *, one: bool = False):
        raise NotImplementedError

    def get_node(self, node_id: str) -> NodeRecord | None:
        r = self._fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = {self.P}", (node_id,), one=True)
        return node_from_row(r) if r else None

    def list_nodes(self) -> list[NodeRecord]:
        return [node_from_row(r) for r in self._fetch(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY name")]

    def list_retired_nodes(self) -> list[NodeRecord]:
        """Nodes whose name another node took over: not in the fleet, but their identity holds."""
        return [node_from_row(r) for r in self._fetch(f"SELECT {NODE_COLUMNS} FROM retired_nodes ORDER BY id")]

    def get_meta(self, key: str) -> str | None:
        r = self._fetch(f"SELECT value FROM meta WHERE key = {self.P}", (key,), one=True)
        return r[0] if r else None

    def get_workflow(self, name: str) -> WorkflowRecord | None:
        r = self._fetch(f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = {self.P}", (name,), one=True)
        return workflow_from_row(r) if r else None

    def list_workflows(self) -> list[WorkflowRecord]:
        return [workflow_from_row(r) for r in self._fetch(f"SELECT {WORKFLOW_COLUMNS} FROM workflows ORDER BY name")]
