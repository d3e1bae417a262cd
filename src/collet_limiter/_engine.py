"""Engine creation per dialect, and the dialect-specific code: pragmas, BEGIN, locks, clocks.

Write transactions start with ``BEGIN IMMEDIATE``. A deferred transaction (plain ``BEGIN``) that
reads and later writes must upgrade its lock, and when another connection wrote in between SQLite
fails the upgrade with SQLITE_BUSY at once, without honouring the busy timeout, because waiting
could deadlock (https://www.sqlite.org/lang_transaction.html,
https://www.sqlite.org/rescode.html#busy_snapshot). Taking the write lock up front makes the busy
timeout apply to the one place contention can occur: the BEGIN itself.

pysqlite would emit its own deferred BEGIN before DML, so, as SQLAlchemy's SQLite docs recommend
("Enabling Non-Legacy SQLite Transactional Modes"), the driver's transaction control is switched
off (``isolation_level = None``) and the ``begin`` event emits ours.

On PostgreSQL (psycopg 3) the driver runs in autocommit mode for the same reason, and the
``begin`` event emits ``BEGIN``. A write transaction then takes one transaction-level advisory
lock per limiter group (``pg_advisory_xact_lock``), the counterpart of SQLite's single writer:
every decision (fairness, fallback, the global cap) reads counts across all models and the
queue, so row locks on the rows it reads would not exclude a concurrent insert of a new lease or
ticket, while one lock taken before the first read serializes exactly what SQLite serializes, at
READ COMMITTED, with no serialization failure to retry. Each statement after the lock sees every
transaction that committed before the lock was granted. The same statement reads the server's
clock, which on PostgreSQL is the only clock for lease times. Reads that span several statements
run at REPEATABLE READ, READ ONLY: one snapshot, and nothing that can fail to serialize.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
import os
import re
import sqlite3
import time
import weakref
from collections import namedtuple
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from ._lite import LiteDialect, LiteEngine, sqlalchemy_connection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from sqlalchemy.engine import URL, Connection, Engine
    from sqlalchemy.sql.expression import ClauseElement

# SQLAlchemy is imported where it is used: on SQLite a process that acquires and releases needs
# none of it (see _lite).

# Key in a connection's ``info`` marking that its next transaction will write (a plain dict
# entry: execution options would cost more than the statement on this hot path).
WRITE_FLAG: Final = "collet_limiter_write"
# ``WRITE_FLAG``'s value inside ``hot_write_transaction``: the driver's transaction is open.
HOT: Final = "hot"
# Key in a PostgreSQL connection's ``info``: the server's clock (seconds since the epoch) read
# when the current write transaction took its lock.
SERVER_NOW: Final = "collet_limiter_server_now"
# The schema (limiter group) a PostgreSQL URL names with ``?schema=``, when it names none.
DEFAULT_SCHEMA: Final = "collet_limiter"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a database lives: the SQLAlchemy URL and, for SQLite files, the path.

    For PostgreSQL, ``schema`` is the limiter group (the ``?schema=`` of the URL the user gave,
    which ``url`` no longer carries: it is not a connection option) and ``shown`` that URL
    with its password hidden. A SQLite file's URL is made from its path when asked for.
    """

    server_url: URL | None  # PostgreSQL's; None for a SQLite file
    path: Path | None
    schema: str | None = None
    shown: str | None = None
    listen: bool = True  # PostgreSQL: wake waiters by LISTEN/NOTIFY (else they poll)

    @property
    def url(self) -> URL:
        """The SQLAlchemy URL."""
        if self.server_url is not None:
            return self.server_url
        from sqlalchemy.engine import make_url

        return make_url("sqlite+pysqlite://").set(database=str(self.path))

    @property
    def display(self) -> str:
        """The path (SQLite) or the URL with its password hidden, for messages."""
        if self.path is not None:
            return str(self.path)
        return self.shown or self.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        """Whether the target is a SQLite database."""
        return self.server_url is None

    @property
    def host(self) -> str:
        """The server, for messages: host (or socket directory) and port."""
        host = self.url.host or str(self.url.query.get("host") or "localhost")
        port = self.url.port or self.url.query.get("port")
        return f"{host}:{port}" if port else host

    @property
    def lock_key(self) -> int:
        """The advisory lock that serializes this group's writers (a signed 64-bit integer)."""
        digest = hashlib.sha256(f"collet-limiter/{self.schema}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def resolve_target(db: str | os.PathLike[str]) -> Target:
    """A path or a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``)."""
    text = os.fspath(db)
    if "://" in text:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(text)
        except ArgumentError as exc:  # not a URL SQLAlchemy can parse
            from ._errors import ConfigError

            raise ConfigError(
                f"{_hide_password(text)}: not a database URL ({exc}); give a file path, "
                "sqlite:///PATH or postgresql+psycopg://USER@HOST/DATABASE",
                path=_hide_password(text),
            ) from None
        if url.get_backend_name() == "postgresql":
            return _postgres_target(url, _hide_password(text))
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                from ._errors import ConfigError

                raise ConfigError(
                    f"{text}: an in-memory SQLite database cannot be shared between processes; "
                    "give a file path",
                    path=text,
                )
            return Target(None, Path(url.database).expanduser().absolute())
        from ._errors import ConfigError

        raise ConfigError(
            f"{url.render_as_string(hide_password=True)}: unsupported database "
            f"{url.get_backend_name()!r}; use a SQLite file path or a postgresql+psycopg:// URL",
            path=url.render_as_string(hide_password=True),
        )
    return Target(None, Path(text).expanduser().absolute())


def _hide_password(text: str) -> str:
    """A URL as the user wrote it, with the password (in the authority or the query) hidden."""
    text = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", text)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", text)


