"""``Inspector``: a read-only view of an existing limiter database, for monitors and the CLI.

A ``Limiter`` creates the database, upgrades its schema and writes its config when it opens,
because it is about to take permits under that config. Something that only looks (``collet-limiter
status``, ``watch``, a dashboard) must not: an operator checking the status without the agents'
config at hand would otherwise reset every model's limit to the built-in defaults for every
process. An ``Inspector`` opens a database that exists and has the current schema, and runs the
same read transactions as ``Limiter`` (they live in ``Core``); ``reap`` is its only write.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._core import Core
from ._doctor import probe
from ._engine import create_sqlite_engine
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

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo


def _check_schema(path: Path) -> None:
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
    revision = probe(path).revision
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
    list yet. ``reap`` is the one write. Thread-safe; close it (or use ``with``) when done.
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
        _check_schema(path)
        self._engine: Engine = create_sqlite_engine(
            core.target, busy_timeout_ms=core.busy_timeout_ms
        )
        self._closed = False

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
        """Remove expired leases and tickets and those of provably dead holders, now."""
        with self._connection() as conn:
            return self._core.reap(conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        if self._closed:
            raise LimiterClosedError(f"Inspector on {self._core.display} is closed")
        with translate_driver_errors(self._core.display), self._engine.connect() as conn:
            yield conn

    def close(self) -> None:
        """Close the database connections. Idempotent."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

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
