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
    "sqlite3, 5 ms poll": Sqlite3Poll,
    "portalocker, 5 ms poll": Portalocker,
    "POSIX semaphore": PosixSemaphore,
    "Redis BLPOP": RedisTokens,
    "psycopg, 5 ms poll (PostgreSQL)": PsycopgPoll,
}


# Run only when named with --only: the price of a feature, not a peer.
OPTIONAL: Final = ("collet-limiter (sync, no history)",)


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
    elif name.startswith("collet-limiter"):
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
