"""Waking waiters on PostgreSQL: one ``LISTEN`` connection per limiter.

The counterpart of ``_wake.WakeSocket``. A limiter's tickets carry its channel name
(``collet_<owner>``) as their wake address; a transaction that frees room issues
``pg_notify(channel, ticket)`` for each waiter it admits, which the server delivers only when
that transaction commits, and only to the limiter whose waiter's turn came. The watcher thread
polls this connection's socket next to its pidfds and pipes.

The connection is opened on first use and reopened after it drops (a server restart, a network
failure): ``drain`` then returns None, meaning "notifications may have been missed", and the
watcher looks at the queue itself. A datagram-free design has the same rule as the socket one:
a notification is only a hint, the woken waiter reads its lease from the database.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ._core import log, monotonic

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class PgListener:
    """The ``LISTEN`` connection a limiter's waiters are woken through."""

    def __init__(
        self, engine: Engine, channel: str, *, retry_secs: float, enabled: bool = True
    ) -> None:
        # Disabled (``?listen=off``), the limiter's tickets carry no channel and it never
        # listens: its waiters poll, every poll interval, as when the connection is down.
        self.address = channel if enabled else None
        self._channel, self._enabled = channel, enabled
        self._engine = engine
        self._retry_secs = retry_secs
        self._pid = os.getpid()  # a forked child must not close its parent's connection
        self._raw: Any = None  # SQLAlchemy's pool-detached DBAPI connection
        self._pg: Any = None  # the psycopg connection inside it
        self._next_try = 0.0
        self.reconnected = False  # set when a (re)connect succeeded: notifications were missed

    @property
    def connected(self) -> bool:
        """Whether the channel is being listened to now."""
        return self._raw is not None

    def connect(self) -> bool:
        """Listen, unless already listening or a failed attempt was too recent; True if up."""
        if self._raw is not None:
            return True
        if not self._enabled or monotonic() < self._next_try:
            return False
        self._next_try = monotonic() + self._retry_secs
        raw: Any = None
        try:
            raw = self._engine.raw_connection()
            pg = raw.driver_connection
            raw.detach()  # never returned to the pool: it stays in LISTEN mode
            from psycopg import sql

            pg.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except Exception as exc:  # noqa: BLE001 - the database is down: the watcher polls
            log.debug("cannot listen for wake-ups on %s: %s", self._channel, exc)
            if raw is not None:
                with contextlib.suppress(Exception):
                    raw.close()
            return False
        self._raw, self._pg = raw, pg
        self.reconnected = True
        return True

    def fileno(self) -> int:
        """The connection's socket, or -1 while not listening (``poll`` then ignores it)."""
        if self._raw is None:
            return -1
        try:
            return int(self._pg.pgconn.socket)
        except Exception:  # noqa: BLE001 - a closed connection has no socket
            self._drop()
            return -1

    def drain(self) -> set[int] | None:
        """The tickets notified since the last call; None when the connection was lost."""
        if self._raw is None:
            return None
        pgconn = self._pg.pgconn
        tickets: set[int] = set()
        try:
            pgconn.consume_input()
            while (notice := pgconn.notifies()) is not None:
                with contextlib.suppress(ValueError):
                    tickets.add(int(notice.extra.decode()))
        except Exception as exc:  # noqa: BLE001 - psycopg's OperationalError: the link broke
            log.debug("wake-up connection for %s lost: %s", self._channel, exc)
            self._drop()
            return None
        return tickets

    def _drop(self) -> None:
        raw, self._raw, self._pg = self._raw, None, None
        # Closing sends the server a Terminate message on the socket, which a forked child shares
        # with its parent: the child only lets go (psycopg never closes it from the child).
        if raw is not None and os.getpid() == self._pid:
            with contextlib.suppress(Exception):
                raw.close()

    def close(self) -> None:
        """Stop listening and close the connection."""
        self._drop()
