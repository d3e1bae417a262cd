"""``AsyncLimiter``: the asyncio facade over aiosqlite.

Every transaction is the sync code of ``Core``, run through ``AsyncConnection.run_sync``; only
waiting and heartbeats are written for asyncio:

- Wake-ups are pushed (see ``_wake``): the limiter's datagram socket and its pidfds on holders
  are watched with ``loop.add_reader``, so a release elsewhere wakes the right task at once and a
  holder's death triggers a reap at once.
- One watcher task per AsyncLimiter backs this up while any of its tasks wait: it reads
  ``PRAGMA data_version`` every ``poll_interval`` and, when another connection committed, looks
  in one lock-free read for all of them which waiting tasks would now be granted, and wakes only
  those; it reaps when a lease is due to expire and at least every ``max_poll_interval`` when it
  cannot watch every holder. A thousand waiting tasks cost one poll, not a thousand.
- One heartbeat task per AsyncLimiter renews all its leases and tickets every TTL/3.
- A claim is never cancelled halfway: it runs shielded, and a cancelled acquire waits for it to
  finish and then removes whatever it left (its ticket, a lease nobody will hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import select
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import Core, log, monotonic
from ._engine import create_aiosqlite_engine, data_version
from ._errors import (
    AsyncContextError,
    ConfigError,
    LimiterClosedError,
    StorageError,
    translate_driver_errors,
)
from ._lease import BaseLease
from ._results import Acquired, QueueWait
from ._wake import PidWatch, WakeSocket, WriterLock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterable
    from types import TracebackType

    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from ._claim import ClaimRequest, ClaimResult
    from ._config import Config
    from ._keys import ModelKey
    from ._results import Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._store import LeaseRecord

T = TypeVar("T")

# See _limiter for both: the waiting task's own safety-net claim, and the sweep interval when
# every holder on this host is watched.
SAFETY_CLAIM_SECS = 30.0
WATCHED_SWEEP_SECS = 10.0

_WITH_MESSAGE = "{name} must be used with 'async with', not 'with'"


class AsyncLease(BaseLease):
    """A permit for one call on ``lease.key``; ``await lease.release()`` or use ``async with``."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AsyncLimiter, record: LeaseRecord) -> None:
        super().__init__(record)
        self._limiter = limiter

    async def release(self) -> None:
        """Give the slot back. Idempotent; a no-op for a lost lease.

        If the database refuses (``StorageError``), the lease stays held and renewed, and
        ``release()`` can be awaited again.
        """
        if self._begin_release():
            try:
                await self._limiter._release(self)  # noqa: SLF001 - the lease's own limiter
            except BaseException:
                self._released = False
                raise

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __enter__(self) -> AsyncLease:
        raise AsyncContextError(_WITH_MESSAGE.format(name="AsyncLease"))

    def __exit__(self, *exc: object) -> None:
        """Never reached: ``__enter__`` refuses plain ``with``."""


class _Acquiring:
    """What ``AsyncLimiter.acquire`` returns: await it, or use it with ``async with``."""

    __slots__ = ("_lease", "_start")

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._lease: AsyncLease | None = None

    def __await__(self) -> Generator[Any, None, AsyncLease]:
        lease: AsyncLease = yield from self._start().__await__()
        return lease

    async def __aenter__(self) -> AsyncLease:
        self._lease = await self._start()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            await self._lease.release()

    def __enter__(self) -> AsyncLease:
        raise AsyncContextError(_WITH_MESSAGE.format(name="AsyncLimiter.acquire()"))

    def __exit__(self, *exc: object) -> None:
        """Never reached: ``__enter__`` refuses plain ``with``."""


class _Waiter:
    """A task of this AsyncLimiter waiting in the queue, and the event that wakes it."""

    __slots__ = ("event", "request")

    def __init__(self, request: ClaimRequest) -> None:
        self.request = request
        self.event = asyncio.Event()


