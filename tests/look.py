"""The state machines' own view of the tables: one plain driver connection, kept open.

The machines read the tables after every step (and the faces machine at every poll while a step
settles), so they keep one autocommit connection rather than open one per query as ``tests/sql.py``
does; it is the same independent driver (sqlite3 for a file, psycopg via ``sql.pg_connect`` for a
group on a server), never the limiter's code.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .sql import pg_connect


class Look:
    """An autocommit connection; queries are written with ``?`` placeholders for both drivers."""

    def __init__(self, database: Path | str) -> None:
        self.is_sqlite = isinstance(database, Path)
        if isinstance(database, Path):
            self.conn: Any = sqlite3.connect(database, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 10000")
        else:
            self.conn = pg_connect(database)

    def execute(self, query: str, params: tuple[object, ...] = ()) -> Any:
        """Run ``query``; returns the cursor (``fetchone``, ``fetchall``, iteration)."""
        if not self.is_sqlite:
            query = query.replace("?", "%s")  # psycopg's placeholder; no query here has a '%'
        return self.conn.execute(query, params)

    def last_ticket_id(self) -> int:
        """The id the waiters table handed out last (AUTOINCREMENT's or the sequence's)."""
        if self.is_sqlite:
            query = "SELECT seq FROM sqlite_sequence WHERE name = 'waiters'"
        else:
            query = "SELECT last_value FROM waiters_id_seq"
        (last,) = self.execute(query).fetchone()
        return int(last)

    def close(self) -> None:
        self.conn.close()
