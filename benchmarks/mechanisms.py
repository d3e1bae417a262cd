"""The mechanisms the benchmark compares: collet-limiter (sync, async) and its peers.

Each is a blocking counting semaphore of ``limit`` slots shared by processes: ``acquire()``
blocks until a slot is held, ``release()`` gives it back. collet-limiter runs on a SQLite file
and on PostgreSQL (a server the benchmark starts with its default durability, over its Unix
socket; collet-limiter's own sessions commit with ``synchronous_commit`` off). The peers are what a
user would otherwise pick: a kernel POSIX named semaphore (the physical floor), the stdlib
sqlite3 with a lease table and a 5 ms poll, portalocker's file-lock BoundedSemaphore with a 5 ms
poll, a Redis token list with BLPOP (server push), and the sqlite3 peer's design on PostgreSQL
with bare psycopg (the floor for a lease table on that server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Final, Protocol

POLL = 0.005  # the peers' poll interval, as in the issue's table


class Slot(Protocol):
    """One process's handle on a shared semaphore."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


class ColletSync:
    """collet-limiter's sync Limiter, one model of ``limit`` slots (and a cap that fits)."""

    HISTORY = True  # [limiter] history: write the events table

    def __init__(self, params: dict[str, Any]) -> None:
        from collet_limiter import Config, Limiter

        config = Config.model_validate(
            {
                "collaboration": {"max_agents": 64},
                "models": [{"name": "m", "concurrency_limit": params["limit"]}],
                # Only when off: an older collet-limiter (history_cost.py --baseline) has no key.
                "limiter": {} if self.HISTORY else {"history": False},
            }
        )
        self.limiter = Limiter(
            params["db"], config=config, poll_interval=params.get("poll_interval")
        )
        self.lease: Any = None

    def acquire(self) -> None:
        self.lease = self.limiter.acquire_wait("bench/m")

    def release(self) -> None:
        self.lease.release()

    def close(self) -> None:
        self.limiter.close()


class ColletSyncNoHistory(ColletSync):
    """The same with ``[limiter] history = false``: what writing the history costs."""

    HISTORY = False


class ColletAsync:
    """collet-limiter's AsyncLimiter, driven from a blocking loop in the worker."""

    def __init__(self, params: dict[str, Any]) -> None:
        from collet_limiter import AsyncLimiter, Config

        config = Config.model_validate(
            {
                "collaboration": {"max_agents": 64},
                "models": [{"name": "m", "concurrency_limit": params["limit"]}],
            }
        )
        self.loop = asyncio.new_event_loop()
        self.limiter = AsyncLimiter(
            params["db"], config=config, poll_interval=params.get("poll_interval")
        )
        self.loop.run_until_complete(self.limiter.open())
        self.lease: Any = None

    def acquire(self) -> None:
        self.lease = self.loop.run_until_complete(self.limiter.acquire_wait("bench/m"))

    def release(self) -> None:
        self.loop.run_until_complete(self.lease.release())

    def close(self) -> None:
        self.loop.run_until_complete(self.limiter.close())
        self.loop.close()