class AsyncLimiter:
    """The asyncio face of ``Limiter``: the same database, rules, queue and transactions.

    Use ``async with AsyncLimiter(...) as limiter`` (or ``await limiter.close()`` at the end). The
    database is opened on first use. ``max_connections`` bounds the SQLite connections this
    limiter uses at once; SQLite runs one writer at a time anyway.
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
        max_connections: int = 4,
    ) -> None:
        self._core = Core(
            db,
            config=config,
            clock=clock,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        if not self._core.target.is_sqlite:
            raise ConfigError(
                f"{self._core.display}: AsyncLimiter supports SQLite databases only",
                path=self._core.display,
            )
        if max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1 (got {max_connections!r})")
        self._max_connections = max_connections
        self._engine: AsyncEngine | None = None
        self._open_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_connections)
        self._write_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._wanted = asyncio.Event()  # set when a task starts waiting: the watcher wakes up
        self._closed = False
        self._leases: dict[str, AsyncLease] = {}  # by token, the proof of ownership
        self._waiters: dict[str, _Waiter] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._writer: WriterLock | None = None
        self._wake = WakeSocket()
        self._pids = PidWatch()
        self._poke = asyncio.Event()  # something happened that the watcher should look at
        self._sweep_now = False
        self._readers: set[int] = set()

    # --- opening, closing, running transactions ------------------------------------------------

    async def _ensure_open(self) -> AsyncEngine:
        if self._closed:
            raise LimiterClosedError(f"AsyncLimiter on {self._core.display} is closed")
        if self._core.pid != os.getpid():
            self._after_fork()
        if self._engine is not None:
            return self._engine
        async with self._open_lock:
            if self._engine is None:
                self._engine = await self._open_engine()
        return self._engine

    async def _open_engine(self) -> AsyncEngine:
        core = self._core
        with translate_driver_errors(core.display):
            core.prepare_file()
            assert core.target.path is not None
            if self._writer is not None:
                self._writer.close()
            self._writer = WriterLock(core.target.path, core.sharing)
            engine = create_aiosqlite_engine(
                core.target,
                busy_timeout_ms=core.busy_timeout_ms,
                pool_size=self._max_connections + 1,  # one more for the watcher
            )
            try:
                async with engine.connect() as conn:
                    await conn.run_sync(core.open_database)
            except BaseException:
                await engine.dispose()
                raise
        return engine

    async def _reopen(self) -> None:
        """Move to the new database file, carrying the leases this limiter holds into it."""
        async with self._open_lock:
            if not self._core.file_replaced() or self._engine is None:
                return  # another task moved first
            old, self._engine = self._engine, None
            await old.dispose()
            self._engine = engine = await self._open_engine()
            held = list(self._leases.values())
            async with self._turn_to_write(), engine.connect() as conn:
                records = await conn.run_sync(
                    self._core.readopt,
                    [lease._record for lease in held],  # noqa: SLF001
                )
            self._leases = {}
            for lease, record in zip(held, records, strict=True):
                lease._record, lease.expires_ts = record, record.expires_ts  # noqa: SLF001
                self._leases[record.token] = lease
        self._poke.set()  # the watcher reconnects to the new file

    def _after_fork(self) -> None:
        # A child must not use the parent's connections, tasks, locks or leases.
        if self._engine is not None:
            self._engine.sync_engine.dispose(close=False)
        self._engine = None
        if self._writer is not None:
            self._writer.close()  # flock() locks belong to the open file, shared with the parent
            self._writer = None
        self._wake.close()
        self._pids.close()
        self._wake, self._pids, self._readers = WakeSocket(), PidWatch(), set()
        self._leases, self._waiters, self._tasks = {}, {}, set()
        self._heartbeat = self._watcher = None
        self._core.reset_identity()

    async def _run(self, func: Callable[..., T], *args: Any, write: bool = False) -> T:
        """Run one ``Core`` transaction on a pooled connection, through ``run_sync``.

        The transaction runs in a task of its own, shielded: a caller cancelled meanwhile (a
        timeout, ``close()``) waits for it to commit or roll back, and only then sees the
        cancellation. Cut off halfway, it would go back to the pool still holding SQLite's
        locks, and every later writer would wait on it.

        Writes from this limiter's tasks take turns on an asyncio lock: SQLite admits one writer
        at a time anyway, and connections of one process competing for its lock would be left
        to SQLite's busy handler, whose growing sleeps can starve one of them for seconds.
        """
        task = asyncio.ensure_future(self._transact(func, *args, write=write))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await task
            raise

    async def _transact(self, func: Callable[..., T], *args: Any, write: bool) -> T:
        if write and self._core.file_replaced():
            await self._reopen()
        engine = await self._ensure_open()
        async with self._slots, self._writing(write):
            with translate_driver_errors(self._core.display):
                async with engine.connect() as conn:
                    return await conn.run_sync(func, *args)

    def _writing(self, write: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._turn_to_write() if write else contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def _turn_to_write(self) -> AsyncIterator[None]:
        """This task's turn to write: the limiter's lock, then the cross-process writer lock.

        The writer lock is taken without blocking the loop: short waits, doubling up to 2 ms,
        while another process writes (a write transaction lasts well under a millisecond).
        """
        async with self._write_lock:
            writer = self._writer
            assert writer is not None
            delay, deadline = 0.0001, monotonic() + self._core.busy_timeout_ms / 1000
            while not writer.try_acquire():
                if monotonic() >= deadline:
                    raise self._core.writer_busy()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.002)
            try:
                yield
            finally:
                writer.release()

    async def open(self) -> AsyncLimiter:
        """Open (create or upgrade) the database now rather than on first use."""
        await self._ensure_open()
        return self

    async def close(self) -> None:
        """Stop the tasks, release every lease and ticket this limiter holds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        for waiter in list(self._waiters.values()):
            waiter.event.set()
        # The watcher sees _closed and stops at its next turn: it runs transactions on its own
        # connection, and must not be cut off inside one. The heartbeat's go through _run.
        self._poke.set()
        self._wanted.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._stop_readers()
        pending = [t for t in (self._heartbeat, self._watcher, *self._tasks) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        engine = self._engine
        if engine is not None and self._core.pid == os.getpid():
            try:
                await self._give_back(engine)
            finally:
                for lease in self._leases.values():
                    lease._released = True  # noqa: SLF001
                self._leases.clear()
                await engine.dispose()
                if self._writer is not None:
                    self._writer.close()
        self._wake.close()
        self._pids.close()

    async def _give_back(self, engine: AsyncEngine) -> None:
        """At close: delete this limiter's rows from the database its path now names."""
        core = self._core
        replaced = core.file_replaced()
        if replaced and (core.target.path is None or not core.target.path.exists()):
            return  # deleted, and our rows with it: never recreate a database just to close
        if replaced:  # our rows went with the old file, except any a reopen carried over
            engine = create_aiosqlite_engine(
                core.target, busy_timeout_ms=core.busy_timeout_ms, pool_size=1
            )
        try:
            with (
                contextlib.suppress(*((StorageError,) if replaced else ())),
                translate_driver_errors(core.display),
            ):
                async with self._turn_to_write(), engine.connect() as conn:
                    await conn.run_sync(core.release_owner)
        finally:
            if replaced:
                await engine.dispose()

    async def __aenter__(self) -> AsyncLimiter:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> AsyncLimiter:
        raise AsyncContextError(_WITH_MESSAGE.format(name="AsyncLimiter"))

    def __exit__(self, *exc: object) -> None:
        """Never reached: ``__enter__`` refuses plain ``with``."""

    def __repr__(self) -> str:
        held, waiting = len(self._leases), len(self._waiters)
        state = "closed" if self._closed else f"holding {held}, waiting {waiting}"
        return f"<AsyncLimiter {self._core.display} {state}>"

    @property
    def db(self) -> str:
        """The database this limiter uses (path or URL)."""
        return self._core.display

    @property
    def config(self) -> Config:
        """The config this limiter was opened with."""
        return self._core.config

    @property
    def lease_ttl(self) -> float:
        """Seconds a lease lives without renewal."""
        return self._core.ttl

    # --- acquiring -----------------------------------------------------------------------------

    async def acquire_with_fallback(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        holder: str | None = None,
    ) -> Acquired[AsyncLease] | QueueWait:
        """Grant the first candidate with room (primary, chain, capability, CLI), never waiting.

        Returns ``Acquired(lease)``, or ``QueueWait(primary)`` when every candidate is full, or at
        once when the global cap is.
        """
        request = self._core.request(
            primary, fallback_chain, fallback=True, enqueue=False, label=holder
        )
        outcome = await self._acquire(request, wait=False, timeout=None)
        return Acquired(outcome) if isinstance(outcome, AsyncLease) else outcome

    async def acquire_wait(
        self, key: ModelKey | str, timeout: float | None = None, *, holder: str | None = None
    ) -> AsyncLease:
        """Wait in the fair queue for ``key`` itself (no fallback).

        Raises ``AcquireTimeout`` after ``timeout`` seconds; None waits as long as it takes.
        Cancelling the task removes its ticket.
        """
        request = self._core.request(
            key, None, fallback=False, enqueue=True, label=holder, wake_addr=self._wake.address
        )
        outcome = await self._acquire(request, wait=True, timeout=timeout)
        assert isinstance(outcome, AsyncLease)
        return outcome

    def acquire(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        timeout: float | None = None,
        holder: str | None = None,
    ) -> _Acquiring:
        """``acquire_with_fallback``, then the fair queue for the primary.

        ``lease = await limiter.acquire(...)``, or ``async with limiter.acquire(...) as lease``.
        """
        request = self._core.request(
            primary,
            fallback_chain,
            fallback=True,
            enqueue=True,
            label=holder,
            wake_addr=self._wake.address,
        )

        async def start() -> AsyncLease:
            outcome = await self._acquire(request, wait=True, timeout=timeout)
            assert isinstance(outcome, AsyncLease)
            return outcome

        return _Acquiring(start)

    async def _claim(self, request: ClaimRequest) -> ClaimResult:
        return await self._run(self._core.claim, request, write=True)

    async def _acquire(
        self, request: ClaimRequest, *, wait: bool, timeout: float | None
    ) -> AsyncLease | QueueWait:
        core = self._core
        deadline = core.deadline(timeout)
        await self._ensure_open()
        waiter: _Waiter | None = None
        inflight: asyncio.Task[ClaimResult] | None = None
        try:
            inflight = asyncio.ensure_future(self._claim(request))
            result = await asyncio.shield(inflight)
            inflight = None
            while result.lease is None:
                if not wait:
                    return QueueWait(request.primary, core.refusal(result))
                if deadline is not None and monotonic() >= deadline:
                    raise core.timeout_error(request, result, timeout)
                request = core.with_ticket(request, result)
                if waiter is None:
                    waiter = self._register(request)
                waiter.request = request
                await self._wait_for_turn(waiter, deadline)
                inflight = asyncio.ensure_future(self._claim(request))
                result = await asyncio.shield(inflight)
                inflight = None
            return self._adopt(result.lease)
        except BaseException:
            if wait or inflight is not None:
                await self._undo(request, inflight)
            raise
        finally:
            if waiter is not None:
                self._waiters.pop(request.ticket_token, None)

    async def _undo(
        self, request: ClaimRequest, inflight: asyncio.Task[ClaimResult] | None
    ) -> None:
        """After a cancelled or failed acquire: let its claim finish, then remove what it left."""

        async def undo() -> None:
            if inflight is not None:
                with contextlib.suppress(BaseException):
                    await inflight  # a claim is never cut off halfway through its transaction
            with contextlib.suppress(Exception):
                await self._run(self._core.discard, request, write=True)

        task = asyncio.ensure_future(undo())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # If we are cancelled again meanwhile, the cleanup still runs to completion.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    def _register(self, request: ClaimRequest) -> _Waiter:
        waiter = _Waiter(request)
        self._waiters[request.ticket_token] = waiter
        self._wanted.set()
        self._poke.set()  # the watcher looks at once, with the new waiter in view
        self._ensure_task("_watcher", self._watch)
        self._ensure_task("_heartbeat", self._beat)
        return waiter

    async def _wait_for_turn(self, waiter: _Waiter, deadline: float | None) -> None:
        """Sleep until this waiter is woken (its turn may have come), or the deadline."""
        remaining = SAFETY_CLAIM_SECS
        if deadline is not None:
            remaining = min(remaining, max(0.0, deadline - monotonic()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), remaining)
        waiter.event.clear()
        if self._closed:
            raise LimiterClosedError(
                f"AsyncLimiter on {self._core.display} was closed while waiting"
            )

    def _adopt(self, record: LeaseRecord | None) -> AsyncLease:
        # No await between the claim's return and here: a cancellation cannot strand the lease.
        assert record is not None
        lease = AsyncLease(self, record)
        if self._closed:
            task = asyncio.ensure_future(lease.release())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            raise LimiterClosedError(
                f"AsyncLimiter on {self._core.display} was closed while acquiring"
            )
        self._leases[lease.token] = lease
        self._ensure_task("_heartbeat", self._beat)
        return lease

    async def _release(self, lease: AsyncLease) -> None:
        released = await self._run(self._core.release, lease.id, lease.token, write=True)
        self._leases.pop(lease.token, None)
        if not released:
            lease._mark_lost()  # noqa: SLF001
            log.warning("%r was reclaimed before its release (it had expired)", lease)

    # --- background tasks ------------------------------------------------------------------------

    def _ensure_task(self, attribute: str, factory: Callable[[], Any]) -> None:
        current: asyncio.Task[None] | None = getattr(self, attribute)
        if (current is None or current.done()) and not self._closed:
            setattr(self, attribute, asyncio.ensure_future(factory()))

    async def _watch(self) -> None:
        """Wake the waiting tasks whose turn has come (see the module docstring).

        Runs for the limiter's life once started, holding a connection only while tasks wait.
        """
        await self._ensure_open()
        self._start_reader(self._wake.fileno(), self._on_datagram)
        while not self._closed:
            if not self._waiters:
                # No await between this check and clear(): a task registering now sets it after.
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                async with (await self._ensure_open()).connect() as conn:
                    await self._watch_on(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - wake everyone: their own claims report errors
                log.warning("waiter watch of %r failed: %s", self, exc)
                for waiter in self._waiters.values():
                    waiter.event.set()
                await asyncio.sleep(self._core.max_poll_interval)

    async def _watch_on(self, conn: AsyncConnection) -> None:
        core = self._core
        version, look, looked = -1, True, -math.inf
        sweep_due, expiry_due = monotonic() + core.max_poll_interval, math.inf
        engine = self._engine
        while self._waiters and not self._closed and self._engine is engine:
            if self._sweep_now:
                self._sweep_now, look = False, True
                async with self._turn_to_write():
                    await conn.run_sync(core.reap)
                interval = WATCHED_SWEEP_SECS if self._pids.complete else core.max_poll_interval
                sweep_due = monotonic() + interval
            if look:
                look, looked = False, monotonic()
                version = await conn.run_sync(data_version)  # before looking, as in _limiter
                waiters = list(self._waiters.values())
                flags, outlook = await conn.run_sync(core.could_grant, [w.request for w in waiters])
                for waiter, could in zip(waiters, flags, strict=True):
                    if could:
                        waiter.event.set()
                self._drop_pid_readers()  # before update() closes (and the kernel reuses) fds
                self._sweep_now = self._pids.update(outlook.holders)
                for fd in self._pids.fds():
                    self._start_reader(fd, self._on_death)
                if outlook.next_expiry is not None:
                    expiry_due = monotonic() + max(0.0, outlook.next_expiry - core.clock()) + 0.001
                if self._sweep_now:
                    continue
            now = monotonic()
            timeout = max(0.0, min(core.poll_interval, sweep_due - now, expiry_due - now))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timeout)
            if self._poke.is_set():
                self._poke.clear()
                look = True
            now = monotonic()
            if now >= sweep_due or now >= expiry_due:
                self._sweep_now, expiry_due = True, math.inf
            if monotonic() - looked >= core.poll_interval:  # at most once per poll (_limiter)
                look = await conn.run_sync(data_version) != version

    def _start_reader(self, fd: int, callback: Callable[[], None]) -> None:
        if fd >= 0 and fd not in self._readers:
            asyncio.get_running_loop().add_reader(fd, callback)
            self._readers.add(fd)

    def _stop_readers(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop = asyncio.get_running_loop()
            for fd in self._readers:
                loop.remove_reader(fd)
        self._readers.clear()

    def _drop_pid_readers(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._readers - {self._wake.fileno()}:
            loop.remove_reader(fd)
            self._readers.discard(fd)

    def _on_datagram(self) -> None:
        tickets = self._wake.drain()
        for waiter in self._waiters.values():
            if waiter.request.ticket in tickets:
                waiter.event.set()

    def _on_death(self) -> None:
        # A pidfd stays readable once its process exited: stop listening until the next look.
        readable, _, _ = select.select(self._pids.fds(), [], [], 0)
        self._pids.exited(readable)
        self._drop_pid_readers()
        self._sweep_now = True
        self._poke.set()

    async def _beat(self) -> None:
        # close() cancels this task; a renewal it interrupts still completes (see _run).
        while not self._closed:
            await asyncio.sleep(self._core.ttl / 3)
            if not self._leases and not self._waiters:
                continue
            try:
                await self.renew()
            except Exception as exc:  # noqa: BLE001 - a heartbeat must outlive a bad moment
                log.warning("heartbeat of %r failed: %s", self, exc)

    async def renew(self) -> list[AsyncLease]:
        """Renew every lease and ticket this limiter holds now; returns leases found lost.

        The heartbeat task does this every TTL/3.
        """
        held = dict(self._leases)
        expires, lost_tokens = await self._run(self._core.renew, list(held), write=True)
        lost = []
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

    async def resolve_limit(self, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        return await self._run(self._core.resolve_limit, key)

    async def leases(self) -> list[LeaseInfo]:
        """Every lease in the database (all processes), oldest first."""
        return await self._run(self._core.leases)

    async def waiters(self) -> list[TicketInfo]:
        """Every queued waiter (all processes), in the order they will be served."""
        return await self._run(self._core.waiters)

    async def status(self) -> Status:
        """The global cap and each model's limit, use and queue."""
        return await self._run(self._core.status)

    async def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates ``acquire_with_fallback`` would try now, in order, each with a reason."""

        def explain(conn: Connection) -> Explanation:
            return self._core.explain(conn, primary, fallback_chain)

        return await self._run(explain)

    async def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        return await self._run(self._core.reap, write=True)
