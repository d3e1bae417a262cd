"""``Limiter``: the blocking face. Everything but waiting is the shared ``Runtime``'s."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import Core, Retries, log
from ._errors import LimiterError
from ._lease import BaseLease
from ._results import Acquired, QueueWait
from ._runtime import Claim, NotNow, Runtime, Wait, Waiter, abandon

T = TypeVar("T")

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from ._claim import ClaimRequest
    from ._config import Config
    from ._cooldown import Kind
    from ._keys import ModelKey
    from ._results import Cooldown, Explanation, LeaseInfo, Reaped, Status, TicketInfo
    from ._store import LeaseRecord


class Lease(BaseLease):
    """A permit for one call on ``lease.key``; release it, or use it as a context manager.

    A lease is advisory: it is a row that other processes respect. A holder that stalls for
    longer than the lease TTL (SIGSTOP, a frozen VM) may find its lease reclaimed; the
    heartbeat then marks it ``lost`` and logs a warning, and its release does nothing.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: Limiter, record: LeaseRecord) -> None:
        super().__init__(record, limiter._runtime)  # noqa: SLF001 - the lease's own limiter
        self._limiter = limiter  # keeps the limiter open while a lease of it is held

    def release(self) -> None:
        """Give the slot back. Idempotent; a no-op for a lost lease or in a forked child.

        If the database refuses (``StorageError``), the lease stays held and renewed, and
        ``release()`` can be called again.
        """
        if self._begin_release():
            try:
                self._runtime.release(self)
            except BaseException:
                self._released = False
                raise

    def report_rate_limited(
        self,
        retry_after: float | None = None,
        *,
        quota: bool = False,
        reason: str | None = None,
        _kind: Kind | None = None,
    ) -> Cooldown:
        """Tell every process that the provider refused a call on ``lease.key`` for load.

        The model cools down for ``retry_after`` seconds (``[limiter] cooldown_secs`` when
        None): no new lease on it until then, so fallbacks take the work and ``acquire_wait``
        waits, keeping its place. A second report extends a cooldown, never shortens it.
        ``quota=True`` is a hard quota or billing refusal: it cools the model for
        ``[limiter] quota_cooldown_secs``. With ``[limiter] adaptive`` the model's limit also
        drops to one less than its holders now. Does not release the lease; works after it.
        """
        outcome = self._runtime.report(
            self.key, **self._refusal(retry_after, quota=quota, reason=reason, kind=_kind)
        )
        assert not isinstance(outcome, NotNow)
        return outcome

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release; first, if ``exc`` is the provider refusing the call for load (a 429, 529 or
        quota error of the openai or anthropic SDK, an httpx 429), report it with the delay
        the response asked for. The exception propagates either way."""
        refusal = self._refusal_in(exc)
        try:
            if refusal is not None:
                _report_quietly(self._runtime, self.key, refusal)
        finally:
            self.release()


def _report_quietly(runtime: Runtime, key: ModelKey, refusal: dict[str, Any]) -> None:
    """Report a refusal found in an exception; a database error is logged, never raised
    over the caller's own exception."""
    try:
        runtime.report(key, **refusal)
    except LimiterError as exc:
        log.warning("could not record the provider's refusal on %s: %s", key, exc)


class _ThreadWaiter(Waiter):
    """A thread waiting in the queue."""

    __slots__ = ("event",)

    def __init__(self, request: ClaimRequest) -> None:
        super().__init__(request)
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


