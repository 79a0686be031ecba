"""PostgreSQL store: the same :class:`~atoll.coordinator.store.Store` methods as
:class:`~atoll.coordinator.store.SqliteStore`, with the same semantics, for highly available
deployments where several coordinators share one database (one leads, see ``leader.py``).

- Every method returns only after its statement or transaction committed (autocommit
  connection; multi-statement writes run in one explicit transaction).
- The schema is created idempotently; concurrent start-ups serialise on a transaction-level
  advisory lock, so two coordinators starting at once do not race ``CREATE TABLE``.
- JSON columns hold the same text as SQLite's, so a row reads back the same in both stores.
- Fencing: once this coordinator leads, :meth:`PostgresStore.fence` gives the store its leader
  epoch; from then on every write runs in a transaction that first reads ``meta.leader_epoch``
  ``FOR SHARE`` and commits only while it is still this epoch. A new leader's election
  increments that row (``leader.py``), which waits for such a transaction and fails every
  later one: a deposed leader's writes are refused (Unavailable) the moment another
  coordinator is elected, and ``on_fenced`` tells the coordinator to step down.
- One connection guarded by a lock (the coordinator calls the store from its event loop
  thread and, rarely, from worker threads). If the connection breaks (database restarted,
  network blip), the call reconnects once and retries: every write here is idempotent (upserts
  and ``SET`` updates), so a retry after an unknown outcome changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable, Iterable, TypeVar

import psycopg

from atoll.coordinator.records import (NODE_COLUMNS, SCHEMA_VERSION, WORKFLOW_COLUMNS, NodeRecord, RecordReads,
                                       WorkflowRecord, create_tables, node_row, retire_displaced_sql, workflow_row)
from atoll.core.errors import Unavailable

T = TypeVar("T")

# pg_advisory_xact_lock key that serialises schema creation (any constant distinct from the
# leadership key in leader.py).
MIGRATE_LOCK_KEY = 0x61746F6C6C00  # "atoll\0"

# The tables of records.TABLES (a table new in a schema, such as retired_nodes in 3, is created
# by its CREATE TABLE IF NOT EXISTS), then the migrations of older schemas' columns.
SCHEMA = create_tables("postgres") + [
    "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS identity TEXT NOT NULL DEFAULT '{}'",   # schema 1 -> 2
]


class Fenced(Unavailable):
    """A write of a coordinator that is no longer the leader: another one was elected since."""

    def __init__(self, mine: int, now: int):
        super().__init__(f"write refused: this coordinator led in epoch {mine}, the leader epoch is now {now}",
                         hint="another coordinator leads; this one steps down")


def connect(url: str, *, connect_timeout: float = 5.0) -> psycopg.Connection:
    """An autocommit connection with TCP keepalives, so a vanished peer is noticed in seconds."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout)),
                               keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
    except psycopg.Error as exc:
        raise Unavailable(f"cannot connect to PostgreSQL: {str(exc).strip()[:300]}",
                          hint="check --database-url / ATOLL_DATABASE_URL and that the server is up") from None


