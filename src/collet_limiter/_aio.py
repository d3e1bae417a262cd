"""``AsyncLimiter``: the awaiting face. Everything but waiting is the shared ``Runtime``'s.

The same runtime as ``Limiter`` runs the transactions, the heartbeat and the watcher, on threads
of its own, so an event loop blocked by a synchronous call never stops a heartbeat. A
transaction runs in one hop: inline on the event loop when the turn to write is free (it is a
few statements of microseconds each), else on the runtime's worker thread, which waits for the
turn in the kernel. A transaction is never cut off: a cancelled caller waits for it under a
shield, and the acquire loop then removes what it left (its ticket, a lease nobody will hold).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import Core, Retries, log
from ._errors import AsyncContextError, ConfigError, LimiterClosedError, LimiterError
from ._lease import BaseLease
from ._results import Acquired, QueueWait
from ._runtime import NOT_NOW, Claim, NotNow, Runtime, Wait, Waiter, abandon

if TYPE_CHECKING:
    import concurrent.futures
    import os
    from collections.abc import Awaitable, Callable, Generator, Iterable
    from types import TracebackType

    from sqlalchemy.engine import Connection

    from ._claim import ClaimRequest
    from ._config import Config
    from ._cooldown import Kind
    from ._keys import ModelKey
    from ._results import Cooldown, Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._runtime import Step
    from ._store import LeaseRecord

T = TypeVar("T")

_WITH_MESSAGE = "{name} must be used with 'async with', not 'with'"


class AsyncLease(BaseLease):
    """A permit for one call on ``lease.key``; ``await lease.release()`` or use ``async with``."""

    __slots__ = ("_limiter",)

    def __init__(self, limiter: AsyncLimiter, record: LeaseRecord, runtime: Runtime) -> None:
        super().__init__(record, runtime)
        self._limiter = limiter  # keeps the limiter open while a lease of it is held

    async def release(self) -> None:
        """Give the slot back. Idempotent; a no-op for a lost lease.

        If the database refuses (``StorageError``), the lease stays held and renewed, and
        ``release()`` can be awaited again.
        """
        if self._begin_release():
            try:
                await self._limiter._transact(  # noqa: SLF001 - the lease's own limiter
                    partial(self._runtime.release, self)
                )
            except BaseException:
                self._released = False
                raise

    async def report_rate_limited(
        self,
        retry_after: float | None = None,
        *,
        quota: bool = False,
        reason: str | None = None,
        _kind: Kind | None = None,
    ) -> Cooldown:
        """Tell every process that the provider refused a call on ``lease.key`` for load.

        As ``Lease.report_rate_limited``: the model cools down for ``retry_after`` seconds
        (``[limiter] cooldown_secs`` when None; ``quota_cooldown_secs`` with ``quota=True``),
        and with ``[limiter] adaptive`` its limit drops. Does not release the lease.
        """
        refusal = self._refusal(retry_after, quota=quota, reason=reason, kind=_kind)
        return await self._limiter._transact(  # noqa: SLF001 - the lease's own limiter
            partial(self._runtime.report, self.key, **refusal)
        )

    async def _exit(self, exc: BaseException | None) -> None:
        """Report ``exc`` if it is the provider refusing for load, then release."""
        refusal = self._refusal_in(exc)
        try:
            if refusal is not None:
                try:
                    await self._limiter._transact(  # noqa: SLF001 - the lease's own limiter
                        partial(self._runtime.report, self.key, **refusal)
                    )
                except LimiterError as error:
                    log.warning(
                        "could not record the provider's refusal on %s: %s", self.key, error
                    )
        finally:
            await self.release()

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release; first report ``exc`` if it is a provider's rate-limit refusal (see
        ``Lease.__exit__``). The exception propagates either way."""
        await self._exit(exc)

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
            await self._lease._exit(exc)  # noqa: SLF001 - the lease this context made

    def __enter__(self) -> AsyncLease:
        raise AsyncContextError(_WITH_MESSAGE.format(name="AsyncLimiter.acquire()"))

    def __exit__(self, *exc: object) -> None:
        """Never reached: ``__enter__`` refuses plain ``with``."""


