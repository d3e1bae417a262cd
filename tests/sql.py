"""Reading a test's database the way an operator would: sqlite3 for a file, psycopg for a server.

Independent of the limiter: plain driver connections, so a test's view of the rows does not
depend on the code under test.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

# For a test about SQLite files (the -wal and lock files, file permissions, a replaced file):
# it runs on the SQLite backend only.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def pg_connect(url: str) -> Any:
    """A psycopg connection (autocommit) to the group a test URL names, with its search path."""
    import psycopg

    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    schema = query.pop("schema", "collet_limiter")
    return psycopg.connect(
        host=query.get("host") or parts.hostname,
        port=int(query.get("port") or parts.port or 5432),
        user=parts.username,
        password=parts.password,
        dbname=parts.path.lstrip("/") or "postgres",
        autocommit=True,
        options=f"-c search_path={schema}",
    )


def rows(database: Path | str, query: str) -> list[tuple[object, ...]]:
    """Every row ``query`` returns, read with the database's own driver."""
    if isinstance(database, Path):
        with sqlite3.connect(database) as conn:
            return conn.execute(query).fetchall()
    with pg_connect(database) as conn:
        return [tuple(row) for row in conn.execute(query).fetchall()]


def execute(database: Path | str, statement: str) -> None:
    """Run one statement (committed) with the database's own driver."""
    if isinstance(database, Path):
        with sqlite3.connect(database) as conn:
            conn.execute(statement)
        return
    with pg_connect(database) as conn:
        conn.execute(statement)


def at_revision(path: Path, revision: str, *statements: str) -> None:
    """Make ``path`` a SQLite database at an older schema ``revision`` (the Alembic scripts up
    to it), then run ``statements`` in the same transaction: rows an older version wrote."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine

    from collet_limiter._migrate import migrations_dir

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            config = AlembicConfig()
            config.set_main_option("script_location", str(migrations_dir()))
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