def _postgres_target(url: URL, shown: str) -> Target:
    from ._errors import ConfigError

    if url.drivername not in ("postgresql", "postgresql+psycopg"):
        # postgresql:// alone means psycopg 3 here (SQLAlchemy's default would be psycopg2).
        raise ConfigError(
            f"{shown}: collet-limiter uses the psycopg (3) driver; write the URL as "
            "postgresql+psycopg://...",
            path=shown,
        )
    schema = str(url.query.get("schema") or DEFAULT_SCHEMA)
    listen_text = str(url.query.get("listen") or "on").lower()
    if listen_text not in ("on", "off"):
        raise ConfigError(
            f"{shown}: listen={listen_text!r} must be on or off (off: waiters poll, for "
            "connection poolers in transaction mode)",
            path=shown,
        )
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"{shown}: schema {schema!r} is not a valid limiter group name; use lowercase "
            "letters, digits and underscores, not starting with a digit (at most 63)",
            path=shown,
        )
    url = url.set(drivername="postgresql+psycopg").difference_update_query(["schema", "listen"])
    return Target(url, None, schema=schema, shown=shown, listen=listen_text == "on")


def configure_sqlite(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """Set up a new SQLite connection: our BEGIN, the busy timeout, WAL, synchronous NORMAL."""
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _switch_to_wal(cursor, busy_timeout_ms / 1000)
        # NORMAL is durable across application crashes in WAL mode; only a power loss can
        # roll back the last commits, which for leases means at worst a released slot
        # reappears until its holder is seen dead.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _on_connect(busy_timeout_ms: int) -> Any:
    def configure(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection, busy_timeout_ms)

    return configure


def _switch_to_wal(cursor: Any, timeout: float) -> None:
    """Put the file in WAL mode (persistent: once per file) unless it is already.

    Readers never block the writer then, nor the writer them. Switching a new file takes an
    exclusive lock that SQLite does not wait for with its busy handler, so processes opening a
    new file at once would fail with "database is locked": they retry here instead, for up to
    the busy timeout.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not _try_wal(cursor, last_try=time.monotonic() >= deadline):
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _try_wal(cursor: Any, *, last_try: bool) -> bool:
    """One attempt of ``_switch_to_wal``; False if the file was locked (raised on the last)."""
    try:
        cursor.execute("PRAGMA journal_mode")
        (mode,) = cursor.fetchone()
        if str(mode).lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
    except Exception as exc:  # the driver's OperationalError
        if last_try or "locked" not in str(exc).lower():
            raise
        return False
    return True


def _on_begin(conn: Connection) -> None:
    flag = conn.info.get(WRITE_FLAG)
    if flag == HOT:  # inside hot_write_transaction: the driver's transaction is begun already
        return
    cursor = conn.connection.cursor()  # straight to the driver: this runs for every transaction
    try:
        cursor.execute("BEGIN IMMEDIATE" if flag else "BEGIN")
    finally:
        cursor.close()


def create_sqlite_engine(target: Target, *, busy_timeout_ms: int) -> Engine:
    """An engine on a SQLite file in WAL mode with our transaction control."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import QueuePool

    engine = create_engine(
        target.url,
        poolclass=QueuePool,
        # Each thread blocked in acquire_wait holds a connection for its data_version polling,
        # so the pool must grow with the number of waiting threads instead of timing out.
        pool_size=5,
        max_overflow=-1,
        # Every transaction ends in COMMIT or ROLLBACK through our context managers, so the
        # pool's extra ROLLBACK on every checkin would be pure overhead.
        pool_reset_on_return=None,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
    )
    event.listen(engine, "connect", _on_connect(busy_timeout_ms))
    event.listen(engine, "begin", _on_begin)
    return engine


def _on_postgres_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.autocommit = True  # we emit BEGIN ourselves (see module docstring)


def _on_postgres_begin(lock_key: int) -> Any:
    # BEGIN and the lock in one round trip: a simple query (no parameters, so the key, an
    # integer of ours, is in the text) of two statements. The clock is read once the lock is
    # granted (the function in FROM runs first).
    key = int(lock_key)  # an integer of our own hash, not input
    begin_sql = (
        f"BEGIN; SELECT extract(epoch FROM clock_timestamp()) FROM pg_advisory_xact_lock({key})"  # noqa: S608
    )

    def begin(conn: Connection) -> None:
        cursor = conn.connection.cursor()
        try:
            if not conn.info.get(WRITE_FLAG):
                cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return
            cursor.execute(begin_sql)
            cursor.nextset()  # past BEGIN's result, to the clock's
            row = cursor.fetchone()
            assert row is not None
            conn.info[SERVER_NOW] = float(row[0])
        finally:
            cursor.close()

    return begin


def create_postgres_engine(target: Target, *, busy_timeout_ms: int) -> Engine:
    """An engine on the PostgreSQL server, in the target's schema, with our transaction control.

    The schema (limiter group) is set at connection start (libpq's ``options``), so every
    statement, the Alembic version table included, works on that group's tables unqualified.
    The busy timeout bounds the wait for the advisory lock (``lock_timeout``), the connection
    attempt, and how long a session may sit idle inside a transaction: a process stopped
    (SIGSTOP) in the middle of a write would otherwise hold every writer up for as long as it
    stays stopped; the server ends its session instead, which rolls it back.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import QueuePool

    assert target.schema is not None
    timeout_ms = max(1, int(busy_timeout_ms))
    options = (
        f"-c search_path={target.schema} -c lock_timeout={timeout_ms} "
        f"-c idle_in_transaction_session_timeout={max(timeout_ms, 1000)} "
        # As SQLite's synchronous=NORMAL: a commit returns before its WAL record is flushed.
        # Only a server crash (not a client's) can lose the last commits: a released slot
        # then reappears until it expires, a granted lease vanishes and its holder is told.
        "-c synchronous_commit=off"
    )
    engine = create_engine(
        target.url,
        poolclass=QueuePool,
        pool_size=5,
        max_overflow=-1,
        pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK, as above
        pool_pre_ping=True,  # a connection that died with a server restart is replaced
        connect_args={
            "options": options,
            "connect_timeout": max(1, math.ceil(timeout_ms / 1000)),
            "application_name": "collet-limiter",
        },
    )
    event.listen(engine, "connect", _on_postgres_connect)
    event.listen(engine, "begin", _on_postgres_begin(target.lock_key))
    return engine


def create_engine_for(target: Target, *, busy_timeout_ms: int) -> Engine | LiteEngine:
    """The engine a limiter uses on ``target``: on SQLite the stdlib driver's (``_lite``)."""
    if target.is_sqlite:
        return LiteEngine(target, busy_timeout_ms=busy_timeout_ms)
    return create_postgres_engine(target, busy_timeout_ms=busy_timeout_ms)


def twin_connection(driver: sqlite3.Connection) -> tuple[Engine, Connection]:
    """A SQLAlchemy engine and connection over one SQLite driver connection already set up (a
    ``LiteConnection``'s twin): its transactions are that connection's, begun by ours when one
    is open (then it emits no BEGIN), else as ``create_sqlite_engine``'s."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import StaticPool

    held = _TwinDriver(driver)
    engine = create_engine(
        "sqlite+pysqlite://",
        creator=lambda: held,
        poolclass=StaticPool,
        pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK
    )

    def begin(conn: Connection) -> None:
        if not driver.in_transaction:
            _on_begin(conn)

    event.listen(engine, "begin", begin)
    conn = engine.connect()  # SQLAlchemy's first connect initializes its dialect, then rolls
    held.connected = True  # back: not the transaction that may be open on the driver
    return engine, conn


class _TwinDriver:
    """A SQLite driver connection as a twin's pool holds it: the same, except that the rollback
    SQLAlchemy does after first connecting does nothing (``twin_connection``)."""

    def __init__(self, driver: sqlite3.Connection) -> None:
        self.driver, self.connected = driver, False

    def rollback(self) -> None:
        """Roll back, once connected."""
        if self.connected:
            self.driver.rollback()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)


def server_now(conn: Connection) -> float | None:
    """The server's clock as read when this write transaction took its lock (PostgreSQL)."""
    value: float | None = conn.info.get(SERVER_NOW)
    return value


def create_sqlite_inspect_engine(
    target: Target, *, busy_timeout_ms: int, writable: bool = False
) -> Engine:
    """An engine on an existing SQLite file that leaves its setup alone, for ``Inspector``.

    Unlike ``create_sqlite_engine`` it never changes the journal mode (nor any other persistent
    setting) and never creates the file (``mode=rw``: a missing file is an error). Its
    connections are ``query_only`` unless ``writable``, so SQLite itself refuses a write.

    Not ``mode=ro``, although that also opens a WAL file whose ``-shm`` is absent: SQLite then
    creates the ``-wal`` and ``-shm`` companions, and a read-only connection cannot remove them
    when it closes, so every look would leave them behind. A read-write connection that only
    reads removes them when it is the last to close, as any other SQLite reader does
    (https://www.sqlite.org/wal.html#the_wal_file). A file the process may not write is still
    opened, read-only (SQLite falls back by itself).
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import QueuePool

    assert target.path is not None, "only SQLite files are inspected"
    uri = f"file:{quote(str(target.path))}?mode=rw"
    timeout = busy_timeout_ms / 1000

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

    def configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (module docstring)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not writable:
                cursor.execute("PRAGMA query_only = ON")
        finally:
            cursor.close()

    engine = create_engine(
        "sqlite+pysqlite://",
        creator=connect,
        poolclass=QueuePool,
        pool_size=2,
        max_overflow=-1,
        pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK, as above
    )
    event.listen(engine, "connect", configure)
    event.listen(engine, "begin", _on_begin)
    return engine


class Prepared:
    """A Core statement compiled once per dialect, executed on the driver's cursor.

    For the few statements on the hot path of every acquire and release. The SQL is still the
    Core construct's (``_statements.STATEMENTS[name]``, built when first needed), compiled by
    the connection's own dialect; only SQLAlchemy's per-execution machinery (events, result
    objects, building each execution's parameters), which costs more than the statement itself,
    is skipped. Use it for statements with plain scalar parameters and results read by position.

    Every statement is registered in ``PREPARED`` by name. On SQLite its compiled form is taken
    from ``_sqltext`` (what ``python -m collet_limiter._sqlgen`` wrote, compiling the same
    constructs with the same dialect): always on the stdlib driver's connections (``_lite``),
    and on SQLAlchemy's whenever their dialect compiles exactly as the one that wrote it
    (``dialect_fingerprint``); it is compiled here otherwise. Compiling costs
    about 0.5-3 ms a statement: a new process's first uncontended cycle took 6 ms of CPU, most
    of it compiling, against 0.45 ms for the next (1.75 ms with the text).
    """

    __slots__ = ("_compiled", "_own", "_row_types", "name")

    def __init__(self, name: str, statement: ClauseElement | None = None) -> None:
        """``_statements.STATEMENTS[name]``; or ``statement`` itself, never registered nor
        looked up in ``_sqltext`` (a statement built for one use, compiled where it runs)."""
        self.name, self._own = name, statement
        self._compiled: dict[str, _Compiled] = {}
        self._row_types: dict[tuple[str, ...], Any] = {}  # named tuple types by columns
        if statement is None:
            if name in PREPARED:
                raise ValueError(f"two prepared statements are named {name!r}")
            PREPARED[name] = self

    @property
    def statement(self) -> ClauseElement:
        """The Core construct (importing ``_statements``, and so SQLAlchemy, if not yet)."""
        if self._own is not None:
            return self._own
        from ._statements import STATEMENTS

        return STATEMENTS[self.name]

    def _compile(self, conn: Any) -> _Compiled:
        dialect = conn.dialect
        entry = self._generated(dialect) or self.compiled_by(sqlalchemy_connection(conn).dialect)
        self._compiled[dialect.name] = entry
        return entry

    def _generated(self, dialect: Any) -> _Compiled | None:
        """The compiled form ``_sqltext`` holds for this statement, if it fits ``dialect``."""
        if self._own is not None or dialect.name != "sqlite":
            return None
        from . import _sqltext  # only at SQLite's first use of each statement

        found = _sqltext.SQLITE.get(self.name)
        if found is None:
            return None
        # The stdlib driver's connections run the text as it is (it is SQLite's SQL, and the
        # statements that use RETURNING run only where the library has it); SQLAlchemy's take
        # it when their dialect compiles exactly as the one that wrote it.
        if not isinstance(dialect, LiteDialect) and (
            dialect_fingerprint(dialect) != _sqltext.SQLITE_FINGERPRINT
        ):
            return None
        sql, names, defaults = found
        return _Compiled(sql, dict(defaults), names, positional=True, getter=_getter(names))

    def compiled_by(self, dialect: Any) -> _Compiled:
        """The statement compiled by ``dialect`` itself."""
        built: Any = self.statement.compile(dialect=dialect)
        assert not built.escaped_bind_names, "Prepared takes plain parameter names only"
        required = {name for bind, name in built.bind_names.items() if bind.required}
        every = built.construct_params(_check=False)  # by the names the SQL uses
        # The values the statement carries itself (literals, constants); a parameter the caller
        # must give has none, so forgetting it fails (KeyError) instead of binding NULL.
        defaults = {name: value for name, value in every.items() if name not in required}
        names = tuple(built.positiontup) if built.positional else tuple(every)
        return _Compiled(str(built), defaults, names, built.positional, _getter(names))

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """Run in ``conn``'s current transaction; returns the driver's cursor (close it)."""
        entry = self._compiled.get(conn.dialect.name) or self._compile(conn)
        if not params:
            values: Mapping[str, Any] = entry.defaults
        elif entry.defaults:
            values = {**entry.defaults, **params}
        else:
            values = params
        if entry.positional:
            arguments: Any = entry.getter(values)
        else:
            arguments = {name: values[name] for name in entry.names}
        cursor = conn.connection.cursor()
        cursor.execute(entry.sql, arguments)
        return cursor

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every result row, as named tuples (columns by position or by name)."""
        return self.collect(self.execute(conn, params))

    def collect(self, cursor: Any) -> list[Any]:
        """The rows of an executed cursor as named tuples (none for a statement without rows);
        closes the cursor."""
        try:
            description = cursor.description
            if description is None:
                return []
            fetched = cursor.fetchall()
        finally:
            cursor.close()
        names = tuple(map(_first, description))
        row_type: Any = self._row_types.get(names)
        if row_type is None:
            row_type = self._row_types[names] = namedtuple("Row", names, rename=True)
        return list(map(row_type._make, fetched))

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None when there is no row."""
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else row[0]


_first: Final = itemgetter(0)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One dialect's SQL of a ``Prepared`` statement and how to bind its parameters."""

    sql: str
    defaults: dict[str, Any]  # values of the statement's own bound literals
    names: tuple[str, ...]  # parameters in the order the driver takes them (positional)
    positional: bool
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]]


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function from parameter values by name to the driver's positional tuple."""
    if not names:
        return lambda _values: ()
    if len(names) == 1:
        only = names[0]
        return lambda values: (values[only],)
    return itemgetter(*names)


