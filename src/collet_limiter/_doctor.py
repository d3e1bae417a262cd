"""Read-only checks of a limiter database: what ``collet-limiter doctor`` reports.

Nothing here creates, migrates or writes anything. A SQLite file is opened read-only with the
standard library's ``sqlite3`` (``mode=ro``), so even a damaged file or a foreign SQLite database
is only looked at: a ``Limiter`` would switch a foreign file to WAL mode and write its schema.
On PostgreSQL the sessions are read-only (``default_transaction_read_only``); besides the group's
schema and contents, doctor reports the server's version, how far its clock is from this
host's, and whether a ``NOTIFY`` reaches a ``LISTEN`` session through this connection (waiters
are woken that way). A ``NOTIFY`` on a channel of its own changes nothing in the database.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import stat
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from . import _schema as s
from ._config import ENV_DB, default_db_path, load_config
from ._core import config_fingerprint
from ._engine import read_transaction, resolve_target
from ._errors import StorageError, translate_driver_errors
from ._files import NETWORK_FILESYSTEMS, filesystem_type
from ._migrate import known_revisions
from ._schema import SCHEMA_REVISION

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._engine import Target

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
# How long doctor waits for its NOTIFY to come back. Between two sessions on one server it
# arrives in milliseconds; through a pooler in transaction mode it never does, so waiting
# longer would only make a broken setup slower to report.
LISTEN_WAIT_SECS: Final = 2.0
# A clock difference worth a note: the ages and expiries a host computes from its own clock
# (before its limiter has learnt the server's) are off by this much.
CLOCK_NOTE_MS: Final = 1000.0
# ... and one that is a problem: a quarter of the lease TTL. Every lease time is the server's,
# but each limiter sets its expiry timers from this host's clock plus the offset its last write
# transaction saw; heartbeats renew at a third of the TTL, so past a quarter the margin they
# leave is mostly gone for a limiter that has not written yet, and the leases shown are wrong
# by a large part of their life.
CLOCK_PROBLEM_TTL_FRACTION: Final = 0.25


@dataclass(frozen=True, slots=True)
class Probe:
    """What a read-only look inside a SQLite file found."""

    revision: str | None  # None: no collet-limiter schema
    journal_mode: str
    meta: dict[str, str]
    counts: dict[str, int]  # rows of models, leases, waiters (empty without our schema)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    # mode=ro: SQLite never writes the file. It may create the -wal and -shm companions of a WAL
    # database that has none, as any reader would (https://www.sqlite.org/wal.html#readonly).
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5.0)
    try:
        yield conn
    finally:
        conn.close()


def probe(path: Path) -> Probe:
    """Look inside the SQLite file at ``path`` without writing; raises a ``StorageError``."""
    with translate_driver_errors(str(path)), _read_only(path) as conn:
        journal_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" not in tables:
            return Probe(None, journal_mode, {}, {})
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = None if row is None else str(row[0])
        meta: dict[str, str] = {}
        counts: dict[str, int] = {}
        if "meta" in tables:
            meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        for table in ("models", "leases", "waiters"):
            if table in tables:
                # The names come from the fixed tuple above, never from input.
                counts[table] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
        return Probe(revision, journal_mode, meta, counts)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The findings of ``diagnose``: facts about the database, problems, and notes.

    ``problems`` are what stops the database from working as it should (``ok`` is False when
    there are any); ``notes`` are worth knowing but harmless, such as a database that holds a
    config other than the one in use.
    """

    db: str
    exists: bool
    size: int | None
    is_database: bool | None
    schema_revision: str | None
    expected_revision: str
    journal_mode: str | None
    file_mode: str | None
    file_owner: str | None
    dir_mode: str | None
    filesystem: str | None
    network_filesystem: bool
    config_source: str
    config_fingerprint: str
    stored_fingerprint: str | None
    stored_config_source: str | None
    stored_config_written_at: str | None
    config_differs: bool | None  # None when the database holds no config yet
    max_agents: int | None
    models: int | None
    leases: int | None
    waiters: int | None
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    # PostgreSQL (None on SQLite); ``db`` is then the URL with its password hidden, ``exists``
    # says whether the group's schema exists, and the file facts above are None.
    backend: str = "sqlite"
    server: str | None = None  # host:port
    server_version: str | None = None
    schema: str | None = None  # the limiter group
    clock_offset_ms: float | None = None  # the server's clock minus this host's
    listen_notify: bool | None = None  # a NOTIFY reached a LISTEN session

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The findings as plain JSON-ready data (``collet-limiter doctor --json``)."""
        data = asdict(self)
        data["problems"] = list(self.problems)
        data["notes"] = list(self.notes)
        data["ok"] = self.ok
        return data


@dataclass
class _Findings:
    facts: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _directory_findings(mode: int, found: _Findings) -> None:
    # The same rule as opening: a directory anyone may write in is refused unless it is sticky.
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        found.problems.append(
            f"its directory is writable by every user and not sticky (mode {mode:04o}): anyone "
            "could replace the database, and a Limiter refuses to open it; use a private directory"
        )
    elif mode & stat.S_IWOTH:
        found.notes.append(
            f"its directory is writable by every user (sticky, mode {mode:04o}): others can "
            "create files next to it; a private directory is safer"
        )


def _file_findings(mode: int, uid: int, found: _Findings) -> None:
    if mode & stat.S_IWOTH:
        found.problems.append(
            f"the database file is writable by every user (mode {mode:04o}): any local process "
            "could take or drop permits; chmod o-w it"
        )
    elif mode & stat.S_IWGRP:
        found.notes.append(
            f"the database file is writable by its group (mode {mode:04o}): every member is "
            "trusted ([limiter] group shares it on purpose)"
        )
    if uid != os.geteuid():
        found.notes.append(
            f"the database belongs to {_owner(uid)}, not to you: whoever can write it decides "
            "the limits of every process that uses it"
        )


def resolve_db_target(db: str | os.PathLike[str] | None, config: Config) -> Target:
    """The database a Limiter with these arguments would use.

    ``db``, else ``$COLLET_LIMITER_DB``, else the config's ``[limiter] db``, else the default
    ``$XDG_STATE_HOME/collet-limiter/limiter.db``: the same order as ``Limiter``.
    """
    explicit = db if db is not None else (os.environ.get(ENV_DB) or config.limiter.db)
    return resolve_target(explicit or default_db_path())


def diagnose(
    db: str | os.PathLike[str] | None = None, *, config: Config | None = None
) -> Diagnosis:
    """Check a limiter database without changing it.

    Reports whether it exists and is a SQLite database, its schema revision, journal mode, file
    permissions and filesystem, and whether the config it holds differs from ``config`` (default
    ``load_config()``). On PostgreSQL: whether the server can be reached and the group's schema
    exists, its revision, the server's version, its clock against this host's, and whether
    ``LISTEN``/``NOTIFY`` works through the connection. ``db`` is resolved as ``Limiter``
    does. Problems are findings, not exceptions: only a bad ``db`` or ``config`` argument
    raises (``ConfigError``).
    """
    config = config if config is not None else load_config()
    target = resolve_db_target(db, config)
    source = config.origin
    fingerprint = config_fingerprint(config, config.model_rows())
    found = _Findings(dict.fromkeys(_FACTS))
    if target.path is None:
        return _diagnose_server(target, config, fingerprint, found)
    path = target.path
    parent = path.parent
    if parent.is_dir():
        dir_mode = stat.S_IMODE(parent.stat().st_mode)
        found.facts["dir_mode"] = f"{dir_mode:04o}"
        _directory_findings(dir_mode, found)
    else:
        found.problems.append(f"its directory {parent} does not exist")
    exists = path.is_file()
    if path.exists() and not exists:
        found.problems.append("the path exists but is not a regular file")
    elif not exists:
        found.problems.append(
            "the database does not exist yet: 'collet-limiter init' creates it (so does the "
            "first acquire)"
        )
    else:
        info = path.stat()
        mode = stat.S_IMODE(info.st_mode)
        found.facts.update(
            size=info.st_size, file_mode=f"{mode:04o}", file_owner=_owner(info.st_uid)
        )
        _file_findings(mode, info.st_uid, found)
        _inspect_contents(path, fingerprint, source, found)
    fs_type = filesystem_type(path if exists else parent) if parent.is_dir() else None
    network = fs_type is not None and fs_type.lower() in NETWORK_FILESYSTEMS
    if network:
        found.problems.append(
            f"it is on a network filesystem ({fs_type}): SQLite's WAL mode needs a local one "
            "(shared memory and POSIX locks), so limits may not hold"
        )
    return Diagnosis(
        db=str(path),
        exists=exists,
        expected_revision=SCHEMA_REVISION,
        filesystem=fs_type,
        network_filesystem=network,
        config_source=source,
        config_fingerprint=fingerprint,
        problems=tuple(found.problems),
        notes=tuple(found.notes),
        **found.facts,
    )


# The Diagnosis fields that _inspect_contents may fill in (None when it cannot tell).
_FACTS: Final = (
    "size",
    "is_database",
    "schema_revision",
    "journal_mode",
    "file_mode",
    "file_owner",
    "dir_mode",
    "stored_fingerprint",
    "stored_config_source",
    "stored_config_written_at",
    "config_differs",
    "max_agents",
    "models",
    "leases",
    "waiters",
)


def _inspect_contents(path: Path, fingerprint: str, source: str, found: _Findings) -> None:
    facts, problems = found.facts, found.problems
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if header and header != _SQLITE_HEADER:
        facts["is_database"] = False
        problems.append("the file is not a SQLite database; move it away or choose another --db")
        return
    try:
        inside = probe(path)
    except StorageError as exc:
        facts["is_database"] = False
        problems.append(f"cannot read it: {exc}")
        return
    facts.update(is_database=True, journal_mode=inside.journal_mode)
    if not _schema_findings(inside, fingerprint, source, found):
        return
    if inside.journal_mode != "wal":
        problems.append(
            f"journal mode is {inside.journal_mode}, not wal: readers would block writers; any "
            "Limiter opening it switches it back"
        )


def _schema_findings(inside: Probe, fingerprint: str, source: str, found: _Findings) -> bool:
    """The schema revision and the config the database holds; False without our schema."""
    facts, problems = found.facts, found.problems
    facts["schema_revision"] = inside.revision
    if inside.revision is None:
        problems.append(
            "it holds no collet-limiter schema: 'collet-limiter init' creates it (if this is "
            "another program's database, choose another --db)"
        )
        return False
    if inside.revision != SCHEMA_REVISION:
        if inside.revision in known_revisions():
            problems.append(
                f"schema {inside.revision} is older than {SCHEMA_REVISION}: 'collet-limiter "
                "init' upgrades it"
            )
        else:
            problems.append(
                f"schema {inside.revision} was written by a newer collet-limiter (this one knows "
                f"up to {SCHEMA_REVISION}): upgrade collet-limiter"
            )
    meta = inside.meta
    stored = meta.get(s.META_FINGERPRINT)
    cap = meta.get(s.META_MAX_AGENTS)
    facts.update(
        stored_fingerprint=stored,
        stored_config_source=meta.get(s.META_CONFIG_SOURCE),
        stored_config_written_at=meta.get(s.META_CONFIG_WRITTEN_AT),
        config_differs=None if stored is None else stored != fingerprint,
        max_agents=int(cap) if cap is not None and cap.isdigit() else None,
        models=inside.counts.get("models"),
        leases=inside.counts.get("leases"),
        waiters=inside.counts.get("waiters"),
    )
    if stored is not None and stored != fingerprint:
        found.notes.append(
            f"the database holds another config (from {facts['stored_config_source']}, written "
            f"{facts['stored_config_written_at']}) than the one in use ({source}); every process "
            "obeys the database's until one opens a Limiter with another ('collet-limiter init' "
            "writes the one in use)"
        )
    return True


# --- PostgreSQL ------------------------------------------------------------------------------


def clock_verdict(offset_ms: float, ttl_secs: float) -> tuple[str, str] | None:
    """``("problem" | "note", message)`` for a clock difference, or None when it is harmless."""
    distance = abs(offset_ms)
    direction = "ahead of" if offset_ms > 0 else "behind"
    said = f"the server's clock is {distance:.0f} ms {direction} this host's"
    if distance > ttl_secs * 1000 * CLOCK_PROBLEM_TTL_FRACTION:
        return (
            "problem",
            (
                f"{said}, more than a quarter of the lease TTL ({ttl_secs:g}s): lease ages and "
                "expiry timers computed on this host are off by that much; synchronize the "
                "clocks (chrony, systemd-timesyncd)"
            ),
        )
    if distance > CLOCK_NOTE_MS:
        return (
            "note",
            (
                f"{said}: lease times are the server's, so limits hold, but synchronizing the "
                "clocks keeps the times this host shows right"
            ),
        )
    return None


def clock_offset_ms(conn: Connection) -> float:
    """The server's clock minus this host's, in ms, from the fastest of three round trips."""
    best: tuple[float, float] | None = None
    for _ in range(3):
        before = time.time()
        value: Any = conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar()
        after = time.time()
        # The server read its clock somewhere in the round trip; its middle is the best guess,
        # wrong by at most half the round trip, so the shortest one is kept.
        offset = float(value) - (before + after) / 2
        if best is None or after - before < best[0]:
            best = (after - before, offset)
    assert best is not None
    return round(best[1] * 1000, 1) + 0.0  # + 0.0: never -0.0


def listen_notify_works(engine: Engine) -> tuple[bool, str]:
    """Whether a ``NOTIFY`` from one session reaches another that ``LISTEN``s; and what happened.

    Two sessions of ``engine``, as a releasing limiter and a waiting one would use, on a channel
    of their own (nobody else listens to it, and nothing is written).
    """
    channel = f"collet_doctor_{uuid.uuid4().hex[:16]}"
    payload = uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        try:
            listener = stack.enter_context(contextlib.closing(engine.raw_connection()))
            sender = stack.enter_context(contextlib.closing(engine.raw_connection()))
            listening: Any = listener.driver_connection
            sending: Any = sender.driver_connection
            listening.execute(f'LISTEN "{channel}"')
            started = time.monotonic()
            sending.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            # (The generator holds the connection: no statement on it until the loop ends.)
            arrived = [
                (time.monotonic() - started) * 1000
                for notice in listening.notifies(timeout=LISTEN_WAIT_SECS, stop_after=1)
                if notice.channel == channel and notice.payload == payload
            ]
            listening.execute(f'UNLISTEN "{channel}"')
            if arrived:
                return True, f"a NOTIFY arrived in {arrived[0]:.0f} ms"
        except Exception as exc:  # noqa: BLE001 - psycopg's or SQLAlchemy's error: a finding
            return False, " ".join(str(getattr(exc, "orig", None) or exc).split())
    return False, f"no NOTIFY arrived within {LISTEN_WAIT_SECS:g}s"


def _probe_server(conn: Connection, target: Target) -> Probe | None:
    """Look inside a limiter group's schema; None when the schema does not exist."""
    from sqlalchemy import text

    from ._inspect import group_exists, stored_revision

    assert target.schema is not None
    if not group_exists(conn, target.schema):
        return None
    with read_transaction(conn):
        tables = {
            str(name)
            for (name,) in conn.execute(
                text("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = :schema"),
                {"schema": target.schema},
            )
        }
    if "alembic_version" not in tables:
        return Probe(None, "", {}, {})
    revision = stored_revision(conn, target)
    with read_transaction(conn):
        meta: dict[str, str] = {}
        counts: dict[str, int] = {}
        if "meta" in tables:
            meta = {str(k): str(v) for k, v in conn.exec_driver_sql("SELECT key, value FROM meta")}
        for table in ("models", "leases", "waiters"):
            if table in tables:
                # The names come from the fixed tuple above, never from input.
                count = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()  # noqa: S608
                counts[table] = int(count or 0)
    return Probe(revision, "", meta, counts)


