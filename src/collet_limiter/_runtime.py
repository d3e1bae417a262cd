"""``Runtime``: everything a limiter does that is not waiting, shared by both faces.

A runtime owns the connections, the turn to write (a thread lock, then the cross-process writer
lock), reopening after the file was replaced, fork handling, close and give-back, the registry of
held leases, and two threads: the heartbeat, which renews leases and tickets whatever the caller
is doing (an event loop blocked by a synchronous SDK call included), and the watcher, which wakes
waiters when their turn may have come. The acquire loop is written once, as a generator of steps
(``acquire_steps``); ``Limiter`` runs the steps by blocking, ``AsyncLimiter`` by awaiting.

Everything here is synchronous and thread-safe. The async face runs a transaction inline on its
event loop when the turn to write is free (a few microsecond-scale statements: SQLite in WAL mode
with ``synchronous=NORMAL`` does not fsync on commit), and otherwise on the runtime's worker
thread, which waits for the turn in the kernel like any sync writer.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import logging
import math
import os
import queue
import select
import threading
import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

from ._claim import ClaimResult
from ._core import RETRY_KEY, WAKE_KEY, Core, log, monotonic
from ._engine import create_engine_for
from ._errors import AcquireTimeout, LimiterClosedError, LimiterError, translate_driver_errors
from ._lite import LiteEngine
from ._results import QueueWait
from ._wake import PidWatch, WakeSocket, WriterLock, notify
from ._watcher import Watcher, drain

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from pathlib import Path

    from sqlalchemy.engine import Connection, Engine

    from ._claim import ClaimRequest
    from ._cooldown import Kind
    from ._keys import ModelKey
    from ._lease import BaseLease
    from ._pglisten import PgListener
    from ._results import Cooldown, Reaped
    from ._store import LeaseRecord

T = TypeVar("T")
L = TypeVar("L", bound="BaseLease")

# A waiter claims on its own at least this often, in case its watcher is wedged: the watcher
# normally wakes it the moment its turn comes, so this only bounds a bug's damage.
SAFETY_CLAIM_SECS: Final = 30.0
# Connections a runtime keeps for reuse (more are opened while more threads run transactions).
SPARE_CONNECTIONS: Final = 4
_LIVE: weakref.WeakSet[Runtime] = weakref.WeakSet()


class NotNow:
    """Returned by ``Runtime.write(..., blocking=False)`` when the turn to write is taken."""


NOT_NOW: Final = NotNow()


class Waiter:
    """A caller waiting in the queue: its request, and how the watcher wakes it.

    Each face subclasses it: ``wake`` is called from the watcher thread and sets a
    ``threading.Event``, or an asyncio event through ``loop.call_soon_threadsafe``.
    """

    __slots__ = ("request",)

    def __init__(self, request: ClaimRequest) -> None:
        self.request = request

    def wake(self) -> None:
        """Tell the waiter its turn may have come (it claims, and the database decides)."""
        raise NotImplementedError


class Claim(Generic[L]):
    """Step: run one claim; the driver sends back the lease, or the ``ClaimResult``."""

    __slots__ = ("factory", "request")

    def __init__(self, request: ClaimRequest, factory: Callable[[LeaseRecord], L]) -> None:
        self.request, self.factory = request, factory


class Wait:
    """Step: sleep until ``waiter`` is woken, or ``seconds`` pass."""

    __slots__ = ("seconds", "waiter")

    def __init__(self, waiter: Waiter, seconds: float) -> None:
        self.waiter, self.seconds = waiter, seconds


class Discard:
    """Step: remove what an interrupted acquire left (its ticket, a lease it never adopted);
    ``outcome`` (timed_out or cancelled) and ``reason`` say why, for the history."""

    __slots__ = ("outcome", "reason", "request")

    def __init__(self, request: ClaimRequest, outcome: str, reason: str) -> None:
        self.request, self.outcome, self.reason = request, outcome, reason


Step = Claim[Any] | Wait | Discard


class _Worker:
    """One thread that runs jobs in order: the async face's transactions that must wait."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, func: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((func, future))
        return future

    def stop(self) -> None:
        """Run the jobs already queued, then end the thread (joined unless called from it)."""
        self._jobs.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            func, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = func()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits the job
                future.set_exception(exc)
            else:
                future.set_result(result)


