"""The coordinator's durable state behind one narrow interface.

:class:`Store` is what the coordinator needs from a database; :class:`SqliteStore` is the
embedded default (one file under ``--state-dir``, WAL mode). A PostgreSQL store for highly
available deployments implements the same methods.

Records become rows only here, through ``atoll.coordinator.records`` (``node_row``,
``workflow_row`` and their inverses), the same row form in both stores.

Durability rule: a method returns only after its transaction committed, so whatever the
coordinator acknowledged to a caller survives ``kill -9``. Liveness (last heartbeat times) is
kept in memory and flushed in batches with :meth:`Store.touch_nodes`; state *changes* are
written when they happen.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

from atoll.coordinator.records import (NODE_COLUMNS, SCHEMA_VERSION, WORKFLOW_COLUMNS, NodeRecord, RecordReads,
                                       WorkflowRecord, create_tables, node_row, retire_displaced_sql, workflow_row)
from atoll.coordinator.store_pg import PostgresStore
from atoll.core.errors import FailedPrecondition

log = logging.getLogger("atoll.coordinator")
MARKER = "store-id"


class Store(Protocol):
    def upsert_node(self, rec: NodeRecord) -> None: ...
    def get_node(self, node_id: str) -> NodeRecord | None: ...
    def list_nodes(self) -> list[NodeRecord]: ...
    def list_retired_nodes(self) -> list[NodeRecord]: ...
    def set_node_state(self, node_id: str, state: str, drain_requested: bool | None = None) -> None: ...
    def set_node_capacity(self, node_id: str, capacity: dict) -> None: ...
    def touch_nodes(self, updates: Iterable[tuple[str, float, int, dict | None]]) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def init_meta(self, key: str, value: str) -> str: ...
    def fence(self, epoch: int, on_fenced: Callable[[str], None]) -> None: ...
    def put_workflow(self, rec: "WorkflowRecord") -> None: ...
    def get_workflow(self, name: str) -> "WorkflowRecord | None": ...
    def list_workflows(self) -> list["WorkflowRecord"]: ...
    def delete_workflow(self, name: str) -> bool: ...
    def put_profile(self, variant_key: str, hardware: str, rps: float, tps: float, source: str) -> None: ...
    def list_profiles(self) -> list[tuple[str, str, float, float, str, float]]: ...
    def close(self) -> None: ...


class SqliteStore(RecordReads):
    """SQLite store. Thread-safe (one connection guarded by a lock); WAL journal."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a process crash (kill -9);
            # only an OS crash or power loss could lose the last ones.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise FailedPrecondition(f"the SQLite database {self.path} is damaged ({exc})",
                                     hint="restore it from a backup; the coordinator will not start on it") from None

    def _migrate(self) -> None:
        with self._lock:
            for stmt in create_tables("sqlite"):
                self._db.execute(stmt)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(nodes)")}
            if "identity" not in cols:         # schema 1 -> 2
                self._db.execute("ALTER TABLE nodes ADD COLUMN identity TEXT NOT NULL DEFAULT '{}'")
            # schema 2 -> 3: retired_nodes, created above (CREATE TABLE IF NOT EXISTS)
            self._db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    # -- nodes ------------------------------------------------------------------------------
    def upsert_node(self, rec: NodeRecord) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # A node registering under a new id takes the name over from the old row, which
                # moves to retired_nodes: its bound key, removal or join token stay on record.
                self._db.execute(retire_displaced_sql("?"), (rec.name, rec.id))
                self._db.execute("DELETE FROM nodes WHERE name = ? AND id != ?", (rec.name, rec.id))
                self._db.execute("DELETE FROM retired_nodes WHERE id = ?", (rec.id,))   # a retired node is back
                self._db.execute(
                    f"INSERT INTO nodes({NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET name=excluded.name, spec=excluded.spec, "
                    "capacity=excluded.capacity, status=excluded.status, state=excluded.state, "
                    "registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat, "
                    "heartbeats=excluded.heartbeats, drain_requested=excluded.drain_requested, "
                    "identity=excluded.identity",
                    node_row(rec))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _fetch(self, sql: str, args: tuple = (), *, one: bool = False):
        with self._lock:
            cur = self._db.execute(sql, args)
            return cur.fetchone() if one else cur.fetchall()

    def set_node_state(self, node_id: str, state: str, drain_requested: bool | None = None) -> None:
        with self._lock:
            if drain_requested is None:
                self._db.execute("UPDATE nodes SET state = ? WHERE id = ?", (state, node_id))
            else:
                self._db.execute("UPDATE nodes SET state = ?, drain_requested = ? WHERE id = ?",
                                 (state, int(drain_requested), node_id))

    def set_node_capacity(self, node_id: str, capacity: dict) -> None:
        with self._lock:
            self._db.execute("UPDATE nodes SET capacity = ? WHERE id = ?", (json.dumps(capacity), node_id))

    def touch_nodes(self, updates: Iterable[tuple[str, float, int, dict | None]]) -> None:
        """Batch-write (id, last_heartbeat, heartbeats, status-or-None) in one transaction."""
        updates = list(updates)
        if not updates:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for node_id, ts, count, status in updates:
                    if status is None:
                        self._db.execute("UPDATE nodes SET last_heartbeat = ?, heartbeats = ? WHERE id = ?",
                                         (ts, count, node_id))
                    else:
                        self._db.execute("UPDATE nodes SET last_heartbeat = ?, heartbeats = ?, status = ? "
                                         "WHERE id = ?", (ts, count, json.dumps(status), node_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def init_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the value it holds now (the first writer's)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def fence(self, epoch: int, on_fenced: Callable[[str], None]) -> None:
        """One coordinator owns a SQLite file: there is no other leader to fence out."""

    # -- workflows and profiles ------------------------------------------------------------------
    def put_workflow(self, rec: WorkflowRecord) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO workflows({WORKFLOW_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET spec_yaml=excluded.spec_yaml, state=excluded.state, "
                "message=excluded.message, plan=excluded.plan, assignments=excluded.assignments, "
                "generation=excluded.generation, updated=excluded.updated, tenant=excluded.tenant",
                workflow_row(rec))

    def delete_workflow(self, name: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM workflows WHERE name = ?", (name,))
        return cur.rowcount > 0

    def put_profile(self, variant_key: str, hardware: str, rps: float, tps: float, source: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO profiles(variant_key, hardware, rps, tps, source, updated) "
                             "VALUES (?,?,?,?,?,?) ON CONFLICT(variant_key, hardware) DO UPDATE SET "
                             "rps=excluded.rps, tps=excluded.tps, source=excluded.source, updated=excluded.updated",
                             (variant_key, hardware, rps, tps, source, time.time()))

    def list_profiles(self) -> list[tuple[str, str, float, float, str, float]]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT variant_key, hardware, rps, tps, source, updated FROM profiles ORDER BY 1, 2")]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(settings) -> Store:
    """The store the settings ask for: PostgreSQL when ``database_url`` is set (highly
    available deployments, see ``store_pg.py``), else SQLite at ``STATE_DIR/atoll.db``."""
    url = getattr(settings, "database_url", None)
    if url:
        return PostgresStore(url)
    return SqliteStore(Path(settings.state_dir) / "atoll.db")


def guard_store(store: Store, state_dir: Path, allow_empty: bool = False) -> str:
    """Refuse to start on an empty or replaced database when this state dir shows it served
    another one before: an empty store has no API keys, so it would be open to everyone.

    The store holds a random ``store_id`` (meta) and the state dir a copy (``store-id``). A
    marker the store does not match, or (state dirs from before the marker) a join-token file
    or pushed blobs beside a store that never ran, mean data went missing. ``allow_empty``
    (``--allow-empty-store``) starts afresh anyway. Returns the store id."""
    marker = Path(state_dir) / MARKER
    sid = store.get_meta("store_id")
    want = marker.read_text().strip() if marker.exists() else ""
    ran_before = bool(want) or (Path(state_dir) / "join-token").exists() or any(
        (Path(state_dir) / "blobs").glob("sha256-*"))
    if sid != want and ran_before and (want or store.get_meta("join_token_sha256") is None):
        what = f"store {want}" if want else "a store (it kept a join token or blobs here)"
        if not allow_empty:
            raise FailedPrecondition(
                f"the database holds {'store ' + sid if sid else 'nothing'}, but this state dir "
                f"({state_dir}) served {what}: it looks emptied, truncated or replaced, and an empty "
                f"store has no API keys (open to everyone)",
                hint="restore the database, or pass --allow-empty-store to start afresh on purpose")
        log.warning("starting on an empty or replaced store, as --allow-empty-store says", extra={"fields": {
            "was": want or "unknown", "now": sid or "new"}})
    sid = store.init_meta("store_id", secrets.token_hex(8))
    marker.write_text(sid + "\n")
    return sid
