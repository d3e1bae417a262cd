"""``Inspector`` only looks: it leaves the file, its journal mode and its companions as they were.

Its one write, ``reap``, takes the cross-process writer lock (``<db>.lock``) like every writer;
that is checked against a real process holding the ``flock``. On PostgreSQL its sessions are
read-only, a missing group is an error that creates nothing, and ``reap`` waits for the group's
advisory lock held by another session.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collet_limiter import (
    DatabaseBusyError,
    DatabaseUnavailableError,
    Inspector,
    Limiter,
    Reaped,
)
from collet_limiter._engine import resolve_target

from .cli_helpers import TIMEOUT, run_cli, wait_until
from .conftest import fresh_group, make_config
from .sql import pg_connect, rows

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .pgserver import PgServer

WORKER = str(Path(__file__).with_name("workers.py"))

# Holds an exclusive flock on the file named by argv[1] until its stdin closes.
FLOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("LOCKED", flush=True)
sys.stdin.read()
"""


def _journal_mode(db: Path) -> str:
    # Reading the journal mode of a connection never changes the file's.
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    finally:
        conn.close()


def _digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def _make_database(db: Path, journal_mode: str) -> None:
    """A database with one live lease record, closed, in ``journal_mode``, with no lock file."""
    with Limiter(db, config=make_config()) as limiter:
        _held1 = limiter.acquire("p/m", holder="x")
        limiter.acquire("p/n", holder="y").release()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
    finally:
        conn.close()
    db.with_name(db.name + ".lock").unlink()


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_inspecting_a_rollback_journal_database_leaves_its_journal_mode_and_bytes_unchanged(
    db: Path,
) -> None:
    _make_database(db, "delete")
    before = _digest(db)
    with Inspector(db, config=make_config()) as inspector:
        assert inspector.status().in_use == 0
        assert inspector.leases() == []
        assert inspector.waiters() == []
        assert inspector.explain("p/m").candidates
    assert _journal_mode(db) == "delete"
    assert _digest(db) == before
    assert _files(db.parent) == ["limiter.db"]


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_status_leaves_the_database_and_the_files_beside_it_as_it_found_them(
    db: Path, journal_mode: str
) -> None:
    """A WAL file whose -wal and -shm are absent gets them while a reader has it open, as with
    any SQLite reader; the reader removes them when it closes, so none are left behind."""
    _make_database(db, journal_mode)
    files, before = _files(db.parent), _digest(db)
    assert files == ["limiter.db"]
    for command in (["status"], ["leases"], ["explain", "p/m"], ["watch", "--count", "1"]):
        result = run_cli("--db", str(db), *command)
        assert result.returncode == 0, result.stderr
    assert _files(db.parent) == files
    assert _digest(db) == before
    assert _journal_mode(db) == journal_mode


