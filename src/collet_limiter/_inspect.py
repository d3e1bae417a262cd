"""``Inspector``: a read-only view of an existing limiter database, for monitors and the CLI.

A ``Limiter`` creates the database, upgrades its schema and writes its config when it opens,
because it is about to take permits under that config. Something that only looks (``collet-limiter
status``, ``watch``, a dashboard) must not: an operator checking the status without the agents'
config at hand would otherwise reset every model's limit to the built-in defaults for every
process. An ``Inspector`` opens a database that exists and has the current schema, and runs the
same read transactions as ``Limiter`` (they live in ``Core``) on connections that refuse to
write: SQLite's ``query_only``, which also leaves the journal mode as it finds it, or on
PostgreSQL sessions started with ``default_transaction_read_only`` (in the startup packet, so
no statement of the session can write, autocommit ones included). ``reap`` is its only write,
and takes its turn like every other writer: on SQLite the ``flock`` on ``<db>.lock`` first; on
PostgreSQL the group's advisory lock, which every write transaction takes as it begins.

Before anything has run there is no database to look at, and a new user's first ``collet-limiter
status`` should still answer. With ``missing_ok`` an Inspector answers for a database that does
not exist yet (no file; on PostgreSQL no group schema) from the config alone, as a database
just created under it would read: its models, nothing held, nothing queued. It still creates
nothing, and checks again at each read, so a long-lived one (``watch``) picks the database up
once the first acquire creates it. Anything else wrong (not a collet-limiter database, a newer
schema, a file it may not read, a server it cannot reach) is an error either way.
"""

from __future__ import annotations

import contextlib
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from . import _events, _stats
from ._claim import judge
from ._core import Core, explanation_of, status_of
from ._engine import (
    Target,
    create_postgres_engine,
    create_sqlite_inspect_engine,
    read_transaction,
)
from ._errors import (
    DatabaseBusyError,
    DatabaseUnavailableError,
    LimiterClosedError,
    SchemaVersionError,
    StorageError,
    translate_driver_errors,
)
from ._keys import coerce_chain, coerce_key
from ._migrate import known_revisions
from ._schema import SCHEMA_REVISION
from ._store import make_snapshot
from ._wake import WriterLock

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from datetime import datetime, timedelta
    from pathlib import Path
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._fairness import Snapshot
    from ._fallback import ModelRow
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._stats import Stats


def _file_exists(path: Path, *, default: bool) -> bool:
    """Whether the SQLite file exists; False when nothing has created it yet.

    Only a missing file (or, for the default path, whose directories the first ``Limiter``
    creates, a missing directory) is "not yet": anything else that keeps it from being read is an
    error now, since the first acquire would fail on it too.
    """
    display = str(path)
    try:
        found = path.stat()
    except FileNotFoundError:
        pass
    except OSError as exc:  # EACCES on a directory, ENOTDIR, ELOOP...: not a "not yet"
        raise DatabaseUnavailableError(
            f"cannot read database {display}: {exc.strerror or exc}",
            path=display,
            reason=exc.strerror or type(exc).__name__,
        ) from exc
    else:
        if not stat.S_ISREG(found.st_mode):
            raise DatabaseUnavailableError(
                f"cannot use database {display}: it is not a regular file",
                path=display,
                reason="not a file",
            )
        return True
    if not default and not path.parent.is_dir():
        # A Limiter makes only the default path's directory: the first acquire here would fail.
        raise DatabaseUnavailableError(
            f"no database at {display}, and its directory {path.parent} does not exist (a "
            "Limiter creates only the default path's directory); create it, or check --db and "
            "COLLET_LIMITER_DB",
            path=display,
            reason="missing directory",
        )
    return False


def _missing_file(display: str) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"no database at {display} yet: 'collet-limiter init' creates it, and so does the "
        "first acquire (check --db or COLLET_LIMITER_DB if you expected one)",
        path=display,
        reason="missing",
    )


def _missing_group(target: Target) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"no limiter group {target.schema!r} on {target.host} yet ({target.display}): "
        "'collet-limiter init' creates it, and so does the first acquire (check --db or "
        "COLLET_LIMITER_DB, and its ?schema=, if you expected one)",
        path=target.display,
        reason="missing",
    )


