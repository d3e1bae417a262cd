"""Helpers for the command-line tests: run ``collet-limiter`` as a real process, hold permits.

Every child is waited for with a timeout, and holders are stopped (and reaped) on the way out.
The database is read back with its own driver (``sqlite3`` for a file, psycopg for a
PostgreSQL URL, through ``tests/sql.py``), not through the limiter.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .sql import rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60

CONFIG = """
[collaboration]
max_agents = 3

[[models]]
name = "glm-5"
concurrency_limit = 1
cost_tier = "premium"

[[models]]
name = "glm-4.7"
concurrency_limit = 2
cost_tier = "standard"

[[models]]
name = "sonnet"
concurrency_limit = 1
supports_tools = false

[[models]]
name = "solo"                   # local/solo: no model is a fallback for it, so it queues
concurrency_limit = 1
cost_tier = "cheap"

[[providers]]
name = "zai"
models = ["glm-5", "glm-4.7"]

[[providers]]
name = "claude"
cli = "claude"
models = ["sonnet"]
"""


def cli_command(*args: str) -> list[str]:
    """The argv that runs ``collet-limiter ARGS`` with this interpreter."""
    return [sys.executable, "-m", "collet_limiter", *args]


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``collet-limiter ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        input=stdin,
        check=False,
    )


def query(db: Path | str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on the database (a SQLite file, or a PostgreSQL URL), read with its driver."""
    if isinstance(db, str):
        return rows(db, sql)
    conn = sqlite3.connect(db, timeout=30)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def lease_holders(db: Path | str) -> list[str]:
    """The holder label of every lease in the database."""
    if isinstance(db, str):
        import psycopg

        try:
            return [str(row[0]) for row in query(db, "SELECT holder FROM leases ORDER BY id")]
        except psycopg.errors.UndefinedTable:  # the group's schema is not created yet
            return []
    if not db.exists():
        return []
    try:
        return [str(row[0]) for row in query(db, "SELECT holder FROM leases ORDER BY id")]
    except sqlite3.OperationalError:  # the schema is being created
        return []


def leave_a_dead_holder(db: Path | str, config: Path, model: str, *, holder: str) -> int:
    """A process that takes a lease on ``model`` and dies without releasing it; its pid."""
    code = (
        "import os, sys; from collet_limiter import Limiter, load_config\n"
        "limiter = Limiter(sys.argv[1], config=load_config(sys.argv[2]))\n"
        "lease = limiter.acquire(sys.argv[3], holder=sys.argv[4])  # kept: no release on GC\n"
        "print(os.getpid(), flush=True); os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), str(config), model, holder],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return int(done.stdout)


def waiter_count(db: Path | str) -> int:
    """How many tickets are queued."""
    return int(query(db, "SELECT count(*) FROM waiters")[0][0])  # type: ignore[call-overload]


def wait_until(predicate: Callable[[], bool], *, timeout: float = 30, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


@contextlib.contextmanager
def holding(
    db: Path | str, model: str, *, config: Path, holder: str = "holder", seconds: int = 600
) -> Iterator[subprocess.Popen[str]]:
    """A real ``collet-limiter run`` holding ``model`` (running ``sleep``) while the block runs."""
    child = subprocess.Popen(
        cli_command(
            "--db",
            str(db),
            "--config",
            str(config),
            "-q",
            "run",
            "--model",
            model,
            "--holder",
            holder,
            "--",
            "sleep",
            str(seconds),
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: holder in lease_holders(db) or child.poll() is not None,
            what=f"{holder} to hold {model}",
        )
        assert child.poll() is None, child.communicate()
        yield child
    finally:
        if child.poll() is None:
            child.terminate()  # forwarded to sleep; run then releases and exits
        child.communicate(timeout=TIMEOUT)