class Limiter:
    """Per-model concurrency limits shared by every process that opens the same database.

    ``db`` is a path or a SQLAlchemy URL; when omitted, ``$COLLET_LIMITER_DB``, then the config's
    ``[limiter] db``, then ``$XDG_STATE_HOME/collet-limiter/limiter.db``. ``config`` defaults to
    ``load_config()`` (``$COLLET_LIMITER_CONFIG`` or built-in defaults). ``clock`` returns seconds
    since the epoch and drives lease expiry (tests pass a fake one); waiting and timeouts use
    real time. Opening creates or upgrades the schema and writes the config's models and global
    cap when they differ from what the database holds: the last config written is what every
    process obeys.

    Thread-safe. Close it (or use ``with``) to stop its heartbeat and give back what it holds; a
    Limiter garbage-collected unclosed (with no lease of it left) is closed then.
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
        self._core = Core(
            db,
            config=config,
            clock=clock,
            lease_ttl=lease_ttl,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        self._runtime = Runtime(self._core, face="Limiter")
        weakref.finalize(self, abandon, self._runtime)

    def close(self) -> None:
        """Stop the heartbeat and release every lease and ticket this Limiter holds. Idempotent."""
        self._runtime.close()

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
        runtime = self._runtime
        state = (
            "closed"
            if runtime.closed
            else f"holding {runtime.held}, waiting {len(runtime.waiters)}"
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
        """Run the runtime's acquire loop in this thread, blocking at each step."""
        runtime = self._runtime
        runtime.check()
        steps = runtime.acquire_steps(
            request, wait=wait, timeout=timeout, factory=self._lease, new_waiter=_ThreadWaiter
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
                    value = runtime.claim(step.request, step.factory)
                elif isinstance(step, Wait):
                    assert isinstance(step.waiter, _ThreadWaiter)
                    step.waiter.event.wait(step.seconds)
                    step.waiter.event.clear()
                else:
                    runtime.discard(step.request, step.outcome, step.reason)
            except BaseException as exc:  # noqa: BLE001 - thrown back into the loop
                error = exc

    def _lease(self, record: LeaseRecord) -> Lease:
        return Lease(self, record)

    def call(
        self,
        primary: ModelKey | str,
        fn: Callable[[Lease], T],
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
        *,
        attempts: int = 3,
        timeout: float | None = None,
        holder: str | None = None,
    ) -> T:
        """Run ``fn(lease)`` under a lease, moving to another model when the provider refuses.

        Acquires as ``acquire`` does, calls ``fn`` with the lease (call ``lease.key``, not
        ``primary``), releases, and returns what ``fn`` returned. When ``fn`` raises a rate-limit
        error (see ``Lease.__exit__``), it is reported, which cools that model down for every
        process, and the call is made again on a new lease, up to ``attempts`` calls in all:
        the cooling model is passed over, so the retry goes to the next candidate with room, or
        waits for the cooldown's end. Any other exception, and the last attempt's refusal,
        propagate. ``timeout`` bounds the whole call's waiting for leases
        (``AcquireTimeout``). Pass ``max_retries=0`` to the SDK client: the limiter decides.
        """
        plan = Retries(attempts, timeout)
        while True:
            lease = self.acquire(primary, fallback_chain, timeout=plan.remaining(), holder=holder)
            try:
                with lease:  # reports a refusal, then releases
                    return fn(lease)
            except Exception as exc:
                if not plan.again(exc):
                    raise

    def renew(self) -> list[Lease]:
        """Renew every lease and ticket this Limiter holds now; returns leases found lost.

        The heartbeat thread calls this every TTL/3; call it yourself to renew sooner.
        """
        return self._runtime.renew()  # type: ignore[return-value]

    # --- reading -------------------------------------------------------------------------------

    def resolve_limit(self, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        return self._runtime.read(lambda conn: self._core.resolve_limit(conn, key))

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database (all processes), oldest first."""
        return self._runtime.read(self._core.leases)

    def waiters(self) -> list[TicketInfo]:
        """Every queued waiter (all processes), in the order they will be served."""
        return self._runtime.read(self._core.waiters)

    def status(self) -> Status:
        """The global cap and each model's limit, use and queue."""
        return self._runtime.read(self._core.status)

    def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates ``acquire_with_fallback`` would try now, in order, each with a reason."""
        return self._runtime.read(lambda conn: self._core.explain(conn, primary, fallback_chain))

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        return self._runtime.reap()
