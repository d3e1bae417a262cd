"""``Limiter``: the synchronous facade, its polling waiter and its heartbeat thread."""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import select
import threading
import weakref
from typing import TYPE_CHECKING, Final, TypeVar

from ._core import Core, log, monotonic
from ._engine import create_sqlite_engine, data_version
from ._errors import ConfigError, LimiterClosedError, StorageError, translate_driver_errors
from ._lease import BaseLease
from ._results import Acquired, QueueWait
from ._wake import PidWatch, WakeSocket, WriterLock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._claim import ClaimRequest, ClaimResult
    from ._config import Config
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._store import LeaseRecord

T = TypeVar("T")

_LIVE: weakref.WeakSet[Limiter] = weakref.WeakSet()

# A waiting thread claims on its own at least this often, in case its watcher is wedged: the
# watcher normally wakes it the moment its turn comes, so this only bounds a bug's damage.
SAFETY_CLAIM_SECS: Final = 30.0
# Connections a Limiter keeps for reuse (more are opened while more threads run transactions).
SPARE_CONNECTIONS: Final = 4
# How often a watcher sweeps for expired leases and dead holders when it watches every holder
# on this host through pidfds: deaths then wake it at once and expiries have their own timer,
# so the sweep only guards against what it cannot observe (another host's clock, a clock step).
WATCHED_SWEEP_SECS: Final = 10.0
# Pushed tickets remembered for threads about to register; more are stale (tickets only grow).
MAX_EARLY_TICKETS: Final = 1024


class _Waiter:
    """A thread of this Limiter waiting in the queue, and the event that wakes it."""

    __slots__ = ("event", "request")

    def __init__(self, request: ClaimRequest) -> None:
        self.request = request
        self.event = threading.Event()


