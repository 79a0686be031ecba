"""Who leads: one coordinator of several sharing a PostgreSQL database writes; the others stand by.

Mechanism: a session-level ``pg_try_advisory_lock`` held on a dedicated connection.

Why an advisory lock rather than a lease row (holder, expiry, epoch):

- It dies with the connection. When the leader process is killed, its kernel closes the
  socket, PostgreSQL ends the backend and releases the lock at once, so a standby polling every
  ``poll`` seconds (0.5 s) leads within about one poll — no lease has to run out first. A lease
  row makes every failover wait for the expiry (several seconds), and renewing it is a write
  every period for as long as the fleet runs.
- There is no clock in it: no skew between coordinators or with the database can make two
  holders think they own the same lease.

What a lease row does better — surviving a partition between the leader and the database
without a gap — is covered here as follows: the lock connection uses TCP keepalives and
``tcp_user_timeout``, so the server drops a vanished leader's backend (and frees the lock) in
seconds; and the leader checks its own lock connection every ``check`` seconds. If the check
fails, or the server no longer lists the lock as held by this backend, the leader has (or may
have) lost the lock and ``on_lost`` is called; the coordinator then steps down by exiting, to be
restarted by its supervisor as a standby. Each election also increments ``leader_epoch`` in the
``meta`` table: the fencing number of that reign, written to the log too.

Writes are fenced by the epoch: the store of an elected coordinator commits a write only while
``meta.leader_epoch`` is still its own (``store_pg.PostgresStore.fence``), and the election's
increment of that row waits for such a write and fails every later one. So after a partition
the old leader, which may take up to ``check`` + ``CHECK_TIMEOUT`` seconds (1 s + 3 s) to notice
it lost the lock, cannot write anything once a standby leads: its first write fails and makes
it step down. A process that dies (the common case) releases the lock at once and writes
nothing more. If PostgreSQL itself restarts, every lock connection drops: the leader exits
(code 3), and whichever coordinator reconnects first leads.

The elected leader writes its advertised address to ``meta.leader_address``; standbys read it
on every poll, so they can tell callers where to go ("standby; leader is at ADDR").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import psycopg

from atoll.core.logs import kv
from atoll.core.pools import Pool

log = logging.getLogger("atoll.coordinator")

LEADER_LOCK_KEY = 0x61746F6C6C01      # "atoll\1": the advisory lock that makes a leader
CHECK_TIMEOUT = 3.0


class SoloLeadership:
    """The embedded (SQLite) deployment: one coordinator, always the leader."""

    epoch = 1
    leader_address = ""

    def __init__(self, on_elected: Callable[[], Awaitable[None]]):
        self.on_elected = on_elected
        self.is_leader = False

    async def run(self) -> None:
        self.is_leader = True
        await self.on_elected()

    async def close(self) -> None:
        pass


@dataclass(eq=False)
class AdvisoryLockLeadership:
    """Elect one leader among coordinators sharing ``url`` (see the module docstring).

    ``run()`` loops until cancelled: as a standby it tries the lock every ``poll`` seconds and
    refreshes :attr:`leader_address`; once it holds the lock it records the election
    (``leader_epoch``, ``leader_address``), awaits ``on_elected()``, then checks the lock every
    ``check`` seconds and calls ``on_lost()`` (and returns) when it cannot be sure it still holds it.
    Blocking database calls run in threads of the leadership's own (``_io``), so the event loop
    never stalls on the network and no other work can hold up a lock check.
    """

    url: str
    advertise: str
    on_elected: Callable[[], Awaitable[None]] = field(kw_only=True)
    on_lost: Callable[[str], Awaitable[None] | None] = field(kw_only=True)
    poll: float = field(default=0.5, kw_only=True)
    check: float = field(default=1.0, kw_only=True)
    is_leader: bool = field(default=False, init=False)
    epoch: int = field(default=0, init=False)
    leader_address: str = field(default="", init=False)
    _conn: Any = field(default=None, init=False, repr=False)
    # two: a drop may have to run while a check hangs on a dead connection
    _io: Pool = field(default_factory=lambda: Pool("leader", 2), init=False, repr=False)

    # -- blocking parts (worker thread) ------------------------------------------------------
    def _connect(self):
        return psycopg.connect(self.url, autocommit=True, connect_timeout=3, keepalives=1, keepalives_idle=2,
                               keepalives_interval=1, keepalives_count=3, tcp_user_timeout=3000,
                               application_name="atoll-leader-lock")

    def _try_acquire(self) -> bool:
        """One attempt. True: we hold the lock now (and recorded the election)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        c = self._conn
        got = c.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()[0]
        if not got:
            r = c.execute("SELECT value FROM meta WHERE key = 'leader_address'").fetchone()
            self.leader_address = r[0] if r else ""
            return False
        with c.transaction():
            self.epoch = int(c.execute(
                "INSERT INTO meta(key, value) VALUES ('leader_epoch', '1') ON CONFLICT (key) DO UPDATE "
                "SET value = (meta.value::bigint + 1)::text RETURNING value").fetchone()[0])
            c.execute("INSERT INTO meta(key, value) VALUES ('leader_address', %s) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (self.advertise,))
        self.leader_address = self.advertise
        return True

    def _still_held(self) -> bool:
        r = self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid() AND ((classid::bigint << 32) | objid::bigint) = %s",
            (LEADER_LOCK_KEY,)).fetchone()
        return bool(r and r[0])

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._conn = None

    # -- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        last_error = ""
        while not self.is_leader:
            try:
                got = await asyncio.wait_for(self._io.run(self._try_acquire), CHECK_TIMEOUT + self.poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while: keep trying
                got = False
                err = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                if err != last_error:
                    log.warning("leader election: database unreachable", extra=kv(error=err))
                last_error = err
                await self._io.run(self._drop)
            if got:
                self.is_leader = True
                log.info("elected leader", extra=kv(epoch=self.epoch, address=self.advertise))
                await self.on_elected()
                break
            await asyncio.sleep(self.poll)
        while True:
            await asyncio.sleep(self.check)
            why = ""
            try:
                if not await asyncio.wait_for(self._io.run(self._still_held), CHECK_TIMEOUT):
                    why = "the leader lock is no longer held by this coordinator"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - cannot tell: assume lost, the safe side
                why = f"lost the connection that holds the leader lock ({type(exc).__name__}: {str(exc).strip()[:200]})"
            if why:
                self.is_leader = False
                log.warning("leader lock lost", extra=kv(epoch=self.epoch, why=why))
                await self._io.run(self._drop)
                res = self.on_lost(why)
                if asyncio.iscoroutine(res):
                    await res
                return

    async def close(self) -> None:
        """Release the lock (closing the connection frees it at once for a standby)."""
        self.is_leader = False
        await self._io.run(self._drop)
