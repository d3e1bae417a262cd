"""``Inspector``: a read-only view of an existing limiter database, for monitors and the CLI.

A ``Limiter`` creates the database, upgrades its schema and writes its config when it opens,
because it is about to take permits under that config. Something that only looks (``collet-limiter
status``, ``watch``, a dashboard) must not: an operator checking the status without the agents'
config at hand would otherwise reset every model's limit to the built-in defaults for every
process. An ``Inspector`` opens a database that exists and has the current schema, and runs the
same read transactions as ``Limiter`` (they live in ``Core``) on connections that SQLite keeps
from writing (``query_only``) and that leave the journal mode as they find it. ``reap`` is its
only write, and takes its turn like every other writer: the ``flock`` on ``<db>.lock`` first.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

from ._core import Core
from ._engine import create_sqlite_inspect_engine, read_transaction
from ._errors import (
    ConfigError,
    DatabaseUnavailableError,
    LimiterClosedError,
    SchemaVersionError,
    StorageError,
    translate_driver_errors,
)
from ._migrate import known_revisions
from ._schema import SCHEMA_REVISION
from ._wake import WriterLock

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo


def _check_exists(path: Path) -> None:
    display = str(path)
    if not path.exists():
        raise DatabaseUnavailableError(
            f"no database at {display} yet: 'collet-limiter init' creates it, and so does the "
            "first acquire (check --db or COLLET_LIMITER_DB if you expected one)",
            path=display,
            reason="missing",
        )
    if not path.is_file():
        raise DatabaseUnavailableError(
            f"cannot use database {display}: it is not a regular file",
            path=display,
            reason="not a file",
        )


def _stored_revision(conn: Connection) -> str | None:
    """The schema revision recorded in the database; None without a collet-limiter schema."""
    with read_transaction(conn):
        if not conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).first():
            return None
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if revision is None else str(revision)


def _check_schema(display: str, revision: str | None) -> None:
    if revision is None:
        raise StorageError(
            f"{display} holds no collet-limiter schema: 'collet-limiter init' creates it (if it "
            "is another program's database, choose another --db)",
            path=display,
            reason="no schema",
        )
    if revision == SCHEMA_REVISION:
        return
    if revision in known_revisions():
        raise StorageError(
            f"database {display} has the older schema {revision!r}: 'collet-limiter init' "
            "upgrades it",
            path=display,
            reason="old schema",
        )
    raise SchemaVersionError(
        f"database {display} has schema revision {revision!r}, written by a newer "
        f"collet-limiter (this one knows up to {SCHEMA_REVISION!r}); upgrade collet-limiter or "
        "use another database",
        path=display,
        revision=revision,
    )


class Inspector:
    """A read-only view of an existing limiter database: status, leases, waiters, explain.

    ``db`` and ``config`` are resolved as for ``Limiter``. Opening checks that the database
    exists and has the current schema (else a ``StorageError`` saying what to run), and creates,
    migrates and writes nothing: the limits shown are those in the database, whatever config
    this process has. ``config`` only matters to ``explain`` for keys the database does not
    list yet. The reads never change the file's journal mode, and SQLite refuses any write on
    their connections (``query_only``). As with any SQLite reader, a WAL database's ``-wal`` and
    ``-shm`` files exist while it is open and are removed by the last connection to close.

    ``reap`` is the one write: it waits for the writer lock (``<db>.lock``, created if missing)
    up to the busy timeout, as ``Limiter`` does, then raises ``DatabaseBusyError``.
    Thread-safe; close it (or use ``with``) when done.
    """

    def __init__(
        self, db: str | os.PathLike[str] | None = None, *, config: Config | None = None
    ) -> None:
        self._core = core = Core(
            db,
            config=config,
            clock=None,
            lease_ttl=None,
            poll_interval=None,
            max_poll_interval=None,
        )
        path = core.target.path
        if path is None:
            raise ConfigError(
                f"{core.display}: only SQLite databases can be inspected by this version",
                path=core.display,
            )
        _check_exists(path)
        self._path = path
        self._engine: Engine = create_sqlite_inspect_engine(
            core.target, busy_timeout_ms=core.busy_timeout_ms
        )
        self._closed = False
        # reap's own writable connection and writer lock, made on its first call
        self._write_lock = threading.Lock()
        self._write_engine: Engine | None = None
        self._writer: WriterLock | None = None
        try:
            with self._connection() as conn:
                revision = _stored_revision(conn)
            _check_schema(core.display, revision)
        except BaseException:
            self.close()
            raise

    @property
    def db(self) -> str:
        """The database this Inspector reads."""
        return self._core.display

    @property
    def config(self) -> Config:
        """The config in use here (``explain`` uses it for keys the database lacks)."""
        return self._core.config

    def status(self) -> Status:
        """The global cap and each model's limit, use and queue, as ``Limiter.status``."""
        with self._connection() as conn:
            return self._core.status(conn)

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database, oldest first."""
        with self._connection() as conn:
            return self._core.leases(conn)

    def waiters(self) -> list[TicketInfo]:
        """Every queued waiter, in the order they will be served."""
        with self._connection() as conn:
            return self._core.waiters(conn)

    def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates a fresh ``acquire_with_fallback`` would try now, each with a reason."""
        with self._connection() as conn:
            return self._core.explain(conn, primary, fallback_chain)

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now.

        Takes the writer lock first, as every writer does; ``DatabaseBusyError`` if another
        process keeps it beyond the busy timeout.
        """
        core = self._core
        with self._write_lock:
            if self._closed:
                raise LimiterClosedError(f"Inspector on {core.display} is closed")
            if self._writer is None:
                self._writer = WriterLock(self._path, core.sharing)
            if self._write_engine is None:
                self._write_engine = create_sqlite_inspect_engine(
                    core.target, busy_timeout_ms=core.busy_timeout_ms, writable=True
                )
            if not self._writer.acquire(core.busy_timeout_ms / 1000):
                raise core.writer_busy()
            try:
                with self._connection(self._write_engine) as conn:
                    return core.reap(conn)
            finally:
                self._writer.release()

    @contextlib.contextmanager
    def _connection(self, engine: Engine | None = None) -> Iterator[Connection]:
        if self._closed:
            raise LimiterClosedError(f"Inspector on {self._core.display} is closed")
        engine = engine or self._engine
        with translate_driver_errors(self._core.display), engine.connect() as conn:
            yield conn

    def close(self) -> None:
        """Close the database connections (and the lock file, if ``reap`` opened it). Idempotent."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._engine.dispose()
            if self._write_engine is not None:
                self._write_engine.dispose()
            if self._writer is not None:
                self._writer.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Inspector {self._core.display}{' closed' if self._closed else ''}>"
