"""Create and upgrade the schema with the Alembic scripts in ``migrations/``, on open.

The fast path (an up-to-date database) is one SELECT and imports nothing from Alembic. Otherwise
the upgrade runs inside one write transaction (``BEGIN IMMEDIATE`` on SQLite, the group's
advisory lock on PostgreSQL): when many processes (on many hosts) open a brand-new database at
once, the first takes the write lock and creates the schema, and the others, once they get the
lock, find it current and do nothing. Each migration and its ``alembic_version`` row commit
together, since both databases' DDL is transactional. On PostgreSQL the group's schema is
created first, in the same transaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._engine import read_transaction, write_transaction
from ._errors import SchemaVersionError
from ._lite import sqlalchemy_connection
from ._schema import SCHEMA_REVISION

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


def migrations_dir() -> Path:
    """The Alembic script directory: inside the installed package, else the source checkout's."""
    packaged = Path(__file__).with_name("migrations")
    if (packaged / "env.py").exists():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    raise FileNotFoundError(  # a broken install, not a user error
        f"collet-limiter's migrations are missing (looked in {packaged} and {checkout})"
    )


def current_revision(conn: Connection) -> str | None:
    """The schema revision recorded in the database, None for a database without our schema."""
    if conn.dialect.name == "sqlite":  # the driver's cursor: no SQLAlchemy needed
        cursor = conn.connection.cursor()
        try:
            cursor.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            )
            if cursor.fetchone() is None:
                return None
            cursor.execute("SELECT version_num FROM alembic_version")
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else str(row[0])
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


def _alembic_config(conn: Connection) -> object:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = conn
    return config


def known_revisions() -> list[str]:
    """Every revision of the shipped scripts, oldest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(migrations_dir()))
    return [script.revision for script in reversed(list(scripts.walk_revisions()))]


def head_revision() -> str:
    """The newest revision of the shipped scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None
    return head


def _check_known(revision: str | None, *, display: str) -> None:
    if revision is not None and revision not in known_revisions():
        raise SchemaVersionError(
            f"database {display} has schema revision {revision!r}, written by a newer "
            f"collet-limiter (this one knows up to {SCHEMA_REVISION!r}); upgrade collet-limiter "
            "or use another database",
            path=display,
            revision=revision,
        )


def ensure_schema(conn: Connection, *, display: str, schema: str | None = None) -> bool:
    """Bring the schema to ``SCHEMA_REVISION``; True when this call changed it.

    ``schema`` is the PostgreSQL schema (limiter group) the connection's search path names.
    """
    with read_transaction(conn):
        revision = current_revision(conn)
    if revision == SCHEMA_REVISION:
        return False
    from alembic import command
    from sqlalchemy.schema import CreateSchema

    conn = sqlalchemy_connection(conn)  # Alembic runs on SQLAlchemy's
    with write_transaction(conn):
        revision = current_revision(conn)
        if revision == SCHEMA_REVISION:
            return False
        _check_known(revision, display=display)
        if schema is not None:
            conn.execute(CreateSchema(schema, if_not_exists=True))
        command.upgrade(_alembic_config(conn), "head")  # type: ignore[arg-type]
    return True