def _read_only_session(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    # Added to the options the engine already passes (its search path and timeouts): the
    # server then starts every transaction of the session READ ONLY, whatever runs in it.
    options = str(cparams.get("options") or "")
    cparams["options"] = f"{options} -c default_transaction_read_only=on".strip()


def create_inspect_engine(
    target: Target, *, busy_timeout_ms: int, writable: bool = False
) -> Engine:
    """An engine that reads ``target`` as it is: no file, schema or setting is created or changed.

    SQLite: ``create_sqlite_inspect_engine``. PostgreSQL: the limiter's own engine (the group's
    search path, its advisory lock in write transactions), whose sessions are read-only unless
    ``writable``. Connecting creates nothing on the server either way.
    """
    if target.is_sqlite:
        return create_sqlite_inspect_engine(
            target, busy_timeout_ms=busy_timeout_ms, writable=writable
        )
    engine = create_postgres_engine(target, busy_timeout_ms=busy_timeout_ms)
    if not writable:
        event.listen(engine, "do_connect", _read_only_session)
    return engine


def cannot_connect(target: Target, exc: BaseException) -> DatabaseUnavailableError:
    """The error when the PostgreSQL server refuses or cannot take a connection (names the host)."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return DatabaseUnavailableError(
        f"cannot connect to database server {target.host} ({reason}); check that it runs, that "
        f"this host can reach it and the user name and password (database {target.display})",
        path=target.display,
        reason=reason,
    )


def group_exists(conn: Connection, schema: str) -> bool:
    """Whether the PostgreSQL schema of a limiter group exists (in its own read transaction)."""
    with read_transaction(conn):
        found = conn.execute(
            text("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = :schema"),
            {"schema": schema},
        ).first()
    return found is not None


def stored_revision(conn: Connection, target: Target) -> str | None:
    """The schema revision recorded in the database; None without a collet-limiter schema."""
    with read_transaction(conn):
        if target.is_sqlite:
            found = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).first()
        else:  # the group's schema, which the search path names, and only it
            found = conn.execute(
                text(
                    "SELECT 1 FROM pg_catalog.pg_tables "
                    "WHERE schemaname = :schema AND tablename = 'alembic_version'"
                ),
                {"schema": target.schema},
            ).first()
        if not found:
            return None
        revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return None if revision is None else str(revision)


def _holds_nothing(conn: Connection) -> bool:
    """Whether a SQLite file has no table at all: an empty file, or one whose first ``Limiter``
    has not committed the schema yet (it creates it in one transaction; see ``_migrate``)."""
    with read_transaction(conn):
        return conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar() == 0


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
    """A read-only view of a limiter database: status, leases, waiters, explain.

    ``db`` and ``config`` are resolved as for ``Limiter``. Opening checks that the database
    exists and has the current schema (else a ``StorageError`` saying what to run), and creates,
    migrates and writes nothing: the limits shown are those in the database, whatever config
    this process has. ``config`` only matters to ``explain`` for keys the database does not
    list yet. The reads never change the file's journal mode, and SQLite refuses any write on
    their connections (``query_only``). As with any SQLite reader, a WAL database's ``-wal`` and
    ``-shm`` files exist while it is open and are removed by the last connection to close. On
    PostgreSQL the group's schema must exist (else ``DatabaseUnavailableError``, as for a
    missing file) and the server refuses writes on the sessions (``default_transaction_read_only``).

    ``missing_ok=True`` accepts a database that nothing has created yet: no file (nor, for the
    default path, its directory), a SQLite file without any table (empty, or the first
    ``Limiter`` is creating the schema this moment), or on PostgreSQL no group schema (created
    in the same transaction as its tables). ``exists`` is then False, and ``status``,
    ``leases``, ``waiters`` and ``explain`` answer as a database just created under ``config``
    would: the config's models and global cap, nothing in use, nothing queued, every eligible
    candidate with room. Still nothing is created (no file, directory, lock file or schema),
    and each read checks again, using the database from the first read that finds it. Only
    "does not exist" is accepted: a file that is not a collet-limiter database, a newer schema,
    a path it may not read, an explicit path in a missing directory (which the first acquire
    would not create either) or a server it cannot reach raise as without ``missing_ok``.

    ``reap`` is the one write: it waits for the writer lock (``<db>.lock``, created if missing;
    on PostgreSQL the group's advisory lock) up to the busy timeout, as ``Limiter`` does, then
    raises ``DatabaseBusyError``. On a database that does not exist yet (``missing_ok``) it
    removes nothing and creates no lock file.
    Thread-safe; close it (or use ``with``) when done.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        missing_ok: bool = False,
    ) -> None:
        self._core = core = Core(
            db,
            config=config,
            clock=None,
            lease_ttl=None,
            poll_interval=None,
            max_poll_interval=None,
        )
        self._missing_ok = missing_ok
        self._engine: Engine = create_inspect_engine(
            core.target, busy_timeout_ms=core.busy_timeout_ms
        )
        self._closed = False
        # reap's own writable connection and writer lock, made on its first call
        self._write_lock = threading.Lock()
        self._write_engine: Engine | None = None
        self._writer: WriterLock | None = None
        try:
            self._exists = self._look()
        except BaseException:
            self.close()
            raise

    def _look(self) -> bool:
        """Whether the database exists, with the current schema (else an error saying why not);
        False when nothing has created it yet and ``missing_ok``."""
        core = self._core
        target = core.target
        if target.path is not None and not _file_exists(target.path, default=core.is_default_path):
            if not self._missing_ok:
                raise _missing_file(core.display)
            return False
        with self._connection() as conn:
            if target.schema is not None and not group_exists(conn, target.schema):
                if not self._missing_ok:
                    raise _missing_group(target)
                return False
            # Before the revision: a schema committed in between is then read whole.
            if self._missing_ok and target.is_sqlite and _holds_nothing(conn):
                return False  # the first Limiter is creating it right now: not yet
            revision = stored_revision(conn, target)
        _check_schema(core.display, revision)
        return True

    def _present(self) -> bool:
        """Whether to read the database (True) or answer for one not created yet (False)."""
        if self._closed:
            raise LimiterClosedError(f"Inspector on {self._core.display} is closed")
        if not self._exists:  # until a read finds it; then for good
            self._exists = self._look()
        return self._exists

    def _unwritten(
        self, keys: Iterable[ModelKey] = ()
    ) -> tuple[dict[ModelKey, ModelRow], Snapshot, float]:
        """What a database just created under this config would read: the rows ``Limiter``
        writes (plus ``keys``, as added on demand), nothing held, nothing queued, its cap."""
        core = self._core
        rows = {row.key: row for row in core.config_rows}
        for key in keys:
            rows.setdefault(key, core.demand(key))
        now = core.estimated_now()
        snap = make_snapshot(rows, now, held={}, ahead={}, cap=core.config.max_agents)
        return rows, snap, now

    @property
    def db(self) -> str:
        """The database this Inspector reads."""
        return self._core.display

    @property
    def config(self) -> Config:
        """The config in use here (``explain`` uses it for keys the database lacks)."""
        return self._core.config

    @property
    def exists(self) -> bool:
        """Whether the database existed at the last read (at opening, before any).

        Always True without ``missing_ok``. With it, False means that read answered from the
        config alone, as for a database just created (nothing had run yet).
        """
        return self._exists

    def now(self) -> float:
        """The database's time now (seconds since the epoch), to measure lease ages against.

        On PostgreSQL the server's clock, which every lease time comes from; on SQLite this
        host's (the config's clock, as a ``Limiter`` on this host uses).
        """
        if self._core.target.is_sqlite:
            return self._core.clock()
        with self._connection() as conn, read_transaction(conn):
            started = time.time()
            value = conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar()
            # The statement's round trip: the server read its clock about half-way through it.
            return float(value) + (time.time() - started) / 2 if value is not None else started

    def status(self) -> Status:
        """The global cap and each model's limit, use and queue, as ``Limiter.status``."""
        if not self._present():
            return status_of(*self._unwritten())
        with self._connection() as conn:
            return self._core.status(conn)

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database, oldest first."""
        if not self._present():
            return []
        with self._connection() as conn:
            return self._core.leases(conn)

    def waiters(self) -> list[TicketInfo]:
        """Every queued waiter, in the order they will be served."""
        if not self._present():
            return []
        with self._connection() as conn:
            return self._core.waiters(conn)

    def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates a fresh ``acquire_with_fallback`` would try now, each with a reason."""
        if self._present():
            with self._connection() as conn:
                return self._core.explain(conn, primary, fallback_chain)
        key = coerce_key(primary, what="primary model")
        chain = coerce_chain(fallback_chain)
        rows, snap, _ = self._unwritten((key, *chain))
        return explanation_of(key, *judge(key, chain, rows, snap))

    def event_counts(self) -> list[tuple[str, str, str, str, int]]:
        """How many events of each kind were ever written, pruned ones included: (kind,
        provider, model, via, count), '' where an event has none; sorted. Counts never go
        down, so they suit counters (``collet-limiter metrics``). Empty before any database."""
        if not self._present():
            return []
        with self._connection() as conn, read_transaction(conn):
            return _events.counts(conn)

    def stats(
        self,
        *,
        since: float | datetime | timedelta | None = None,
        model: ModelKey | str | None = None,
    ) -> Stats:
        """The history's figures per model from ``since`` to now (``collet-limiter stats``).

        ``since``: seconds since the epoch, a datetime (naive means UTC), a timedelta (that
        long before now) or None (all the history kept, as the ``model_stats`` view gives it).
        ``model`` keeps that model alone. "Now" is the database's time (see ``now``). One read
        transaction. Before any database (``missing_ok``), the configured models with zeros
        and ``exists`` False. See ``Stats`` and ``ModelStats`` for what each figure counts.
        """
        key = None if model is None else coerce_key(model, what="model")
        _stats.resolve_since(since, 0.0)  # a bad value is refused before any read
        if not self._present():
            now = self._core.estimated_now()
            return _stats.compute(
                since=_stats.resolve_since(since, now),
                now=now,
                lifetimes=(),
                reports=(),
                tallies=(),
                listed=[row.key for row in self._core.config_rows],
                model=key,
                exists=False,
            )
        with self._connection() as conn, read_transaction(conn):
            now = self._core.read_now(conn)
            return _stats.read(conn, since=_stats.resolve_since(since, now), now=now, model=key)

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now.

        Takes the writer lock first, as every writer does (SQLite: the ``flock`` on
        ``<db>.lock``; PostgreSQL: the group's advisory lock, as its transaction begins);
        ``DatabaseBusyError`` if another process keeps it beyond the busy timeout.
        """
        core = self._core
        with self._write_lock:
            if not self._present():
                return []  # nothing to remove, and no lock file to leave behind
            if self._write_engine is None:
                self._write_engine = create_inspect_engine(
                    core.target, busy_timeout_ms=core.busy_timeout_ms, writable=True
                )
            path = core.target.path
            if path is None:
                return self._reap_on_server(self._write_engine)
            if self._writer is None:
                self._writer = WriterLock(path, core.sharing)
            if not self._writer.acquire(core.busy_timeout_ms / 1000):
                raise core.writer_busy()
            try:
                with self._connection(self._write_engine) as conn:
                    return core.reap(conn)
            finally:
                self._writer.release()

    def _reap_on_server(self, engine: Engine) -> list[Reaped]:
        core = self._core
        try:
            with self._connection(engine) as conn:
                return core.reap(conn)
        except StorageError as exc:
            # The server's lock_timeout (the busy timeout) ended the wait for the advisory lock.
            if "lock timeout" not in str(getattr(exc, "reason", "")):
                raise
            raise DatabaseBusyError(
                f"database {core.display}: another session held the limiter group's write lock "
                f"(advisory lock {core.target.lock_key}) for more than the busy timeout of "
                f"{core.busy_timeout_ms} ms; find it in pg_locks, or raise [limiter] "
                "busy_timeout_ms",
                path=core.display,
                reason="writer lock held",
            ) from exc

    @contextlib.contextmanager
    def _connection(self, engine: Engine | None = None) -> Iterator[Connection]:
        if self._closed:
            raise LimiterClosedError(f"Inspector on {self._core.display} is closed")
        engine = engine or self._engine
        target = self._core.target
        with translate_driver_errors(target.display):
            try:
                conn = engine.connect()
            except DBAPIError as exc:
                if target.is_sqlite:
                    raise
                raise cannot_connect(target, exc) from exc
            with conn:
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
        state = (" (no database yet)" if not self._exists else "") + (
            " closed" if self._closed else ""
        )
        return f"<Inspector {self._core.display}{state}>"