# Every ``Prepared``, by name (``_sqlgen`` writes their SQLite text).
PREPARED: Final[dict[str, Prepared]] = {}
_FINGERPRINTS: Final[weakref.WeakKeyDictionary[Any, str]] = weakref.WeakKeyDictionary()


def dialect_fingerprint(dialect: Any) -> str:
    """What decides how ``dialect`` compiles our statements: SQLAlchemy's version, the dialect
    and driver, the parameter style and every ``supports_*`` and ``*_returning`` capability
    (which a SQLite dialect sets from the library's version when it first connects)."""
    known = _FINGERPRINTS.get(dialect)
    if known is None:
        import sqlalchemy

        flags = sorted(
            (name, value)
            for name in dir(dialect)
            if name.startswith("supports_") or name.endswith("_returning")
            # Settings only: a property (a deprecated alias, a memoized value that exists only
            # once something asked for it) is not one, and reading it could warn.
            if not hasattr(inspect.getattr_static(type(dialect), name, None), "__get__")
            if isinstance(value := inspect.getattr_static(dialect, name, None), (bool, int, str))
        )
        text = repr(
            (sqlalchemy.__version__, dialect.name, dialect.driver, dialect.paramstyle, flags)
        )
        known = _FINGERPRINTS[dialect] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return known


