"""``Limiter``: the synchronous facade, its polling waiter and its heartbeat thread."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING

from ._core import Core, log, monotonic
from ._engine import create_sqlite_engine, data_version
from ._errors import ConfigError, LimiterClosedError, translate_driver_errors
from ._lease import BaseLease
from ._results import Acquired, QueueWait

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._store import ClaimRequest, ClaimResult, LeaseRecord

_LIVE: weakref.WeakSet[Limiter] = weakref.WeakSet()


class Lease(BaseLease):
    """A permit for one call on ``lease.key``; release it, or use it as a context manager.

    A lease is advisory: it is a row that other processes respect. A holder that stalls for
    longer than the lease TTL (SIGSTOP, a frozen VM) may find its lease reclaimed; the
    heartbeat then marks it ``lost`` and logs a warning, and its release does nothing.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: Limiter, record: LeaseRecord) -> None:
        super().__init__(record)
        self._limiter = limiter

    def release(self) -> None:
        """Give the slot back. Idempotent; a no-op for a lost lease or in a forked child."""
        if self._begin_release():
            self._limiter._release(self)  # noqa: SLF001 - the lease's own limiter

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Limiter:
    """Per-model concurrency limits shared by every process that opens the same database.

    ``db`` is a path or a SQLAlchemy URL; when omitted, ``$COLLET_LIMITER_DB``, then the config's
    ``[limiter] db``, then ``$XDG_STATE_HOME/collet-limiter/limiter.db``. ``config`` defaults to
    ``load_config()`` (``$COLLET_LIMITER_CONFIG`` or built-in defaults). ``clock`` returns seconds
    since the epoch and drives lease expiry (tests pass a fake one); waiting and timeouts use
    real time. Opening creates or upgrades the schema and writes the config's models and global
    cap when they differ from what the database holds: the last config written is what every
    process obeys.

    Thread-safe. Close it (or use ``with``) to stop its heartbeat and give back what it holds.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        config: Config | None = None,
        clock: Callable[[], float] | None = None,
        lease_ttl: float | None = None,
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
    ) -> None:
        self._core = core = Core(
            db,
            config=config,
            clock=clock,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        if not core.target.is_sqlite:
            raise ConfigError(
                f"{core.display}: the sync Limiter supports SQLite databases only",
                path=core.display,
            )
        self._lock = threading.RLock()
        # Threads of this process take turns to write (see AsyncLimiter._run for why).
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._leases: dict[int, Lease] = {}
        self._waiting = 0
        self._heartbeat: threading.Thread | None = None
        core.prepare_file()
        self._engine: Engine = create_sqlite_engine(
            core.target, busy_timeout_ms=core.busy_timeout_ms
        )
        try:
            with translate_driver_errors(core.display), self._engine.connect() as conn:
                core.open_database(conn)
        except BaseException:
            self._engine.dispose()
            raise
        _LIVE.add(self)

    # --- connections, forking, closing ---------------------------------------------------------

    def _after_fork(self) -> None:
        # In a child: never touch the parent's connections, threads or leases.
        self._engine.dispose(close=False)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._leases = {}
        self._waiting = 0
        self._heartbeat = None
        self._core.reset_identity()
        self._engine = create_sqlite_engine(
            self._core.target, busy_timeout_ms=self._core.busy_timeout_ms
        )

    def _check(self) -> Engine:
        if self._core.pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise LimiterClosedError(f"Limiter on {self._core.display} is closed")
        return self._engine

    @contextlib.contextmanager
    def _connection(self, engine: Engine | None = None) -> Iterator[Connection]:
        """A pooled connection, with driver errors translated."""
        with (
            translate_driver_errors(self._core.display),
            (engine or self._check()).connect() as conn,
        ):
            yield conn

    def close(self) -> None:
        """Stop the heartbeat and release every lease and ticket this Limiter holds. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join()
        if self._core.pid == os.getpid():
            try:
                with self._write_lock, self._connection(self._engine) as conn:
                    self._core.release_owner(conn)
            finally:
                for lease in list(self._leases.values()):
                    lease._released = True  # noqa: SLF001
                self._leases.clear()
                self._engine.dispose()
        _LIVE.discard(self)

    def __enter__(self) -> Limiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = (
            "closed" if self._closed else f"holding {len(self._leases)}, waiting {self._waiting}"
        )
        return f"<Limiter {self._core.display} {state}>"

    @property
    def db(self) -> str:
        """The database this Limiter uses (path or URL)."""
        return self._core.display

    @property
    def config(self) -> Config:
        """The config this Limiter was opened with."""
        return self._core.config

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives without renewal."""
        return self._core.ttl

    # --- acquiring -----------------------------------------------------------------------------

    def acquire_with_fallback(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        holder: str | None = None,
    ) -> Acquired[Lease] | QueueWait:
        """Grant the first candidate with room (primary, chain, capability, CLI), never blocking.

        Returns ``Acquired(lease)``, or ``QueueWait(primary)`` when every candidate is full, or at
        once when the global cap is.
        """
        request = self._core.request(
            primary, fallback_chain, fallback=True, enqueue=False, label=holder
        )
        outcome = self._acquire(request, wait=False, timeout=None)
        return Acquired(outcome) if isinstance(outcome, Lease) else outcome

    def acquire_wait(
        self, key: ModelKey | str, timeout: float | None = None, *, holder: str | None = None
    ) -> Lease:
        """Wait in the fair queue for ``key`` itself (no fallback), as collet's acquire_wait.

        Raises ``AcquireTimeout`` after ``timeout`` seconds; None waits as long as it takes.
        """
        request = self._core.request(key, None, fallback=False, enqueue=True, label=holder)
        outcome = self._acquire(request, wait=True, timeout=timeout)
        assert isinstance(outcome, Lease)
        return outcome

    def acquire(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        timeout: float | None = None,
        holder: str | None = None,
    ) -> Lease:
        """``acquire_with_fallback``, then the fair queue for the primary; use as ``with``.

        The fallback attempt and the queueing are one transaction, so no other request can
        slip in between.
        """
        request = self._core.request(
            primary, fallback_chain, fallback=True, enqueue=True, label=holder
        )
        outcome = self._acquire(request, wait=True, timeout=timeout)
        assert isinstance(outcome, Lease)
        return outcome

    def _acquire(
        self, request: ClaimRequest, *, wait: bool, timeout: float | None
    ) -> Lease | QueueWait:
        core = self._core
        deadline = core.deadline(timeout)
        engine = self._check()
        queued = False
        try:
            with self._connection(engine) as conn:
                version = data_version(conn)
                result = self._claim(conn, request)
                while result.lease is None:
                    if not wait:
                        return QueueWait(request.primary, core.refusal(result))
                    if deadline is not None and monotonic() >= deadline:
                        raise core.timeout_error(request, result, timeout)
                    if not queued:
                        queued = True
                        self._waiting_changed(+1)
                    request = core.with_ticket(request, result)
                    version = self._wait_for_turn(conn, request, version, deadline)
                    result = self._claim(conn, request)
                return self._adopt(result.lease)
        except BaseException:
            if wait:
                with (
                    contextlib.suppress(Exception),
                    self._write_lock,
                    self._connection(self._engine) as conn,
                ):
                    core.discard(conn, request)
            raise
        finally:
            if queued:
                self._waiting_changed(-1)

    def _claim(self, conn: Connection, request: ClaimRequest) -> ClaimResult:
        with self._write_lock:
            return self._core.claim(conn, request)

    def _wait_for_turn(
        self, conn: Connection, request: ClaimRequest, version: int, deadline: float | None
    ) -> int:
        """Sleep until this waiter could be granted, ``max_poll_interval`` passes, or the deadline.

        Every ``poll_interval`` it reads ``PRAGMA data_version``; when another connection has
        committed it looks, without a lock, whether its ticket would now be granted. Every
        ``max_poll_interval`` it returns regardless, so that a claim can reap expired leases and
        dead holders, which change nothing by themselves. The version is read before each look,
        so a commit landing in between costs one spare look, never a missed wake-up. Returns
        the version to compare against next time.
        """
        core = self._core
        started = monotonic()
        while True:
            now = monotonic()
            if deadline is not None and now >= deadline:
                return version
            delay = (
                core.poll_interval if deadline is None else min(core.poll_interval, deadline - now)
            )
            if self._closing.wait(delay):
                raise LimiterClosedError(f"Limiter on {core.display} was closed while waiting")
            current = data_version(conn)
            if monotonic() - started >= core.max_poll_interval:
                return current
            if current != version:
                version = current
                if core.could_grant(conn, [request])[0]:
                    return version

    def _waiting_changed(self, delta: int) -> None:
        with self._lock:
            self._waiting += delta
            if delta > 0:
                self._ensure_heartbeat()

    def _adopt(self, record: LeaseRecord | None) -> Lease:
        assert record is not None
        lease = Lease(self, record)
        with self._lock:
            closed = self._closed
            if not closed:
                self._leases[lease.id] = lease
                self._ensure_heartbeat()
        if closed:
            lease.release()
            raise LimiterClosedError(f"Limiter on {self._core.display} was closed while acquiring")
        return lease

    def _release(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.id, None)
        with self._write_lock, self._connection() as conn:
            released = self._core.release(conn, lease.id, lease.token)
        if not released:
            lease._mark_lost()  # noqa: SLF001
            log.warning("%r was reclaimed before its release (it had expired)", lease)

    # --- heartbeat -----------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None and not self._closed:
            self._heartbeat = threading.Thread(
                target=self._beat,
                name=f"collet-limiter-heartbeat-{self._core.owner[:8]}",
                daemon=True,
            )
            self._heartbeat.start()

    def _beat(self) -> None:
        closing = self._closing
        while not closing.wait(self._core.ttl / 3):
            with self._lock:
                busy = bool(self._leases) or self._waiting > 0
            if not busy:
                continue
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a heartbeat must outlive a bad moment
                log.warning("heartbeat of %r failed: %s", self, exc)

    def renew(self) -> list[Lease]:
        """Renew every lease and ticket this Limiter holds now; returns leases found lost.

        The heartbeat thread calls this every TTL/3; call it yourself to renew sooner.
        """
        with self._lock:
            held = dict(self._leases)
        with self._write_lock, self._connection() as conn:
            expires, lost_ids = self._core.renew(conn, held.keys())
        lost = []
        with self._lock:
            for lease_id, lease in held.items():
                if lease_id in lost_ids:
                    lease._mark_lost()  # noqa: SLF001
                    self._leases.pop(lease_id, None)
                    lost.append(lease)
                else:
                    lease.expires_ts = expires
        return lost

    # --- reading -------------------------------------------------------------------------------

    def resolve_limit(self, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        with self._connection() as conn:
            return self._core.resolve_limit(conn, key)

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database (all processes), oldest first."""
        with self._connection() as conn:
            return self._core.leases(conn)

    def waiters(self) -> list[TicketInfo]:
        """Every queued waiter (all processes), in the order they will be served."""
        with self._connection() as conn:
            return self._core.waiters(conn)

    def status(self) -> Status:
        """The global cap and each model's limit, use and queue."""
        with self._connection() as conn:
            return self._core.status(conn)

    def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates ``acquire_with_fallback`` would try now, in order, each with a reason."""
        with self._connection() as conn:
            return self._core.explain(conn, primary, fallback_chain)

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        with self._write_lock, self._connection() as conn:
            return self._core.reap(conn)


def _after_fork_in_child() -> None:
    for limiter in list(_LIVE):
        limiter._after_fork()  # noqa: SLF001


def _close_all_at_exit() -> None:
    for limiter in list(_LIVE):
        with contextlib.suppress(Exception):
            limiter.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
logging.getLogger("collet_limiter").addHandler(logging.NullHandler())