class _TaskWaiter(Waiter):
    """A task waiting in the queue; the watcher thread wakes it through its event loop."""

    __slots__ = ("event", "loop")

    def __init__(self, request: ClaimRequest) -> None:
        super().__init__(request)
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed: nobody waits any more
            self.loop.call_soon_threadsafe(self.event.set)


async def _finish(future: concurrent.futures.Future[T]) -> T:
    """Await a job of the worker thread; if cancelled meanwhile, wait for it, then re-raise.

    A transaction cut off halfway would leave SQLite's locks held, and a claim's outcome must
    be known to be undone, so the job always runs to its end.
    """
    waiting = asyncio.wrap_future(future)
    cancelled = False
    while not waiting.done():
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:  # noqa: PERF203 - rarely more than one turn
            # Ours even when the job ended in the same turn: the caller was cancelled, and
            # what the job did (a lease granted) is undone by the caller's Discard.
            cancelled = True
        except Exception:  # noqa: BLE001, S110 - the job's own error, raised below
            pass
    if cancelled:
        raise asyncio.CancelledError
    return waiting.result()


class AsyncLimiter:
    """The asyncio face of ``Limiter``: the same database, rules, queue and transactions.

    Use ``async with AsyncLimiter(...) as limiter`` (or ``await limiter.close()`` at the end). The
    database is opened on first use (or by ``await limiter.open()``). Its heartbeat and watcher
    are threads, as the sync face's, so a lease is renewed even while the event loop is blocked.
    An AsyncLimiter garbage-collected unclosed (with no lease of it left) is closed then.
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
        max_connections: int | None = None,
    ) -> None:
        self._core = Core(
            db,
            config=config,
            clock=clock,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        if max_connections is not None:
            if max_connections < 1:
                raise ConfigError(f"max_connections must be >= 1 (got {max_connections!r})")
            warnings.warn(
                "AsyncLimiter(max_connections=...) no longer has an effect: an AsyncLimiter "
                "uses at most four connections (event loop, worker, watcher, heartbeat)",
                DeprecationWarning,
                stacklevel=2,
            )
        self._runtime: Runtime | None = None
        self._opening = threading.Lock()
        self._closed = False

    # --- opening, closing, running transactions ------------------------------------------------

    async def _open(self) -> Runtime:
        runtime = self._runtime
        if runtime is not None and not self._closed:
            runtime.check()  # rebuilds it in a forked child
            return runtime
        if self._closed:
            raise LimiterClosedError(f"AsyncLimiter on {self._core.display} is closed")
        return await asyncio.to_thread(self._open_in_thread)

    def _open_in_thread(self) -> Runtime:
        with self._opening:
            if self._runtime is None:
                runtime = Runtime(self._core, face="AsyncLimiter")
                weakref.finalize(self, abandon, runtime)
                self._runtime = runtime
            return self._runtime

    async def _transact(self, job: Callable[..., T | NotNow]) -> T:
        """Run one transaction: inline when the turn to write is free, else on the worker.

        ``job(blocking)`` runs it; with ``blocking=False`` it returns ``NOT_NOW`` instead of
        waiting for the turn. The worker's job is awaited under a shield (see ``_finish``).
        """
        runtime = await self._open()
        if not runtime.remote:  # a server's round trips never run on the loop
            outcome = job(blocking=False)  # inline on the loop: never blocks
            if outcome is not NOT_NOW:
                return outcome  # type: ignore[return-value]
        waited = await _finish(runtime.submit(partial(job, blocking=True)))
        assert not isinstance(waited, NotNow)
        return waited

    async def open(self) -> AsyncLimiter:
        """Open (create or upgrade) the database now rather than on first use."""
        await self._open()
        return self

    async def close(self) -> None:
        """Stop the threads, release every lease and ticket this limiter holds. Idempotent.

        Transactions already started finish first (closing runs after them on the worker).
        """
        if self._closed:
            return
        self._closed = True
        runtime = self._runtime
        if runtime is None:
            return
        with contextlib.suppress(LimiterClosedError):  # closed already (at exit, in a child)
            await _finish(runtime.submit(runtime.close))

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
        runtime = self._runtime
        if self._closed:
            state = "closed"
        elif runtime is None:
            state = "not opened yet"
        else:
            state = f"holding {runtime.held}, waiting {len(runtime.waiters)}"
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
        request = self._core.request(key, None, fallback=False, enqueue=True, label=holder)
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
            primary, fallback_chain, fallback=True, enqueue=True, label=holder
        )

        async def start() -> AsyncLease:
            outcome = await self._acquire(request, wait=True, timeout=timeout)
            assert isinstance(outcome, AsyncLease)
            return outcome

        return _Acquiring(start)

    async def call(
        self,
        primary: ModelKey | str,
        fn: Callable[[AsyncLease], Awaitable[T]],
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        attempts: int = 3,
        timeout: float | None = None,
        holder: str | None = None,
    ) -> T:
        """``await fn(lease)`` under a lease, moving to another model when the provider refuses.

        As ``Limiter.call``: a rate-limit error raised by ``fn`` is reported (the model cools
        down for every process) and the call is made again on a new lease, up to ``attempts``
        calls; other exceptions and the last refusal propagate; ``timeout`` bounds the whole
        call's waiting for leases. Pass ``max_retries=0`` to the SDK client.
        """
        plan = Retries(attempts, timeout)
        while True:
            lease = await self.acquire(
                primary, fallback_chain, timeout=plan.remaining(), holder=holder
            )
            try:
                async with lease:  # reports a refusal, then releases
                    return await fn(lease)
            except Exception as exc:
                if not plan.again(exc):
                    raise

    async def _acquire(
        self, request: ClaimRequest, *, wait: bool, timeout: float | None
    ) -> AsyncLease | QueueWait:
        """Run the runtime's acquire loop, awaiting at each step."""
        runtime = await self._open()

        def factory(record: LeaseRecord) -> AsyncLease:
            return AsyncLease(self, record, runtime)

        steps: Generator[Step, Any, AsyncLease | QueueWait] = runtime.acquire_steps(
            request, wait=wait, timeout=timeout, factory=factory, new_waiter=_TaskWaiter
        )
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                if isinstance(step, Claim):
                    value = await self._transact(partial(runtime.claim, step.request, factory))
                elif isinstance(step, Wait):
                    assert isinstance(step.waiter, _TaskWaiter)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(step.waiter.event.wait(), step.seconds)
                    step.waiter.event.clear()
                else:
                    await self._transact(
                        partial(runtime.discard, step.request, step.outcome, step.reason)
                    )
            except BaseException as exc:  # noqa: BLE001 - thrown back into the loop
                error = exc

    async def renew(self) -> list[AsyncLease]:
        """Renew every lease and ticket this limiter holds now; returns leases found lost.

        The heartbeat thread does this every TTL/3.
        """
        runtime = await self._open()
        return await _finish(runtime.submit(runtime.renew))  # type: ignore[arg-type]

    # --- reading -------------------------------------------------------------------------------
    # Reads of a SQLite file run inline: WAL readers take no lock and never wait for a writer.
    # A server's run on a thread.

    async def _read(self, func: Callable[[Connection], T]) -> T:
        runtime = await self._open()
        if runtime.remote:
            return await asyncio.to_thread(runtime.read, func)
        return runtime.read(func)

    async def resolve_limit(self, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        return await self._read(lambda conn: self._core.resolve_limit(conn, key))

    async def leases(self) -> list[LeaseInfo]:
        """Every lease in the database (all processes), oldest first."""
        return await self._read(self._core.leases)

    async def waiters(self) -> list[TicketInfo]:
        """Every queued waiter (all processes), in the order they will be served."""
        return await self._read(self._core.waiters)

    async def status(self) -> Status:
        """The global cap and each model's limit, use and queue."""
        return await self._read(self._core.status)

    async def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates ``acquire_with_fallback`` would try now, in order, each with a reason."""
        return await self._read(lambda conn: self._core.explain(conn, primary, fallback_chain))

    async def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        runtime = await self._open()
        return await self._transact(partial(runtime.write, self._core.reap))