def batch(
    conn: Connection, items: Sequence[tuple[Prepared, Mapping[str, Any] | None]]
) -> list[list[Any]]:
    """Each statement's rows (``Prepared.rows``), in order.

    On PostgreSQL the statements travel together in one round trip (psycopg's pipeline mode):
    inside a write transaction every round trip is time the group's lock is held. Use it only
    for statements none of which needs another's result. Elsewhere they run one by one.
    """
    if conn.dialect.name != "postgresql" or len(items) < 2:
        return [prepared.rows(conn, params) for prepared, params in items]
    driver: Any = conn.connection.driver_connection
    try:
        with driver.pipeline() as pipeline:
            cursors = [(prepared, prepared.execute(conn, params)) for prepared, params in items]
            pipeline.sync()  # one round trip: every result is here after it
            return [prepared.collect(cursor) for prepared, cursor in cursors]
    except Exception as exc:
        # The link broke inside pipeline mode (a server restart ends the session): psycopg may
        # then fail to leave the mode ("cannot exit pipeline mode while busy") and keep the
        # connection looking open. Close it, so the caller sees it lost and retries.
        if any(_link_error(c) for c in _chain(exc)):
            driver.close()
        raise


def _link_error(exc: BaseException) -> bool:
    """Whether ``exc`` is psycopg's OperationalError (or a subclass): the link, not a statement."""
    return any(
        k.__name__ == "OperationalError" and k.__module__.startswith("psycopg")
        for k in type(exc).__mro__
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """An exception and the ones it was raised from or during."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@contextlib.contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """A transaction on ``conn`` that takes the write lock up front (``BEGIN IMMEDIATE``).

    On PostgreSQL it takes the group's advisory lock, and reads the server's clock.
    """
    info = conn.info
    info[WRITE_FLAG] = True
    try:
        with conn.begin():
            yield conn
    finally:
        info[WRITE_FLAG] = False
        info.pop(SERVER_NOW, None)


@contextlib.contextmanager
def hot_write_transaction(conn: Connection) -> Iterator[Connection]:
    """``write_transaction`` for the claims, releases and discards of every acquire.

    On SQLite the driver's own ``BEGIN IMMEDIATE`` and ``COMMIT``, without SQLAlchemy's
    transaction objects and events, which cost about a tenth of an uncontended cycle. A Core
    statement executed inside makes SQLAlchemy begin a transaction of its own (its ``begin``
    event then emits nothing: the driver is in one already), which then commits or rolls back
    the driver's. The block must not call ``conn.begin()``: that would commit early.
    """
    if conn.dialect.name != "sqlite":
        with write_transaction(conn):
            yield conn
        return
    driver: Any = conn.connection.driver_connection
    info = conn.info
    info[WRITE_FLAG] = HOT
    try:
        driver.execute("BEGIN IMMEDIATE")
        yield conn
        if conn.in_transaction():
            conn.commit()
        else:
            driver_commit(driver)
    except BaseException:
        if conn.in_transaction():
            conn.rollback()
        elif driver.in_transaction:
            driver.execute("ROLLBACK")
        raise
    finally:
        info[WRITE_FLAG] = False


def driver_commit(driver: Any) -> None:
    """COMMIT the SQLite driver's open transaction (one name, for tests to interrupt)."""
    driver.execute("COMMIT")


@contextlib.contextmanager
def read_transaction(conn: Connection) -> Iterator[Connection]:
    """A read-only transaction: one consistent snapshot, no write lock."""
    conn.info[WRITE_FLAG] = False
    with conn.begin():
        yield conn


def data_version(conn: Connection) -> int:
    """SQLite's ``PRAGMA data_version``: changes whenever another connection commits.

    It takes no lock and costs microseconds (https://www.sqlite.org/pragma.html#pragma_data_version),
    so a waiter can look often and try a write transaction only when something changed.
    """
    cursor = conn.connection.cursor()  # the DBAPI cursor: no SQLAlchemy layers on this hot path
    try:
        cursor.execute("PRAGMA data_version")
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])
    finally:
        cursor.close()


def pragmas(conn: Connection) -> dict[str, Any]:
    """The pragmas in effect on ``conn`` (for ``doctor`` and the tests)."""
    return {
        name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        for name in ("journal_mode", "synchronous", "busy_timeout")
    }