class _Sight:
    """What the watcher last saw, kept while no thread waits, so a new waiter costs no look.

    ``early`` holds pushed tickets that arrived before their thread registered (a release can
    commit between the claim that queued a ticket and its registration).
    """

    __slots__ = ("conn", "early", "expiry_due", "looked", "version")

    def __init__(self) -> None:
        self.conn: Connection | None = None  # the connection ``version`` was read on
        self.version = -1  # PRAGMA data_version at the last look
        self.looked = -math.inf  # when (monotonic)
        self.expiry_due = math.inf  # when the earliest lease or ticket expires (monotonic)
        self.early: set[int] = set()


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
        """Give the slot back. Idempotent; a no-op for a lost lease or in a forked child.

        If the database refuses (``StorageError``), the lease stays held and renewed, and
        ``release()`` can be called again.
        """
        if self._begin_release():
            try:
                self._limiter._release(self)  # noqa: SLF001 - the lease's own limiter
            except BaseException:
                self._released = False
                raise

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
        # Threads of this process take turns to write, then processes take turns through the
        # writer lock: SQLite admits one writer at a time anyway (see _wake for why we queue
        # in the kernel rather than in SQLite's busy handler).
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._leases: dict[str, Lease] = {}  # by token, the proof of ownership
        self._waiters: dict[str, _Waiter] = {}
        self._spare: list[Connection] = []
        self._sight = _Sight()
        self._heartbeat: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        core.prepare_file()
        self._engine: Engine = create_sqlite_engine(
            core.target, busy_timeout_ms=core.busy_timeout_ms
        )
        try:
            with translate_driver_errors(core.display):
                self._writer = WriterLock(self._path, self._core.sharing)
                with self._engine.connect() as conn:
                    core.open_database(conn)
        except BaseException:
            self._engine.dispose()
            raise
        self._open_wakeups()
        _LIVE.add(self)

    # --- connections, forking, closing ---------------------------------------------------------

    @property
    def _path(self) -> Path:
        path = self._core.target.path
        assert path is not None
        return path

    def _open_wakeups(self) -> None:
        self._wake = WakeSocket()
        self._pids = PidWatch()
        self._interrupt_r, self._interrupt_w = os.pipe()
        os.set_blocking(self._interrupt_r, False)

    def _after_fork(self) -> None:
        # In a child: never touch the parent's connections, threads, locks or leases. Inherited
        # descriptors are dropped: the writer lock especially, since flock() locks belong to the
        # open file, which a child shares with its parent.
        self._engine.dispose(close=False)
        # The parent's connections are kept, never closed nor used: SQLite forbids carrying a
        # connection across fork(), and closing one here could disturb the parent's.
        self._orphans = self._spare
        self._spare = []
        for fd in (self._interrupt_r, self._interrupt_w):
            os.close(fd)
        self._wake.close()
        self._pids.close()
        self._writer.close()
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._leases = {}
        self._waiters = {}
        self._sight = _Sight()
        self._heartbeat = self._watcher = None
        self._core.reset_identity()
        self._engine = create_sqlite_engine(
            self._core.target, busy_timeout_ms=self._core.busy_timeout_ms
        )
        self._writer = WriterLock(self._path, self._core.sharing)
        self._open_wakeups()

    def _check(self) -> Engine:
        if self._core.pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise LimiterClosedError(f"Limiter on {self._core.display} is closed")
        return self._engine

    @contextlib.contextmanager
    def _connection(self, engine: Engine | None = None) -> Iterator[Connection]:
        """A connection kept checked out for reuse, with driver errors translated.

        The pool's checkout and checkin (events, bookkeeping) cost more than a write statement,
        so the Limiter keeps a few connections of its own: taking one is a list pop. One that
        saw an error is closed rather than reused.
        """
        engine = engine or self._check()
        with translate_driver_errors(self._core.display):
            try:
                conn = self._spare.pop()
            except IndexError:
                conn = engine.connect()
            if conn.engine is not engine:  # the engine was replaced (file moved, fork)
                conn.close()
                conn = engine.connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if len(self._spare) < SPARE_CONNECTIONS and not self._closed:
                self._spare.append(conn)
            else:
                conn.close()

    def _give_back(self) -> None:
        """At close: delete this Limiter's rows from the database its path now names."""
        core = self._core
        if not core.file_replaced():
            self._write(core.release_owner, self._engine)
            return
        # The file was deleted or replaced: our rows went with the old one, except any carried
        # into the new one by a reopen. Never recreate a deleted database just to close.
        if self._path.exists():
            engine = create_sqlite_engine(core.target, busy_timeout_ms=core.busy_timeout_ms)
            try:
                with contextlib.suppress(StorageError), self._connection(engine) as conn:
                    core.release_owner(conn)
            finally:
                engine.dispose()

    def _close_spares(self) -> None:
        while self._spare:
            with contextlib.suppress(Exception):
                self._spare.pop().close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold this process's turn to write: the thread lock, then the writer lock."""
        with self._write_lock:
            if not self._writer.acquire(self._core.busy_timeout_ms / 1000):
                raise self._core.writer_busy()
            try:
                yield
            finally:
                self._writer.release()

    def _write(self, func: Callable[[Connection], T], engine: Engine | None = None) -> T:
        """Run one write transaction in this process's turn."""
        if self._core.file_replaced():
            self._reopen()
            engine = None
        with self._connection(engine) as conn, self._writing():
            return func(conn)

    def _reopen(self) -> None:
        """Move to the new database file, carrying the leases this Limiter holds into it."""
        core = self._core
        with self._lock, translate_driver_errors(core.display):
            if not core.file_replaced():
                return  # another thread moved first
            self._close_spares()
            self._engine.dispose()
            self._engine = create_sqlite_engine(core.target, busy_timeout_ms=core.busy_timeout_ms)
            core.prepare_file()
            self._writer.close()
            self._writer = WriterLock(self._path, core.sharing)
            held = list(self._leases.values())
            with self._engine.connect() as conn:
                core.open_database(conn)
                with self._writing():
                    records = core.readopt(conn, [lease._record for lease in held])  # noqa: SLF001
            self._leases = {}
            for lease, record in zip(held, records, strict=True):
                lease._record, lease.expires_ts = record, record.expires_ts  # noqa: SLF001
                self._leases[record.token] = lease
        self._interrupt()  # the watcher reconnects to the new file

    def close(self) -> None:
        """Stop the heartbeat and release every lease and ticket this Limiter holds. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for waiter in self._waiters.values():
                waiter.event.set()
        self._closing.set()
        if self._core.pid != os.getpid():
            _LIVE.discard(self)
            return
        self._interrupt()
        for thread in (self._heartbeat, self._watcher):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        try:
            self._give_back()
        finally:
            for lease in list(self._leases.values()):
                lease._released = True  # noqa: SLF001
            self._leases.clear()
            self._close_spares()
            self._engine.dispose()
            self._wake.close()
            self._pids.close()
            self._writer.close()
            for fd in (self._interrupt_r, self._interrupt_w):
                os.close(fd)
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
        held, waiting = len(self._leases), len(self._waiters)
        state = "closed" if self._closed else f"holding {held}, waiting {waiting}"
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
        request = self._core.request(
            key, None, fallback=False, enqueue=True, label=holder, wake_addr=self._wake.address
        )
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
            primary,
            fallback_chain,
            fallback=True,
            enqueue=True,
            label=holder,
            wake_addr=self._wake.address,
        )
        outcome = self._acquire(request, wait=True, timeout=timeout)
        assert isinstance(outcome, Lease)
        return outcome

    def _acquire(
        self, request: ClaimRequest, *, wait: bool, timeout: float | None
    ) -> Lease | QueueWait:
        core = self._core
        deadline = core.deadline(timeout)
        self._check()
        waiter: _Waiter | None = None
        try:
            result = self._claim(request)
            while result.lease is None:
                if not wait:
                    return QueueWait(request.primary, core.refusal(result))
                if deadline is not None and monotonic() >= deadline:
                    raise core.timeout_error(request, result, timeout)
                request = core.with_ticket(request, result)
                if waiter is None:
                    waiter = self._register(request)
                self._arm(waiter, request)
                remaining = math.inf if deadline is None else max(0.0, deadline - monotonic())
                waiter.event.wait(min(remaining, SAFETY_CLAIM_SECS))
                waiter.event.clear()
                if self._closed:
                    raise LimiterClosedError(f"Limiter on {core.display} was closed while waiting")
                result = self._claim(request)
            return self._adopt(result.lease)
        except BaseException:
            if wait:
                with contextlib.suppress(Exception):
                    self._write(lambda conn: core.discard(conn, request), self._engine)
            raise
        finally:
            if waiter is not None:
                with self._lock:
                    self._waiters.pop(request.ticket_token, None)

    def _claim(self, request: ClaimRequest) -> ClaimResult:
        return self._write(lambda conn: self._core.claim(conn, request))

    def _register(self, request: ClaimRequest) -> _Waiter:
        waiter = _Waiter(request)
        with self._lock:
            self._waiters[request.ticket_token] = waiter
            self._ensure_thread("_heartbeat", self._beat, "heartbeat")
            self._ensure_thread("_watcher", self._watch, "watcher")
        self._interrupt()  # the watcher starts watching (and looks, if its last look is stale)
        return waiter

    def _arm(self, waiter: _Waiter, request: ClaimRequest) -> None:
        """Point ``waiter`` at its (possibly new) ticket; wake it if that was pushed already."""
        with self._lock:
            waiter.request = request
            if request.ticket in self._sight.early:
                self._sight.early.discard(request.ticket)
                waiter.event.set()

    def _interrupt(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._interrupt_w, b"!")

    # --- the watcher ---------------------------------------------------------------------------

    def _watch(self) -> None:
        """Wake this Limiter's waiting threads when their turn comes (see _wake).

        Runs while the Limiter lives, holding a connection only while threads wait.
        """
        while not self._closed:
            if not self._waiters:
                with contextlib.suppress(OSError):
                    select.select([self._interrupt_r], [], [], self._core.max_poll_interval)
                    self._drain_interrupts()
                continue
            try:
                with self._connection(self._engine) as conn:
                    self._watch_on(conn)
            except Exception as exc:  # noqa: BLE001 - wake everyone: their own claims report it
                log.warning("waiter watch of %r failed: %s", self, exc)
                self._wake_waiters(None)
                self._closing.wait(self._core.max_poll_interval)

    def _watch_on(self, conn: Connection) -> None:
        core, sight = self._core, self._sight
        sweep, sweep_due = False, monotonic() + core.max_poll_interval
        # A waiter's wake-up is pushed to it (or met in sight.early); a look is the backstop,
        # needed on arrival only when the last one is older than a poll interval.
        look = monotonic() - sight.looked >= core.poll_interval
        if sight.conn is not conn:  # data_version counts per connection
            sight.conn, sight.version = conn, -1
        engine = self._engine
        while self._waiters and not self._closed and self._engine is engine:
            if sweep:
                self._write(core.reap, self._engine)
                sweep, look = False, True
                interval = WATCHED_SWEEP_SECS if self._pids.complete else core.max_poll_interval
                sweep_due = monotonic() + interval
            if look:
                look, sight.looked = False, monotonic()
                # Read before looking: a commit made meanwhile is seen at the next check.
                sight.version = data_version(conn)
                waiters = list(self._waiters.values())
                flags, outlook = core.could_grant(conn, [w.request for w in waiters])
                for waiter, could in zip(waiters, flags, strict=True):
                    if could:
                        waiter.event.set()
                sweep = self._pids.update(outlook.holders)
                sight.expiry_due = math.inf
                if outlook.next_expiry is not None:
                    wait = max(0.0, outlook.next_expiry - core.clock())
                    sight.expiry_due = monotonic() + wait + 0.001
                if sweep:
                    continue
            now = monotonic()
            timeout = max(0.0, min(core.poll_interval, sweep_due - now, sight.expiry_due - now))
            pidfds = self._pids.fds()
            waited = [fd for fd in (self._wake.fileno(), self._interrupt_r, *pidfds) if fd >= 0]
            ready, _, _ = select.select(waited, [], [], timeout)
            if self._wake.fileno() in ready:
                self._wake_waiters(self._wake.drain())
            now = monotonic()
            if self._interrupt_r in ready:
                self._drain_interrupts()
                look = look or now - sight.looked >= core.poll_interval
            self._pids.exited(fd for fd in ready if fd in pidfds)
            if any(fd in ready for fd in pidfds) or now >= sweep_due or now >= sight.expiry_due:
                sweep, sight.expiry_due = True, math.inf
            # Pushed wake-ups reach the waiters whose turn came; looking after other commits
            # is the backstop, at most once per poll interval, or every process's watcher would
            # read the queue after every commit of a busy database.
            if now - sight.looked >= core.poll_interval and data_version(conn) != sight.version:
                look = True

    def _wake_waiters(self, tickets: set[int] | None) -> None:
        """Set the events of the waiters holding ``tickets`` (all of them for None).

        Tickets no waiter holds yet are kept for ``_arm``: their thread is about to register.
        """
        with self._lock:
            for waiter in self._waiters.values():
                if tickets is None or waiter.request.ticket in tickets:
                    waiter.event.set()
            if tickets:
                early = self._sight.early
                if len(early) > MAX_EARLY_TICKETS:
                    early.clear()  # tickets of threads long gone; a real one lost costs a poll
                early.update(tickets - {w.request.ticket for w in self._waiters.values()})

    def _drain_interrupts(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._interrupt_r, 512):
                pass

    def _adopt(self, record: LeaseRecord | None) -> Lease:
        assert record is not None
        lease = Lease(self, record)
        with self._lock:
            closed = self._closed
            if not closed:
                self._leases[lease.token] = lease
                self._ensure_thread("_heartbeat", self._beat, "heartbeat")
        if closed:
            lease.release()
            raise LimiterClosedError(f"Limiter on {self._core.display} was closed while acquiring")
        return lease

    def _release(self, lease: Lease) -> None:
        released = self._write(lambda conn: self._core.release(conn, lease.id, lease.token))
        with self._lock:
            self._leases.pop(lease.token, None)
        if not released:
            lease._mark_lost()  # noqa: SLF001
            log.warning("%r was reclaimed before its release (it had expired)", lease)

    # --- heartbeat -----------------------------------------------------------------------------

    def _ensure_thread(self, attribute: str, target: Callable[[], None], role: str) -> None:
        if getattr(self, attribute) is None and not self._closed:
            thread = threading.Thread(
                target=target, name=f"collet-limiter-{role}-{self._core.owner[:8]}", daemon=True
            )
            setattr(self, attribute, thread)
            thread.start()

    def _beat(self) -> None:
        closing = self._closing
        while not closing.wait(self._core.ttl / 3):
            with self._lock:
                busy = bool(self._leases) or bool(self._waiters)
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
        expires, lost_tokens = self._write(lambda conn: self._core.renew(conn, held.keys()))
        lost = []
        with self._lock:
            for token, lease in held.items():
                if lease.released:
                    continue  # released cleanly while the renewal waited for its turn
                if token in lost_tokens:
                    lease._mark_lost()  # noqa: SLF001
                    self._leases.pop(token, None)
                    lost.append(lease)
                    self._core.log_lost(lease)
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
        return self._write(self._core.reap)


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