@contextlib.contextmanager
def lock_held_elsewhere(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the writer lock on ``db`` until its stdin is closed."""
    child = subprocess.Popen(
        [sys.executable, "-c", FLOCK_HOLDER, str(db.with_name(db.name + ".lock"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "LOCKED\n"
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(TIMEOUT)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def _dead_holder(db: Path | str) -> int:
    """A lease left by a process killed while holding it; returns that process's PID."""
    holder = subprocess.Popen(
        [sys.executable, WORKER, "hold", "--db", str(db), "--model", "p/dead"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("HELD")
    finally:
        holder.kill()
        holder.wait(TIMEOUT)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    return holder.pid


def _blocked_in_flock(path: Path) -> bool:
    """Whether this process has a flock request on ``path`` queued in the kernel (``->``)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if (
            len(fields) > 6
            and fields[1:3] == ["->", "FLOCK"]
            and int(fields[5]) == os.getpid()
            and int(fields[6].rsplit(":", 1)[1]) == inode
        ):
            return True
    return False


def test_reap_waits_for_the_writer_lock_held_by_another_process(db: Path) -> None:
    pid = _dead_holder(db)
    config = make_config(limiter={"busy_timeout_ms": TIMEOUT * 1000})
    with lock_held_elsewhere(db) as lock_holder, Inspector(db, config=config) as inspector:
        done = threading.Event()
        reaped: list[list[Reaped]] = []

        def reap() -> None:
            reaped.append(inspector.reap())
            done.set()

        thread = threading.Thread(target=reap)
        thread.start()
        lock = db.with_name(db.name + ".lock")
        wait_until(
            lambda: done.is_set() or _blocked_in_flock(lock),
            timeout=TIMEOUT,
            what="reap to queue for the writer lock",
        )
        assert not done.is_set(), "reap wrote while another process held the writer lock"
        assert [info.pid for info in inspector.leases()] == [pid]
        assert lock_holder.stdin is not None
        lock_holder.stdin.close()  # the other process exits, and its lock goes with it
        assert done.wait(TIMEOUT)
        thread.join(TIMEOUT)
        assert [(item.pid, item.reason) for item in reaped[0]] == [(pid, "holder dead")]
        assert inspector.leases() == []


def test_reap_gives_up_on_a_writer_lock_held_beyond_the_busy_timeout(db: Path) -> None:
    pid = _dead_holder(db)
    config = make_config(limiter={"busy_timeout_ms": 100})
    with lock_held_elsewhere(db), Inspector(db, config=config) as inspector:
        with pytest.raises(DatabaseBusyError, match="writer lock"):
            inspector.reap()
        assert [info.pid for info in inspector.leases()] == [pid]


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_an_inspector_on_postgresql_reads_on_sessions_the_server_keeps_read_only(
    pg_server: PgServer,
) -> None:
    url = fresh_group(pg_server)
    with Limiter(url, config=make_config()) as limiter, Inspector(url) as inspector:
        held = limiter.acquire("p/m", holder="x")
        assert [(info.key, info.holder) for info in inspector.leases()] == [(held.key, "x")]
        assert inspector.status().in_use == 1
        assert abs(inspector.now() - time.time()) < 5  # the server's clock, on this host
        raw = inspector._engine.raw_connection()  # a session as the Inspector opens them
        try:
            # Autocommit, outside any transaction the Inspector begins: the session refuses.
            with pytest.raises(Exception, match="read-only transaction"):
                raw.driver_connection.execute("DELETE FROM leases")  # type: ignore[union-attr]
        finally:
            raw.close()
        assert [info.holder for info in inspector.leases()] == ["x"]
        held.release()


def test_inspecting_a_group_that_does_not_exist_raises_and_creates_nothing(
    pg_server: PgServer,
) -> None:
    url = fresh_group(pg_server)
    schema = resolve_target(url).schema
    with pytest.raises(DatabaseUnavailableError, match=f"no limiter group '{schema}' on "):
        Inspector(url)
    assert rows(pg_server.url(), f"SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'") == []


@contextlib.contextmanager
def advisory_lock_held_elsewhere(url: str) -> Iterator[object]:
    """Another session holding the group's write lock, in an open transaction, until the end."""
    conn = pg_connect(url)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (resolve_target(url).lock_key,))
        yield conn
    finally:
        conn.close()  # rolls back: the lock goes with the transaction


def _waiting_for_an_advisory_lock(server_url: str) -> bool:
    return bool(
        rows(server_url, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    )


def test_reap_on_postgresql_waits_for_the_groups_advisory_lock(pg_server: PgServer) -> None:
    url = fresh_group(pg_server)
    pid = _dead_holder(url)
    config = make_config(limiter={"busy_timeout_ms": TIMEOUT * 1000})
    with Inspector(url, config=config) as inspector:
        reaped: list[list[Reaped]] = []
        with advisory_lock_held_elsewhere(url) as holder:
            thread = threading.Thread(target=lambda: reaped.append(inspector.reap()))
            thread.start()
            wait_until(
                lambda: bool(reaped) or _waiting_for_an_advisory_lock(pg_server.url()),
                timeout=TIMEOUT,
                what="reap to wait for the advisory lock",
            )
            assert not reaped, "reap wrote while another session held the group's lock"
            assert [info.pid for info in inspector.leases()] == [pid]
            holder.execute("COMMIT")  # type: ignore[attr-defined]
            thread.join(TIMEOUT)
        assert [(item.pid, item.reason) for item in reaped[0]] == [(pid, "holder dead")]
        assert inspector.leases() == []


def test_reap_on_postgresql_gives_up_on_a_lock_held_beyond_the_busy_timeout(
    pg_server: PgServer,
) -> None:
    url = fresh_group(pg_server)
    pid = _dead_holder(url)
    config = make_config(limiter={"busy_timeout_ms": 200})
    with advisory_lock_held_elsewhere(url), Inspector(url, config=config) as inspector:
        with pytest.raises(DatabaseBusyError, match="held the limiter group's write lock"):
            inspector.reap()
        assert [info.pid for info in inspector.leases()] == [pid]
