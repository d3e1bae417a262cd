"""SQLite on the stdlib driver: the connections a runtime uses, without SQLAlchemy's.

A process that acquires and releases runs only ``Prepared`` statements, whose SQLite text
``_sqltext`` stores, on the driver's cursor, inside transactions it begins and ends itself
(``_engine``): SQLAlchemy's engine, pool and ``Connection`` would only be imported, at about
200 ms of a command's start, to be bypassed. So on SQLite the runtime holds ``LiteConnection``s:
a ``sqlite3`` connection set up as ``_engine.create_sqlite_engine`` sets up its own (WAL, the
busy timeout, our BEGIN), offering what the hot path uses of a ``Connection`` (``info``,
``dialect``, the driver's cursor, ``begin``, ``commit``, ``rollback``). Anything else (a Core
statement that is not prepared: a config write, a migration, the statistics) goes to the
connection's SQLAlchemy twin, made on first need over the same driver connection, so it runs in
the same transaction; only then is SQLAlchemy imported.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy.engine import Connection, Engine

    from ._engine import Target

# The first SQLite with RETURNING, which the stored text of the ``*_returning`` statements uses.
RETURNING_SINCE: Final = (3, 35, 0)


class LiteDialect:
    """What the hot path asks of a dialect: its name and whether RETURNING works."""

    name: Final = "sqlite"
    driver: Final = "pysqlite"

    def __init__(self) -> None:
        self.insert_returning = self.delete_returning = sqlite3.sqlite_version_info >= (
            RETURNING_SINCE
        )


class LiteEngine:
    """Opens ``LiteConnection``s on one SQLite file; the runtime keeps them (no pool here)."""

    def __init__(self, target: Target, *, busy_timeout_ms: int) -> None:
        assert target.path is not None
        self.target, self.busy_timeout_ms = target, busy_timeout_ms
        self.dialect = LiteDialect()

    def connect(self) -> LiteConnection:
        """A new connection, in WAL mode with the busy timeout."""
        from ._engine import configure_sqlite

        assert self.target.path is not None
        driver = sqlite3.connect(
            self.target.path,
            timeout=self.busy_timeout_ms / 1000,
            check_same_thread=False,
            isolation_level=None,
        )
        try:
            configure_sqlite(driver, self.busy_timeout_ms)
        except BaseException:
            driver.close()
            raise
        return LiteConnection(self, driver)

    def dispose(self, close: bool = True) -> None:
        """Nothing to do: the runtime closes the connections it holds (``Engine.dispose``
        closes only those checked in to its pool, and this engine has none)."""


class LiteConnection:
    """A ``sqlite3`` connection that stands in for a SQLAlchemy ``Connection`` (module doc)."""

    def __init__(self, engine: LiteEngine, driver: sqlite3.Connection) -> None:
        self.engine, self.dialect, self.driver = engine, engine.dialect, driver
        self.info: dict[str, Any] = {}
        self.closed = False
        self._twin: Connection | None = None
        self._twin_engine: Engine | None = None

    # --- as a Connection's .connection (the pool's wrapper of the driver's connection)

    @property
    def connection(self) -> LiteConnection:
        """Itself: ``conn.connection.cursor()`` and ``.driver_connection`` are the driver's."""
        return self

    @property
    def driver_connection(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection."""
        return self.driver

    dbapi_connection = driver_connection

    def cursor(self) -> sqlite3.Cursor:
        """A cursor of the driver."""
        return self.driver.cursor()

    # --- transactions

    @contextlib.contextmanager
    def begin(self) -> Iterator[LiteConnection]:
        """A transaction: ``BEGIN IMMEDIATE`` when the connection's info says it will write
        (``_engine.WRITE_FLAG``), else ``BEGIN``; committed at the end, rolled back on error."""
        from ._engine import WRITE_FLAG

        self.driver.execute("BEGIN IMMEDIATE" if self.info.get(WRITE_FLAG) else "BEGIN")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def in_transaction(self) -> bool:
        """Whether the twin began a transaction (a Core statement ran in this one)."""
        return self._twin is not None and self._twin.in_transaction()

    def commit(self) -> None:
        """Commit the transaction (through the twin if it took part, so it knows)."""
        if self.in_transaction():
            assert self._twin is not None
            self._twin.commit()
        elif self.driver.in_transaction:
            self.driver.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the transaction back (through the twin if it took part)."""
        if self.in_transaction():
            assert self._twin is not None
            self._twin.rollback()
        elif self.driver.in_transaction:
            self.driver.execute("ROLLBACK")

    # --- everything else: the SQLAlchemy twin

    def twin(self) -> Connection:
        """A SQLAlchemy ``Connection`` over this very driver connection (made once)."""
        if self._twin is None:
            from ._engine import twin_connection

            self._twin_engine, self._twin = twin_connection(self.driver)
        return self._twin

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        """Run a Core statement (through the twin), in this connection's transaction."""
        return self.twin().execute(statement, parameters)

    def exec_driver_sql(self, statement: str, parameters: Any = None) -> Any:
        """Run SQL text (through the twin), in this connection's transaction."""
        return self.twin().exec_driver_sql(statement, parameters)

    def __enter__(self) -> LiteConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a transaction still open is rolled back)."""
        if self.closed:
            return
        self.closed = True
        if self._twin_engine is not None:
            # Its pool holds only this driver connection, closed below: drop it unclosed.
            self._twin_engine.dispose(close=False)
        self.driver.close()


def sqlalchemy_connection(conn: Any) -> Connection:
    """``conn`` as a SQLAlchemy ``Connection``: itself, or a ``LiteConnection``'s twin."""
    if isinstance(conn, LiteConnection):
        return conn.twin()
    result: Connection = conn
    return result
