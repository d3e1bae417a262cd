"""Read-only checks of a limiter database: what ``collet-limiter doctor`` reports.

Nothing here creates, migrates or writes anything. The database is opened read-only with the
standard library's ``sqlite3`` (``mode=ro``), so even a damaged file or a foreign SQLite database
is only looked at: a ``Limiter`` would switch a foreign file to WAL mode and write its schema.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
import stat
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from . import _schema as s
from ._config import ENV_DB, default_db_path, load_config
from ._core import config_fingerprint
from ._engine import resolve_target
from ._errors import ConfigError, StorageError, translate_driver_errors
from ._files import NETWORK_FILESYSTEMS, filesystem_type
from ._migrate import known_revisions
from ._schema import SCHEMA_REVISION

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from ._config import Config

_SQLITE_HEADER: Final = b"SQLite format 3\x00"


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


def resolve_db_path(db: str | os.PathLike[str] | None, config: Config) -> Path:
    """The database file a Limiter with these arguments would use (SQLite only).

    ``db``, else ``$COLLET_LIMITER_DB``, else the config's ``[limiter] db``, else the default
    ``$XDG_STATE_HOME/collet-limiter/limiter.db``: the same order as ``Limiter``.
    """
    explicit = db if db is not None else (os.environ.get(ENV_DB) or config.limiter.db)
    target = resolve_target(explicit or default_db_path())
    if target.path is None:
        raise ConfigError(
            f"{target.display}: only SQLite databases can be inspected by this version",
            path=target.display,
        )
    return target.path


def diagnose(
    db: str | os.PathLike[str] | None = None, *, config: Config | None = None
) -> Diagnosis:
    """Check a limiter database without changing it.

    Reports whether it exists and is a SQLite database, its schema revision, journal mode, file
    permissions and filesystem, and whether the config it holds differs from ``config`` (default
    ``load_config()``). ``db`` is resolved as ``Limiter`` does. Problems are findings, not
    exceptions: only a bad ``db`` or ``config`` argument raises (``ConfigError``).
    """
    config = config if config is not None else load_config()
    path = resolve_db_path(db, config)
    source = config.origin
    fingerprint = config_fingerprint(config, config.model_rows())
    found = _Findings(dict.fromkeys(_FACTS))
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
    facts.update(
        is_database=True, journal_mode=inside.journal_mode, schema_revision=inside.revision
    )
    if inside.revision is None:
        problems.append(
            "it holds no collet-limiter schema: 'collet-limiter init' creates it (if this is "
            "another program's database, choose another --db)"
        )
        return
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
    if inside.journal_mode != "wal":
        problems.append(
            f"journal mode is {inside.journal_mode}, not wal: readers would block writers; any "
            "Limiter opening it switches it back"
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