class ServerTurn:
    """The writer lock's stand-in on a database server, whose own lock takes its place.

    On PostgreSQL every write transaction takes the group's advisory lock itself (see
    ``_engine``), so there is nothing to take before it.
    """

    def acquire(self, _timeout: float) -> bool:
        return True

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class Runtime:
    """The connections, turn to write, lease registry and threads behind one limiter."""

    def __init__(self, core: Core, *, face: str) -> None:
        self.core = core
        self.face = face
        # A database server (PostgreSQL) rather than a local file: writers take turns inside
        # the server (an advisory lock), wake-ups travel by LISTEN/NOTIFY, and a dropped
        # connection is retried for up to the busy timeout.
        self.remote = not core.target.is_sqlite
        self.lock = threading.RLock()
        # Threads of this process take turns to write, then processes take turns through the
        # writer lock: SQLite admits one writer at a time anyway (see _wake for why we queue
        # in the kernel rather than in SQLite's busy handler).
        self._write_lock = threading.Lock()
        self.closed = False
        self._close_ended = threading.Event()  # set once close() has given everything back
        self._leases: weakref.WeakValueDictionary[str, BaseLease] = weakref.WeakValueDictionary()
        self.waiters: dict[str, Waiter] = {}
        self._dropped: collections.deque[tuple[int, str]] = collections.deque()
        self._spare: list[Connection] = []
        self._orphans: list[Connection] = []
        self.watcher = Watcher(self)
        self._beat_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None
        self._worker: _Worker | None = None
        self._open(fresh=True)
        _LIVE.add(self)

    def _open(self, *, fresh: bool) -> None:
        """Open the engine, the writer lock and the wake-ups; on failure, leak nothing.

        ``fresh``: also create or upgrade the schema and write the config (not in a forked
        child, whose parent did, and where this runs in an at-fork hook).
        """
        core = self.core
        opened: list[Callable[[], object]] = []
        try:
            with translate_driver_errors(core.display):
                if fresh:
                    core.prepare_file()
                self.engine: Engine | LiteEngine = create_engine_for(
                    core.target, busy_timeout_ms=core.busy_timeout_ms
                )
                opened.append(self.engine.dispose)
                self._writer: WriterLock | ServerTurn
                if self.remote:
                    self._writer, self._writer_id = ServerTurn(), None
                else:
                    self._writer = WriterLock(self.path, core.sharing)
                    self._writer_id = _file_id(self._writer.path)
                opened.append(self._writer.close)
                if fresh and self.remote:  # waits out a server restart, as every write does
                    self._retrying(core.open_database)
                elif fresh:
                    with self._connect() as conn:
                        core.open_database(conn)
                self.wake_socket: WakeSocket | PgListener
                if self.remote:
                    from ._pglisten import PgListener

                    assert not isinstance(self.engine, LiteEngine)
                    self.wake_socket = PgListener(
                        self.engine,
                        f"collet_{core.owner}",
                        retry_secs=core.poll_interval,
                        enabled=core.target.listen,
                    )
                else:
                    self.wake_socket = WakeSocket(core.sharing)
                opened.append(self.wake_socket.close)
                self.pids = PidWatch()
                opened.append(self.pids.close)
                self.interrupt_r, self.interrupt_w = _pipe()
                opened.append(lambda: _close_fds(self.interrupt_r, self.interrupt_w))
                self._beat_r, self._beat_w = _pipe()
        except BaseException:
            for undo in reversed(opened):
                with contextlib.suppress(Exception):
                    undo()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        path = self.core.target.path
        assert path is not None
        return path

    @property
    def held(self) -> int:
        """How many leases this runtime holds now."""
        return len(self._leases)

    # --- fork -------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise if closed; rebuild after a fork (a child never uses the parent's resources)."""
        if self.core.pid != os.getpid():
            self.after_fork()
        if self.closed:
            raise LimiterClosedError(f"{self.face} on {self.core.display} is closed")

    def after_fork(self) -> None:
        """In a child: drop the parent's connections, threads, locks and leases; start afresh."""
        if self.core.pid == os.getpid():
            return
        # The parent's connections are kept, never closed nor used: SQLite forbids carrying a
        # connection across fork(), and closing one here could disturb the parent's.
        self.engine.dispose(close=False)
        self._orphans, self._spare = self._orphans + self._spare, []
        if self.watcher.conn is not None:  # held by the parent's watcher: never collected here,
            self._orphans.append(self.watcher.conn)  # where the pool would close it (PostgreSQL)
        # flock() locks belong to the open file, which a child shares with its parent: the
        # writer lock closes only its copies of the descriptors.
        self._writer.close()
        self.wake_socket.close()
        self.pids.close()
        _close_fds(self.interrupt_r, self.interrupt_w, self._beat_r, self._beat_w)
        self.lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._leases = weakref.WeakValueDictionary()
        self.waiters = {}
        self._dropped = collections.deque()
        self.watcher = Watcher(self)
        self._beat_thread = self._watch_thread = None
        self._worker = None
        self.core.reset_identity()
        self._close_ended = threading.Event()
        if self.closed:
            self._close_ended.set()
            _LIVE.discard(self)
            return
        self._open(fresh=False)

    # --- connections and the turn to write ------------------------------------------------------

    def _connect(self) -> Connection:
        """A new connection of the engine (on SQLite a ``LiteConnection``, which stands in for
        SQLAlchemy's everywhere a transaction runs)."""
        return cast("Connection", self.engine.connect())

    @contextlib.contextmanager
    def connection(self, engine: Engine | LiteEngine | None = None) -> Iterator[Connection]:
        """A connection kept checked out for reuse, with driver errors translated.

        The pool's checkout and checkin (events, bookkeeping) cost more than a write statement,
        so the runtime keeps a few connections of its own: taking one is a list pop. One that
        saw an error is closed rather than reused.
        """
        engine = engine or self.engine
        with translate_driver_errors(self.core.display):
            conn: Any  # a SQLAlchemy Connection, or on SQLite a LiteConnection standing in
            try:
                conn = self._spare.pop()
            except IndexError:
                conn = engine.connect()
            if conn.engine is not engine:  # the engine was replaced (file moved)
                conn.close()
                conn = engine.connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if len(self._spare) < SPARE_CONNECTIONS and not self.closed:
                self._spare.append(conn)
            else:
                conn.close()

    def read(self, func: Callable[[Connection], T]) -> T:
        """Run one read transaction (no turn to write needed: WAL readers never wait)."""
        self.check()
        if self.remote:
            return self._retrying(func)
        with self.connection() as conn:
            return func(conn)

    def _retrying(
        self,
        func: Callable[[Connection], T],
        *,
        wake: list[tuple[str, int]] | None = None,
        closing: bool = False,
    ) -> T:
        """Run ``func`` on a server connection, again on a new one while the server is away.

        A dropped connection (a server restart, a network failure) is retried, with backoff, for
        up to the busy timeout; then ``DatabaseUnavailableError`` names the server. A commit
        whose answer was lost may have happened, so a retried transaction is told
        (``RETRY_KEY``) and looks for what its first attempt may have written.
        """
        core = self.core
        deadline: float | None = None
        delay = 0.01
        attempt = 0
        while True:
            connected = lost = False
            try:
                with translate_driver_errors(core.display), self.connection() as conn:
                    connected = True
                    info = conn.info
                    info[WAKE_KEY], info[RETRY_KEY] = (wake if wake is not None else []), attempt
                    try:
                        return func(conn)
                    except BaseException:
                        lost = _connection_lost(conn)
                        raise
                    finally:
                        del info[WAKE_KEY], info[RETRY_KEY]
            except LimiterError as exc:
                # Retried: a link that broke, or a connection the server refused for now (it is
                # restarting, or unreachable); not a refusal that waiting cannot cure.
                if not (lost or (not connected and _may_pass(exc))):
                    raise
                now = monotonic()
                if deadline is None:
                    deadline = now + core.busy_timeout_ms / 1000
                    log.warning(
                        "%s %s (%s); retrying for up to %d ms",
                        "lost the connection to" if lost else "cannot connect to",
                        core.target.host,
                        getattr(exc, "reason", None) or exc,
                        core.busy_timeout_ms,
                    )
                if now >= deadline:
                    raise core.unreachable(exc) from exc.__cause__
                if self.closed and not closing:
                    raise LimiterClosedError(f"{self.face} on {core.display} is closed") from None
                self._close_spares()
                self._sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.5)
                attempt += 1

    @staticmethod
    def _sleep(seconds: float) -> None:
        """Sleep between reconnection attempts."""
        time.sleep(max(0.0, seconds))

    def write(self, func: Callable[[Connection], T], *, blocking: bool = True) -> T | NotNow:
        """Run one write transaction in this process's turn; wake-ups are sent after it.

        With ``blocking=False``, returns ``NOT_NOW`` instead of waiting when another thread or
        process holds the turn. Raises ``LimiterClosedError`` once closed: the check is made in
        the turn, so no write starts after ``close`` gave the rows back.
        """
        self.check()
        if not self._write_lock.acquire(blocking):
            return NOT_NOW
        wake: list[tuple[str, int]] = []
        try:
            if self.closed:
                raise LimiterClosedError(f"{self.face} on {self.core.display} is closed")
            return self._write_in_turn(func, wake, blocking=blocking)
        finally:
            self._write_lock.release()
            notify(wake)

    def _write_in_turn(
        self,
        func: Callable[[Connection], T],
        wake: list[tuple[str, int]],
        *,
        blocking: bool,
        closing: bool = False,
    ) -> T | NotNow:
        """``write`` once the thread lock is held: the writer lock, reopen, the transaction."""
        core = self.core
        if self.remote:
            if not blocking:  # the async face runs every server round trip off its loop
                return NOT_NOW
            return self._retrying(func, wake=wake, closing=closing)
        with translate_driver_errors(core.display):
            if blocking:
                if not self._writer.acquire(core.busy_timeout_ms / 1000):
                    raise core.writer_busy()
            elif not self._writer.try_acquire():
                return NOT_NOW
            try:
                if self.closed and not closing:  # close() began while we waited for the lock
                    raise LimiterClosedError(f"{self.face} on {core.display} is closed")
                if core.file_replaced():
                    self._reopen()
                with self.connection() as conn:
                    conn.info[WAKE_KEY] = wake
                    try:
                        return func(conn)
                    finally:
                        # pop: an interrupt during COMMIT invalidates the connection, which
                        # empties its info, and a KeyError here would replace the interrupt.
                        conn.info.pop(WAKE_KEY, None)
            finally:
                self._writer.release()

    def _reopen(self) -> None:
        """Move to the new database file, carrying the leases this runtime holds into it.

        Runs in the turn to write, so a claim committed to the old file has registered its
        lease already and is carried over with the others.
        """
        core = self.core
        assert isinstance(self._writer, WriterLock), "only a SQLite file is ever replaced"
        self._close_spares()
        self.engine.dispose()
        self.engine = create_engine_for(core.target, busy_timeout_ms=core.busy_timeout_ms)
        core.prepare_file()
        if _file_id(self._writer.path) != self._writer_id:  # the lock file went too
            writer = WriterLock(self.path, core.sharing)
            if not writer.acquire(core.busy_timeout_ms / 1000):
                writer.close()
                raise core.writer_busy()
            old, self._writer, self._writer_id = self._writer, writer, _file_id(writer.path)
            old.close()
        with self.lock:
            held = list(self._leases.values())
        with self._connect() as conn:
            core.open_database(conn)
            records = core.readopt(conn, [lease._record for lease in held])  # noqa: SLF001
        with self.lock:
            self._leases = weakref.WeakValueDictionary()
            for lease, record in zip(held, records, strict=True):
                lease._record, lease.expires_ts = record, record.expires_ts  # noqa: SLF001
                self._leases[record.token] = lease
        self._interrupt()  # the watcher reconnects to the new file

    def _close_spares(self) -> None:
        while self._spare:
            with contextlib.suppress(Exception):
                self._spare.pop().close()

    def submit(self, func: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``func`` on this runtime's worker thread (started on first use), in order."""
        with self.lock:  # close() sets the flag under this lock, then queues the worker's end
            if self.closed:
                raise LimiterClosedError(f"{self.face} on {self.core.display} is closed")
            if self._worker is None:
                self._worker = _Worker(f"collet-limiter-worker-{self.core.owner[:8]}")
            return self._worker.submit(func)

    # --- the acquire loop, written once -------------------------------------------------------

    def acquire_steps(
        self,
        request: ClaimRequest,
        *,
        wait: bool,
        timeout: float | None,
        factory: Callable[[LeaseRecord], L],
        new_waiter: Callable[[ClaimRequest], Waiter],
    ) -> Generator[Step, Any, L | QueueWait]:
        """The acquire loop: claim, queue, wait to be woken, claim again; undo on any exception.

        Yields ``Claim``, ``Wait`` and ``Discard`` steps; the face runs each (blocking or
        awaiting) and sends back its result, or throws in the exception it raised.
        """
        core = self.core
        deadline = core.deadline(timeout)
        if request.enqueue:  # its ticket says where this runtime's watcher hears wake-ups
            request = replace(request, wake_addr=self.wake_socket.address)
        waiter: Waiter | None = None
        try:
            outcome = yield Claim(request, factory)
            while isinstance(outcome, ClaimResult):
                if not wait:
                    return QueueWait(request.primary, core.refusal(outcome))
                if deadline is not None and monotonic() >= deadline:
                    raise core.timeout_error(request, outcome, timeout)
                request = core.with_ticket(request, outcome)
                if waiter is None:
                    waiter = self.register(new_waiter(request))
                self.arm(waiter, request)
                remaining = math.inf if deadline is None else max(0.0, deadline - monotonic())
                yield Wait(waiter, min(remaining, SAFETY_CLAIM_SECS))
                if self.closed:
                    raise LimiterClosedError(
                        f"{self.face} on {core.display} was closed while waiting"
                    )
                outcome = yield Claim(request, factory)
            if self.closed:  # granted as close() began: its give-back takes the row
                raise LimiterClosedError(
                    f"{self.face} on {core.display} was closed while acquiring"
                )
        except BaseException as exc:
            # Whatever interrupted us (a timeout, a cancellation, KeyboardInterrupt right after
            # a claim committed), remove the ticket and any lease granted but never handed over.
            timed_out = isinstance(exc, AcquireTimeout)
            reason = str(exc) or type(exc).__name__
            yield Discard(request, "timed_out" if timed_out else "cancelled", reason)
            raise
        finally:
            if waiter is not None:
                with self.lock:
                    self.waiters.pop(waiter.request.ticket_token, None)
        return outcome  # type: ignore[no-any-return]

    def claim(
        self, request: ClaimRequest, factory: Callable[[LeaseRecord], L], *, blocking: bool = True
    ) -> L | ClaimResult | NotNow:
        """One claim; a granted lease is registered in the same turn to write.

        A queued request first reads, without a lock, whether a release granted it its lease
        already (the usual way a waiter's turn comes): then no write is needed.
        """
        if request.ticket is not None:
            record = self.read(lambda conn: self.core.granted(conn, request))
            if record is not None:
                lease = factory(record)
                with self.lock:
                    self._leases[lease.token] = lease
                return lease

        def claim(conn: Connection) -> L | ClaimResult:
            result = self.core.claim(conn, request)
            if result.lease is None:
                return result
            lease = factory(result.lease)
            with self.lock:
                self._leases[lease.token] = lease
            return lease

        outcome = self.write(claim, blocking=blocking)
        if not isinstance(outcome, (NotNow, ClaimResult)):
            self._ensure_thread("_beat_thread", self._beat, "heartbeat")
        return outcome

    def discard(
        self,
        request: ClaimRequest,
        outcome: str = "cancelled",
        reason: str = "",
        *,
        blocking: bool = True,
    ) -> NotNow | None:
        """Remove an interrupted acquire's ticket and lease; never raises a LimiterError.

        ``outcome`` (timed_out or cancelled) and ``reason`` are what the history records."""
        with self.lock:
            lease = self._leases.pop(request.token, None)
        if lease is not None:
            lease._released = True  # noqa: SLF001 - never handed to its caller
        try:
            return self.write(
                lambda conn: self.core.discard(conn, request, outcome, reason), blocking=blocking
            )
        except LimiterError as exc:
            # Closed (close() gave every row back), or the database refused: the ticket and
            # lease expire with their TTL, since nobody renews them any more.
            if not self.closed:
                log.warning("could not remove an interrupted acquire's rows: %s", exc)
            return None

    def register(self, waiter: Waiter) -> Waiter:
        """Make ``waiter`` one the watcher wakes; start the watcher and heartbeat if needed."""
        with self.lock:  # close() sets its flag and wakes the registered under this lock
            if self.closed:
                raise LimiterClosedError(
                    f"{self.face} on {self.core.display} was closed while acquiring"
                )
            self.waiters[waiter.request.ticket_token] = waiter
            self._ensure_thread("_beat_thread", self._beat, "heartbeat")
            self._ensure_thread("_watch_thread", self.watcher.run, "watcher")
        self._interrupt()  # the watcher starts watching (and looks, if its last look is stale)
        return waiter

    def arm(self, waiter: Waiter, request: ClaimRequest) -> None:
        """Point ``waiter`` at its (possibly new) ticket; wake it if that was pushed already."""
        self.watcher.arm(waiter, request)

    # --- releasing and renewing -----------------------------------------------------------------

    def release(self, lease: BaseLease, *, blocking: bool = True) -> NotNow | None:
        """Delete ``lease``'s row; marks it lost (and logs) when it had been reclaimed."""
        record = lease._record  # noqa: SLF001 - recorded as lost if it was reclaimed

        def release_in_turn(conn: Connection) -> bool:
            # Decided in the turn: a renewal that found the lease lost recorded it already.
            return self.core.release(conn, lease.id, lease.token, None if lease.lost else record)

        released = self.write(release_in_turn, blocking=blocking)
        if isinstance(released, NotNow):
            return released
        with self.lock:
            self._leases.pop(lease.token, None)
        if not released:
            lease._mark_lost()  # noqa: SLF001
            log.warning("%r was reclaimed before its release (it had expired)", lease)
        return None

    def report(
        self,
        key: ModelKey,
        *,
        kind: Kind,
        retry_after: float | None,
        reason: str,
        blocking: bool = True,
    ) -> Cooldown | NotNow:
        """Record a provider's refusal on ``key`` for every process (see ``Core.report``)."""
        return self.write(
            lambda conn: self.core.report(
                conn, key, kind=kind, retry_after=retry_after, reason=reason
            ),
            blocking=blocking,
        )

    def drop(self, lease_id: int, token: str) -> None:
        """A lease was garbage-collected unreleased: give it back soon, from the heartbeat.

        Called from ``__del__``, which may run in any thread at any moment (holding this
        runtime's locks included), so it only queues the work and writes a byte to a pipe.
        """
        if self.closed or self.core.pid != os.getpid():
            return
        self._dropped.append((lease_id, token))
        with contextlib.suppress(OSError):
            os.write(self._beat_w, b"d")

    def _give_back_dropped(self, lease_id: int, token: str) -> None:
        with contextlib.suppress(LimiterError):
            self.write(lambda conn: self.core.release(conn, lease_id, token))

    def renew(self) -> list[BaseLease]:
        """Renew every lease and ticket this runtime holds now; returns leases found lost.

        The leases are listed, and those found lost marked, inside the turn to write: a lease
        released meanwhile (marked released before its own write) is then never taken for lost,
        and a release that comes after sees the mark, so a loss is recorded once."""
        found: list[BaseLease] = []

        def renew_in_turn(conn: Connection) -> None:
            found.clear()  # a retried transaction starts over
            with self.lock:
                held = {t: lease for t, lease in self._leases.items() if not lease.released}
            records = {token: lease._record for token, lease in held.items()}  # noqa: SLF001
            expires, lost_tokens = self.core.renew(conn, records)
            with self.lock:
                for token, lease in held.items():
                    if token in lost_tokens:
                        lease._mark_lost()  # noqa: SLF001
                        self._leases.pop(token, None)
                        found.append(lease)
                    else:
                        lease.expires_ts = expires

        outcome = self.write(renew_in_turn)
        assert not isinstance(outcome, NotNow)
        for lease in found:
            self.core.log_lost(lease)
        return found

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        outcome = self.write(self.core.reap)
        assert not isinstance(outcome, NotNow)
        return outcome

    # --- threads ---------------------------------------------------------------------------------

    def _ensure_thread(self, attribute: str, target: Callable[[], None], role: str) -> None:
        with self.lock:
            if getattr(self, attribute) is None and not self.closed:
                thread = threading.Thread(
                    target=target, name=f"collet-limiter-{role}-{self.core.owner[:8]}", daemon=True
                )
                setattr(self, attribute, thread)
                thread.start()

    def _interrupt(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.interrupt_w, b"!")

    def _beat(self) -> None:
        """The heartbeat: renew every TTL/3 while anything is held; give back dropped leases."""
        poller = select.poll()
        poller.register(self._beat_r, select.POLLIN)
        period = self.core.ttl / 3
        due = monotonic() + period
        while True:  # until closed (close() writes to the pipe)
            with contextlib.suppress(InterruptedError):
                poller.poll(max(0.0, due - monotonic()) * 1000)
            drain(self._beat_r)
            if self.closed:
                return
            while self._dropped:
                self._give_back_dropped(*self._dropped.popleft())
            if monotonic() < due:
                continue
            due = monotonic() + period
            with self.lock:
                busy = bool(self._leases) or bool(self.waiters)
            if not busy:
                continue
            try:
                self.renew()
            except LimiterClosedError:
                return
            except Exception as exc:  # noqa: BLE001 - a heartbeat must outlive a bad moment
                log.warning("heartbeat of %s on %s failed: %s", self.face, self.core.display, exc)

    # --- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the threads and release every lease and ticket this runtime holds. Idempotent.

        Safe against acquires racing it in other threads: the closed flag is set first, and the
        rows are given back in the turn to write, which no write takes after that flag.
        """
        with self.lock:
            if self.closed:
                return
            self.closed = True
            waiters = list(self.waiters.values())
        for waiter in waiters:
            waiter.wake()
        if self.core.pid != os.getpid():
            _LIVE.discard(self)
            self._close_ended.set()
            return
        try:
            self._interrupt()
            with contextlib.suppress(OSError):
                os.write(self._beat_w, b"c")
            for thread in (self._beat_thread, self._watch_thread):
                if thread is not None and thread is not threading.current_thread():
                    thread.join()
            with self._write_lock:
                try:
                    self._give_back()
                finally:
                    with self.lock:
                        for lease in list(self._leases.values()):
                            lease._released = True  # noqa: SLF001
                        self._leases = weakref.WeakValueDictionary()
                    self._close_spares()
                    self.engine.dispose()
                    self.wake_socket.close()
                    self.pids.close()
                    self._writer.close()
                    _close_fds(self.interrupt_r, self.interrupt_w, self._beat_r, self._beat_w)
                    _LIVE.discard(self)
            worker = self._worker
            if worker is not None:
                worker.stop()
        finally:
            self._close_ended.set()

    def wait_closed(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a ``close()`` begun in another thread to end."""
        self._close_ended.wait(timeout)

    def _give_back(self) -> None:
        """At close: delete this runtime's rows from the database its path now names."""
        core = self.core
        wake: list[tuple[str, int]] = []
        try:
            if self.remote:
                with contextlib.suppress(LimiterError):
                    self._retrying(core.release_owner, wake=wake, closing=True)
                return
            if not core.file_replaced():
                self._write_in_turn(core.release_owner, wake, blocking=True, closing=True)
                return
            # The file was deleted or replaced: our rows went with the old one, except any
            # carried into the new one by a reopen. Never recreate a deleted database to close.
            if self.path.exists():
                engine = create_engine_for(core.target, busy_timeout_ms=core.busy_timeout_ms)
                try:
                    with contextlib.suppress(LimiterError), self.connection(engine) as conn:
                        core.release_owner(conn)
                finally:
                    engine.dispose()
        finally:
            notify(wake)


def _file_id(path: Any) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _connection_lost(conn: Connection) -> bool:
    """Whether ``conn``'s link to the server broke (rather than a statement failing)."""
    if conn.invalidated or conn.closed:
        return True
    try:
        raw: Any = conn.connection.dbapi_connection
    except Exception:  # noqa: BLE001 - SQLAlchemy refuses a connection it invalidated
        return True
    return raw is None or bool(getattr(raw, "broken", False) or getattr(raw, "closed", False))


# SQLSTATE classes of connection refusals that waiting cannot cure: bad credentials (28), no such
# database (3D), and a server that does not speak the protocol asked for (08P01).
_PERMANENT_REFUSALS: Final = ("28", "3D", "08P01")


def _may_pass(exc: BaseException) -> bool:
    """Whether a failure to connect may pass with time (the server restarting, down for now)."""
    cause = exc.__cause__
    cause = getattr(cause, "orig", None) or cause
    state = getattr(cause, "sqlstate", None) or ""
    if state.startswith(_PERMANENT_REFUSALS):
        return False
    text = str(cause).lower()
    return not ("password" in text or "does not exist" in text or "authentication" in text)


def _pipe() -> tuple[int, int]:
    read, write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    return read, write


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def abandon(runtime: Runtime) -> None:
    """A face was garbage-collected without ``close()``: close its runtime on a thread of its own.

    Runs from the garbage collector, possibly in a thread that holds this runtime's locks, so
    the closing (which takes them) is never done inline.
    """
    if runtime.closed or runtime.core.pid != os.getpid():
        return
    with contextlib.suppress(RuntimeError):  # shutting down: the exit handler closes it
        threading.Thread(
            target=_close_abandoned, args=(runtime,), name="collet-limiter-close", daemon=True
        ).start()


def _close_abandoned(runtime: Runtime) -> None:
    """Close a runtime nobody holds any more; a database error is logged, not raised (nobody
    would catch it: the thread would print a traceback)."""
    try:
        runtime.close()
    except LimiterError as exc:
        log.warning("could not give back the rows of an unclosed %s: %s", runtime.face, exc)


def _after_fork_in_child() -> None:
    for runtime in list(_LIVE):
        runtime.after_fork()


def _close_all_at_exit() -> None:
    for runtime in list(_LIVE):
        with contextlib.suppress(Exception):
            runtime.close()
            # A close begun in another thread (a daemon one, such as the one ``abandon``
            # starts when a face is collected as the program ends) would be cut short at exit.
            runtime.wait_closed(runtime.core.busy_timeout_ms / 1000 + 5.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
logging.getLogger("collet_limiter").addHandler(logging.NullHandler())