class PostgresStore(RecordReads):
    """PostgreSQL store (psycopg 3). Thread-safe: one connection guarded by a lock."""

    P = "%s"

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.Lock()
        self._db = connect(url)
        self._epoch: int | None = None
        self._on_fenced: Callable[[str], None] | None = None
        self._migrate()

    def fence(self, epoch: int, on_fenced: Callable[[str], None]) -> None:
        """From now on every write commits only while ``meta.leader_epoch`` is ``epoch``."""
        self._epoch, self._on_fenced = int(epoch), on_fenced

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._db)
            except psycopg.OperationalError:
                if not self._db.broken and not self._db.closed:
                    raise
            # The connection died under us: reconnect once and retry (writes are idempotent).
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - it is already gone
                pass
            self._db = connect(self.url)
            try:
                return fn(self._db)
            except psycopg.OperationalError as exc:
                raise Unavailable(f"PostgreSQL: {str(exc).strip()[:300]}",
                                  hint="the database is unreachable; retry shortly") from None

    def _write(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn`` in a transaction fenced by the leader epoch (when :meth:`fence` was called)."""
        def go(db):
            with db.transaction():
                if self._epoch is not None:
                    r = db.execute("SELECT value FROM meta WHERE key = 'leader_epoch' FOR SHARE").fetchone()
                    now = int(r[0]) if r else 0
                    if now != self._epoch:
                        raise Fenced(self._epoch, now)
                return fn(db)
        try:
            return self._run(go)
        except Fenced as exc:
            if self._on_fenced is not None:
                self._on_fenced(exc.message)
            raise

    def _migrate(self) -> None:
        def go(db):
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK_KEY,))
                for stmt in SCHEMA:
                    db.execute(stmt)
                db.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        self._run(go)

    # -- nodes ------------------------------------------------------------------------------
    def upsert_node(self, rec: NodeRecord) -> None:
        def go(db):
            # A node registering under a new id takes the name over from the old row, which
            # moves to retired_nodes: its bound key, removal or join token stay on record.
            db.execute(retire_displaced_sql("%s"), (rec.name, rec.id))
            db.execute("DELETE FROM nodes WHERE name = %s AND id <> %s", (rec.name, rec.id))
            db.execute("DELETE FROM retired_nodes WHERE id = %s", (rec.id,))   # a retired node is back
            db.execute(
                f"INSERT INTO nodes({NODE_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (id) DO UPDATE SET name=excluded.name, spec=excluded.spec, "
                "capacity=excluded.capacity, status=excluded.status, state=excluded.state, "
                "registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat, "
                "heartbeats=excluded.heartbeats, drain_requested=excluded.drain_requested, "
                "identity=excluded.identity",
                node_row(rec))
        self._write(go)

    def _fetch(self, sql: str, args: tuple = (), *, one: bool = False):
        def go(db):
            cur = db.execute(sql, args)
            return cur.fetchone() if one else cur.fetchall()
        return self._run(go)

    def set_node_state(self, node_id: str, state: str, drain_requested: bool | None = None) -> None:
        if drain_requested is None:
            self._write(lambda db: db.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, node_id)))
        else:
            self._write(lambda db: db.execute("UPDATE nodes SET state = %s, drain_requested = %s WHERE id = %s",
                                            (state, bool(drain_requested), node_id)))

    def set_node_capacity(self, node_id: str, capacity: dict) -> None:
        self._write(lambda db: db.execute("UPDATE nodes SET capacity = %s WHERE id = %s",
                                        (json.dumps(capacity), node_id)))

    def touch_nodes(self, updates: Iterable[tuple[str, float, int, dict | None]]) -> None:
        """Batch-write (id, last_heartbeat, heartbeats, status-or-None) in one transaction."""
        updates = list(updates)
        if not updates:
            return
        plain = [(ts, count, nid) for nid, ts, count, status in updates if status is None]
        full = [(ts, count, json.dumps(status), nid) for nid, ts, count, status in updates if status is not None]

        def go(db):
            with db.cursor() as cur:
                if plain:
                    cur.executemany("UPDATE nodes SET last_heartbeat = %s, heartbeats = %s WHERE id = %s", plain)
                if full:
                    cur.executemany("UPDATE nodes SET last_heartbeat = %s, heartbeats = %s, status = %s "
                                    "WHERE id = %s", full)
        self._write(go)

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda db: db.execute("INSERT INTO meta(key, value) VALUES (%s, %s) "
                                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)))

    def init_meta(self, key: str, value: str) -> str:
        """Set ``key`` unless it is set; return the value it holds now (the first writer's, so
        coordinators starting together agree). Not fenced: it runs before any election."""
        def go(db):
            db.execute("INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))
            return db.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()[0]
        return self._run(go)

    # -- workflows and profiles -------------------------------------------------------------
    def put_workflow(self, rec: WorkflowRecord) -> None:
        self._write(lambda db: db.execute(
            f"INSERT INTO workflows({WORKFLOW_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (name) DO UPDATE SET spec_yaml=excluded.spec_yaml, state=excluded.state, "
            "message=excluded.message, plan=excluded.plan, assignments=excluded.assignments, "
            "generation=excluded.generation, updated=excluded.updated, tenant=excluded.tenant",
            workflow_row(rec)))

    def delete_workflow(self, name: str) -> bool:
        return self._write(lambda db: db.execute("DELETE FROM workflows WHERE name = %s", (name,)).rowcount) > 0

    def put_profile(self, variant_key: str, hardware: str, rps: float, tps: float, source: str) -> None:
        self._write(lambda db: db.execute(
            "INSERT INTO profiles(variant_key, hardware, rps, tps, source, updated) VALUES (%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (variant_key, hardware) DO UPDATE SET rps=excluded.rps, tps=excluded.tps, "
            "source=excluded.source, updated=excluded.updated",
            (variant_key, hardware, rps, tps, source, time.time())))

    def list_profiles(self) -> list[tuple[str, str, float, float, str, float]]:
        rows = self._run(lambda db: db.execute(
            "SELECT variant_key, hardware, rps, tps, source, updated FROM profiles ORDER BY 1, 2").fetchall())
        return [tuple(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