def _diagnose_server(
    target: Target, config: Config, fingerprint: str, found: _Findings
) -> Diagnosis:
    from sqlalchemy.exc import DBAPIError

    from ._inspect import cannot_connect, create_inspect_engine

    assert target.schema is not None
    settings = config.limiter
    server: dict[str, Any] = {}
    exists = False
    engine = create_inspect_engine(target, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        with translate_driver_errors(target.display):
            try:
                conn = engine.connect()
            except DBAPIError as exc:
                raise cannot_connect(target, exc) from exc
            with conn:
                with read_transaction(conn):
                    version = conn.exec_driver_sql("SHOW server_version").scalar()
                    offset = server["clock_offset_ms"] = clock_offset_ms(conn)
                server["server_version"] = str(version)
                inside = _probe_server(conn, target)
        works, how = listen_notify_works(engine)
        server["listen_notify"] = works
    except StorageError as exc:
        found.problems.append(str(exc))
    else:
        verdict = clock_verdict(offset, settings.lease_ttl_secs)
        if verdict is not None:
            (found.problems if verdict[0] == "problem" else found.notes).append(verdict[1])
        if not works:
            found.problems.append(
                f"LISTEN/NOTIFY does not work through this connection ({how}; a connection "
                "pooler in transaction mode drops notifications): waiters are then only woken "
                "by polling, every poll_interval_ms; connect to the server directly or through "
                "a pooler in session mode"
            )
        exists = inside is not None
        if inside is None:
            found.problems.append(
                f"the limiter group (schema {target.schema!r}) does not exist yet: "
                "'collet-limiter init' creates it (so does the first acquire)"
            )
        else:
            _schema_findings(inside, fingerprint, config.origin, found)
    finally:
        engine.dispose()
    return Diagnosis(
        db=target.display,
        exists=exists,
        expected_revision=SCHEMA_REVISION,
        filesystem=None,
        network_filesystem=False,
        config_source=config.origin,
        config_fingerprint=fingerprint,
        problems=tuple(found.problems),
        notes=tuple(found.notes),
        backend="postgresql",
        server=target.host,
        schema=target.schema,
        **server,
        **found.facts,
    )
