"""A real PostgreSQL server for the HA tests, started once per session.

The set-up installs PostgreSQL when ``initdb`` is missing (``scripts/system-deps``, as root),
then runs ``initdb`` and ``pg_ctl`` in a temporary directory on a free loopback port — as the
``postgres`` user when we are root, since the server refuses to run as root. Each test gets a
fresh database. When PostgreSQL cannot be installed or started the tests FAIL, never skip:
the HA claims are only worth what this server checks.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from control.helpers import free_port  # tests/ is on sys.path (rootdir-relative imports)

REPO = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path | None:
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if cands:
        return Path(cands[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgServer:
    def __init__(self):
        bindir = _pg_bin()
        if bindir is None:
            subprocess.run([str(REPO / "scripts" / "system-deps")], timeout=600)
            bindir = _pg_bin()
        if bindir is None:
            pytest.fail("PostgreSQL is needed for tests/ha and could not be installed: run "
                        "scripts/system-deps as root (apt-get install postgresql), or put initdb on PATH")
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="atoll-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8"], "initdb")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                   "-w", "-t", "30", "start"], "pg_ctl start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str], what: str) -> None:
        if self.as_root:
            # runuser lives in /usr/sbin, which a minimal PATH (env -i, some CI images) leaves out
            runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
            cmd = [runuser, "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            log = (self.root / "pg.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL {what} failed (exit {r.returncode}): {r.stdout[-1500:]} {r.stderr[-1500:]} {tail}")

    def new_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"], "pg_ctl stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    srv = PgServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.new_database()