class Sqlite3Poll:
    """stdlib sqlite3, a lease table like ours, BEGIN IMMEDIATE, polling every 5 ms."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.limit = params["limit"]
        self.conn = sqlite3.connect(
            params["db"], timeout=10, isolation_level=None, check_same_thread=False
        )
        # Switching a new file to WAL takes an exclusive lock without SQLite's busy handler, so
        # workers opening at once retry it themselves.
        for attempt in range(1000):
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 999:
                    raise
                time.sleep(0.001)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS peer_leases (id INTEGER PRIMARY KEY, pid INTEGER)"
        )
        self.lease_id: int | None = None

    def acquire(self) -> None:
        while True:
            self.conn.execute("BEGIN IMMEDIATE")
            (held,) = self.conn.execute("SELECT count(*) FROM peer_leases").fetchone()
            if held < self.limit:
                cursor = self.conn.execute(
                    "INSERT INTO peer_leases (pid) VALUES (?)", (os.getpid(),)
                )
                self.lease_id = cursor.lastrowid
                self.conn.execute("COMMIT")
                return
            self.conn.execute("COMMIT")
            time.sleep(POLL)

    def release(self) -> None:
        self.conn.execute("DELETE FROM peer_leases WHERE id = ?", (self.lease_id,))

    def close(self) -> None:
        self.conn.close()


class ProtocolFloor:
    """collet-limiter's protocol with nothing else, on the stdlib sqlite3 driver.

    What the sync face does on every acquire and release, minus everything that is not the
    protocol itself (our Python, SQLAlchemy, the history, holder identity, expiry, fallback,
    fairness across models): a writer ``flock`` around each ``BEGIN IMMEDIATE`` transaction; a
    claim that takes a lease when the model has room and nobody queues, or else queues a ticket
    carrying its wake-up address; a release that deletes its lease and, in the same transaction,
    grants the freed room to the oldest tickets (their leases inserted, tickets deleted), then
    sends each a datagram after COMMIT and after the flock is given back; a woken waiter that
    trusts no datagram and reads its lease without a lock. A thread blocked on the socket wakes
    the caller through a ``threading.Event``, as the limiter's watcher does (``DIRECT``: the
    caller waits on the socket itself, which a limiter with many waiters per process cannot).
    It is the floor under our figures for this design in Python on this machine, not a peer.
    """

    DIRECT = False
    BACKSTOP = 0.25  # s: a wait with no datagram claims at the head (a lost datagram's cure)

    def __init__(self, params: dict[str, Any]) -> None:
        import fcntl
        import socket
        import threading
        import uuid

        self._flock, self._unlock = (
            lambda fd: fcntl.flock(fd, fcntl.LOCK_EX),
            lambda fd: fcntl.flock(fd, fcntl.LOCK_UN),
        )
        self.limit = params["limit"]
        self.lock_fd = os.open(params["db"] + ".floor-lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.conn = sqlite3.connect(
            params["db"], timeout=10, isolation_level=None, check_same_thread=False
        )
        self._flock(self.lock_fd)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS floor_leases "
                "(id INTEGER PRIMARY KEY, model TEXT NOT NULL, token TEXT NOT NULL UNIQUE)"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS floor_tickets (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "model TEXT NOT NULL, token TEXT NOT NULL, address BLOB NOT NULL)"
            )
        finally:
            self._unlock(self.lock_fd)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.address = b"\0collet-floor/" + uuid.uuid4().hex.encode()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)  # noqa: FBT003
        self.new_token = lambda: uuid.uuid4().hex
        self.token = ""
        self.woken = threading.Event()
        if self.DIRECT:
            self.sock.settimeout(self.BACKSTOP)
        else:
            threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                self.sock.recv(64)
            except OSError:
                return
            self.woken.set()

    def _write(self, func: Any) -> Any:
        self._flock(self.lock_fd)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                result = func()
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            return result
        finally:
            self._unlock(self.lock_fd)

    def _held(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM floor_leases WHERE model = 'm'").fetchone()
        return int(row[0])

    def acquire(self) -> None:
        token = self.new_token()

        def claim() -> bool:
            queued = self.conn.execute("SELECT 1 FROM floor_tickets LIMIT 1").fetchone()
            if queued is None and self._held() < self.limit:
                self.conn.execute(
                    "INSERT INTO floor_leases (model, token) VALUES ('m', ?)", (token,)
                )
                return True
            self.conn.execute(
                "INSERT INTO floor_tickets (model, token, address) VALUES ('m', ?, ?)",
                (token, self.address),
            )
            return False

        def at_head() -> bool:
            if self._granted(token):
                return True
            first = self.conn.execute("SELECT token FROM floor_tickets ORDER BY id LIMIT 1")
            if first.fetchone() != (token,) or self._held() >= self.limit:
                return False
            self.conn.execute("DELETE FROM floor_tickets WHERE token = ?", (token,))
            self.conn.execute("INSERT INTO floor_leases (model, token) VALUES ('m', ?)", (token,))
            return True

        granted = self._write(claim)
        while not granted:
            granted = self._granted(token) if self._wait() else self._write(at_head)
        self.token = token

    def _wait(self) -> bool:
        """Wait for a datagram; False after ``BACKSTOP`` seconds without one."""
        if self.DIRECT:
            try:
                self.sock.recv(64)
            except TimeoutError:
                return False
            return True
        woken = self.woken.wait(self.BACKSTOP)
        self.woken.clear()
        return woken

    def _granted(self, token: str) -> bool:
        found = self.conn.execute("SELECT 1 FROM floor_leases WHERE token = ?", (token,))
        return found.fetchone() is not None

    def release(self) -> None:
        def release() -> list[bytes]:
            self.conn.execute("DELETE FROM floor_leases WHERE token = ?", (self.token,))
            room = self.limit - self._held()
            if room <= 0:
                return []
            rows = self.conn.execute(
                "SELECT id, token, address FROM floor_tickets WHERE model = 'm' "
                "ORDER BY id LIMIT ?",
                (room,),
            ).fetchall()
            for ticket, token, _address in rows:
                self.conn.execute("DELETE FROM floor_tickets WHERE id = ?", (ticket,))
                self.conn.execute(
                    "INSERT INTO floor_leases (model, token) VALUES ('m', ?)", (token,)
                )
            return [address for _ticket, _token, address in rows]

        for address in self._write(release):
            with contextlib.suppress(OSError):
                self.sender.sendto(b"w", address)

    def close(self) -> None:
        self.sock.close()
        self.sender.close()
        self.conn.close()
        os.close(self.lock_fd)


class ProtocolFloorDirect(ProtocolFloor):
    """``ProtocolFloor`` with the caller waiting on the socket itself: no thread hop."""

    DIRECT = True


class PsycopgPoll:
    """Bare psycopg 3 on PostgreSQL: the sqlite3 peer's lease table, an advisory lock in place
    of BEGIN IMMEDIATE, polling every 5 ms; four round trips to claim, one to release."""

    def __init__(self, params: dict[str, Any]) -> None:
        import psycopg

        self.limit = params["limit"]
        self.conn = psycopg.connect(**params["pg"], autocommit=True)
        self.lease_id: int | None = None

    def acquire(self) -> None:
        while True:
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT pg_advisory_xact_lock(7)")
            held = self.conn.execute("SELECT count(*) FROM peer_leases").fetchone()
            if held is not None and held[0] < self.limit:
                row = self.conn.execute(
                    "INSERT INTO peer_leases (pid) VALUES (%s) RETURNING id", (os.getpid(),)
                ).fetchone()
                self.conn.execute("COMMIT")
                self.lease_id = row[0] if row else None
                return
            self.conn.execute("COMMIT")
            time.sleep(POLL)

    def release(self) -> None:
        self.conn.execute("DELETE FROM peer_leases WHERE id = %s", (self.lease_id,))

    def close(self) -> None:
        self.conn.close()


class Portalocker:
    """portalocker.BoundedSemaphore: one lock file per slot, polled every 5 ms."""

    def __init__(self, params: dict[str, Any]) -> None:
        import portalocker

        self.semaphore = portalocker.BoundedSemaphore(
            params["limit"],
            name="bench",
            directory=params["dir"],
            timeout=None,
            check_interval=POLL,
            fail_when_locked=False,
        )

    def acquire(self) -> None:
        self.semaphore.acquire(timeout=3600)

    def release(self) -> None:
        self.semaphore.release()

    def close(self) -> None:
        """Nothing to close."""


class PosixSemaphore:
    """A kernel POSIX named semaphore: what the hardware and kernel allow, nothing more."""

    def __init__(self, params: dict[str, Any]) -> None:
        import posix_ipc

        self.semaphore = posix_ipc.Semaphore(
            params["sem"], posix_ipc.O_CREAT, initial_value=params["limit"]
        )

    def acquire(self) -> None:
        self.semaphore.acquire()

    def release(self) -> None:
        self.semaphore.release()

    def close(self) -> None:
        self.semaphore.close()


class RedisTokens:
    """A Redis list of ``limit`` tokens: BLPOP takes one (pushed), RPUSH returns it."""

    def __init__(self, params: dict[str, Any]) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=params["redis_port"])
        self.token: bytes | None = None

    def acquire(self) -> None:
        _, self.token = self.client.blpop(["bench:tokens"], timeout=0)  # type: ignore[misc]

    def release(self) -> None:
        self.client.rpush("bench:tokens", self.token)  # type: ignore[arg-type]

    def close(self) -> None:
        self.client.close()


def refuse_listen() -> None:
    """Make this process's PostgreSQL LISTEN connection impossible: its waiters then poll.

    collet-limiter has no public switch for this. A limiter whose LISTEN connection cannot be
    opened (the server refuses it, the network is down) falls back, as documented in
    ``collet_limiter._pglisten`` and ``_watcher.Watcher._changed``, to looking at the queue
    every ``poll_interval`` and to retrying the connection; failing ``PgListener.connect``
    here reproduces exactly that state, and touches nothing else of the library. Call it in a
    worker process only, before its limiter opens.
    """
    from collet_limiter import _pglisten

    def connect(_self: Any) -> bool:
        return False

    _pglisten.PgListener.connect = connect  # type: ignore[method-assign]


MECHANISMS: dict[str, type[Any]] = {
    "collet-limiter (sync)": ColletSync,
    "collet-limiter (async)": ColletAsync,
    "collet-limiter (sync, PostgreSQL)": ColletSync,
    "collet-limiter (async, PostgreSQL)": ColletAsync,
    "collet-limiter (sync, no history)": ColletSyncNoHistory,
    "protocol floor (sqlite3, watcher thread)": ProtocolFloor,
    "protocol floor (sqlite3, direct wait)": ProtocolFloorDirect,
    "sqlite3, 5 ms poll": Sqlite3Poll,
    "portalocker, 5 ms poll": Portalocker,
    "POSIX semaphore": PosixSemaphore,
    "Redis BLPOP": RedisTokens,
    "psycopg, 5 ms poll (PostgreSQL)": PsycopgPoll,
}


# Run only when named with --only: the price of a feature, not a peer.
OPTIONAL: Final = (
    "collet-limiter (sync, no history)",
    "protocol floor (sqlite3, watcher thread)",
    "protocol floor (sqlite3, direct wait)",
)


# The collet-limiter mechanisms on PostgreSQL, and the role each connects as.
POSTGRES: dict[str, str] = {
    "collet-limiter (sync, PostgreSQL)": "postgres",
    "collet-limiter (async, PostgreSQL)": "postgres",
}


# The peers on PostgreSQL: they run with collet-limiter's PostgreSQL rows.
POSTGRES_PEERS: Final = ("psycopg, 5 ms poll (PostgreSQL)",)


def backend(name: str) -> str:
    """Which ``--backends`` choice a mechanism belongs to: sqlite, postgresql or peers."""
    if name in POSTGRES or name in POSTGRES_PEERS:
        return "postgresql"
    return "sqlite" if name.startswith("collet-limiter") else "peers"


# The peers' client libraries (the `bench` extra); a mechanism whose library is missing is skipped.
NEEDS: dict[str, str] = {
    "portalocker, 5 ms poll": "portalocker",
    "POSIX semaphore": "posix_ipc",
    "Redis BLPOP": "redis",
}


def prepare(
    name: str, workdir: Path, limit: int, redis_port: int | None, pg: Any = None
) -> dict[str, Any]:
    """Fresh shared state for one mechanism and one workload; returns the workers' params.

    ``pg``: the started ``tests.pgserver.PgServer`` (for the PostgreSQL mechanisms), on which
    each workload gets a schema (limiter group) of its own.
    """
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    params: dict[str, Any] = {
        "limit": limit,
        "db": str(workdir / f"{tag}.db"),
        "dir": str(workdir / f"locks-{tag}"),
        "sem": f"/collet-bench-{tag}",
        "redis_port": redis_port,
    }
    Path(params["dir"]).mkdir()
    if backend(name) == "postgresql":
        params["schema"] = schema = f"bench_{tag.replace('-', '_')}"
        role = POSTGRES.get(name, "postgres")
        params["db"] = (
            f"postgresql+psycopg://{role}@/postgres"
            f"?host={pg.sockets}&port={pg.port}&schema={schema}"
        )
        params["pg"] = {
            "host": str(pg.sockets),
            "port": pg.port,
            "user": role,
            "dbname": "postgres",
            "options": f"-c search_path={schema}",
        }
    if name in POSTGRES_PEERS:
        pg.psql(
            f"CREATE SCHEMA {params['schema']}; "
            f"CREATE TABLE {params['schema']}.peer_leases (id BIGSERIAL PRIMARY KEY, pid INTEGER)"
        )
    if name == "POSIX semaphore":
        import posix_ipc

        posix_ipc.Semaphore(params["sem"], posix_ipc.O_CREX, initial_value=limit).close()
    elif name == "Redis BLPOP":
        import redis

        client = redis.Redis(host="127.0.0.1", port=redis_port)
        client.delete("bench:tokens")
        client.rpush("bench:tokens", *[f"t{i}" for i in range(limit)])
        client.close()
    elif name.startswith(("collet-limiter", "protocol floor")):
        MECHANISMS[name](params).close()  # create the schema outside the measurement
    return params


def cleanup(name: str, params: dict[str, Any], pg: Any = None) -> None:
    """Remove what ``prepare`` created that outlives the process (a semaphore, a schema)."""
    if backend(name) == "postgresql":
        pg.psql(f"DROP SCHEMA IF EXISTS {params['schema']} CASCADE")
    elif name == "POSIX semaphore":
        import posix_ipc

        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(params["sem"])
