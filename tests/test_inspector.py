"""``Inspector`` only looks: it leaves the file, its journal mode and its companions as they were.

Its one write, ``reap``, takes the cross-process writer lock (``<db>.lock``) like every writer;
that is checked against a real process holding the ``flock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collet_limiter import DatabaseBusyError, Inspector, Limiter, Reaped

from .cli_helpers import TIMEOUT, run_cli, wait_until
from .conftest import make_config

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def _dead_holder(db: Path) -> int:
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
