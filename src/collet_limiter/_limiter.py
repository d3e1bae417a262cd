"""``Limiter``: the synchronous facade, its polling waiter and its heartbeat thread."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from . import _store
from ._core import Core, log, log_reaped, monotonic
from ._engine import (
    create_sqlite_engine,
    data_version,
    is_network_filesystem,
    prepare_sqlite_file,
    read_transaction,
    write_transaction,
)
from ._errors import (
    AcquireTimeout,
    ConfigError,
    LimiterClosedError,
    translate_driver_errors,
)
from ._keys import ModelKey, coerce_chain, coerce_key
from ._migrate import ensure_schema
from ._results import (
    Acquired,
    CandidateReport,
    Explanation,
    LeaseInfo,
    ModelStatus,
    QueueWait,
    Reaped,
    Status,
    TicketInfo,
)
from ._store import utc_datetime

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from datetime import datetime
    from types import TracebackType

    from sqlalchemy.engine import Connection, Engine

    from ._config import Config
    from ._fallback import Via
    from ._store import ClaimRequest, ClaimResult, LeaseRecord

_LIVE: weakref.WeakSet[Limiter] = weakref.WeakSet()


class Lease:
    """A permit for one call on ``key``, held until released.

    A lease is advisory: it is a row that other processes respect. A holder that stalls for
    longer than the lease TTL (SIGSTOP, a frozen VM) may find its lease reclaimed; the
    heartbeat then marks it ``lost`` and logs a warning, and its release does nothing.
    """

    __slots__ = ("_limiter", "_lost", "_pid", "_record", "_released", "expires_ts")

    def __init__(self, limiter: Limiter, record: LeaseRecord) -> None:
        self._limiter = limiter
        self._record = record
        self._pid = os.getpid()
        self._lost = False
        self._released = False
        self.expires_ts = record.expires_ts

    @property
    def key(self) -> ModelKey:
        """The model actually granted: call this one."""
        return self._record.key

    @property
    def primary(self) -> ModelKey:
        """The model that was asked for."""
        return self._record.primary

    @property
    def via(self) -> Via:
        """How it was granted: primary, chain, capability, cli or queue."""
        return self._record.via

    @property
    def holder(self) -> str | None:
        """The holder label given to acquire."""
        return self._record.holder

    @property
    def id(self) -> int:
        """The lease's row id in the ``leases`` table."""
        return self._record.id

    @property
    def acquired_at(self) -> datetime:
        """When it was granted (UTC)."""
        return utc_datetime(self._record.acquired_ts)

    @property
    def expires_at(self) -> datetime:
        """When it expires unless renewed (UTC); the heartbeat renews it every TTL/3."""
        return utc_datetime(self.expires_ts)

    @property
    def lost(self) -> bool:
        """True when the lease was reclaimed from under its holder (it had expired)."""
        return self._lost

    @property
    def released(self) -> bool:
        """True once released (or lost)."""
        return self._released or self._lost

    def release(self) -> None:
        """Give the slot back. Idempotent; a no-op for a lost lease or in a forked child."""
        if self._released:
            return
        self._released = True
        if self._pid != os.getpid():
            return  # inherited across fork(): the lease stays the parent's
        self._limiter._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "lost" if self._lost else "released" if self._released else "held"
        fallback = "" if self.key == self.primary else f" for {self.primary}"
        label = f" holder={self.holder!r}" if self.holder else ""
        return f"<Lease {self.id} {self.key}{fallback} via {self.via}{label} {state}>"


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
                f"{self._core.display}: only SQLite databases are supported by this version",
                path=self._core.display,
            )
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._closed = False
        self._leases: dict[int, Lease] = {}
        self._waiting = 0
        self._heartbeat: threading.Thread | None = None
        self._engine: Engine = self._open()
        _LIVE.add(self)

    # --- opening, forking, closing -------------------------------------------------------------

    def _open(self) -> Engine:
        core = self._core
        path = core.target.path
        assert path is not None
        prepare_sqlite_file(path, create_dir=core.is_default_path)
        if is_network_filesystem(path):
            log.warning(
                "%s is on a network filesystem: SQLite's WAL mode needs a local one "
                "(shared memory and POSIX locks); limits may not hold across hosts",
                path,
            )
        engine = create_sqlite_engine(core.target, busy_timeout_ms=core.busy_timeout_ms)
        try:
            with translate_driver_errors(core.display):
                ensure_schema(engine, display=core.display)
                self._write_config(engine)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _write_config(self, engine: Engine) -> None:
        core = self._core
        with engine.connect() as conn:
            with read_transaction(conn):
                current = _store.stored_fingerprint(conn)
            if current == core.fingerprint:  # the usual case: no write lock taken
                return
            with write_transaction(conn):
                wrote = _store.write_config(
                    conn,
                    rows=core.config_rows,
                    cap=core.config.max_agents,
                    fingerprint=core.fingerprint,
                    source=core.config.source or "<built-in defaults>",
                    now=core.clock(),
                    demand=core.demand,
                )
        if wrote and current is not None:
            log.warning(
                "%s: the database held another config; wrote %s (the last config written is "
                "what every process obeys)",
                core.display,
                core.config.source or "the built-in defaults",
            )

    def _after_fork(self) -> None:
        # In a child: never touch the parent's connections, threads or leases.
        self._engine.dispose(close=False)
        self._lock = threading.RLock()
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
    def _transaction(self, *, write: bool, engine: Engine | None = None) -> Iterator[Connection]:
        """A connection inside one transaction, with driver errors translated."""
        begin = write_transaction if write else read_transaction
        with (
            translate_driver_errors(self._core.display),
            (engine or self._check()).connect() as conn,
            begin(conn),
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
                with self._transaction(write=True, engine=self._engine) as conn:
                    _store.release_owner(conn, self._core.owner)
            finally:
                for lease in list(self._leases.values()):
                    lease._released = True
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
        if isinstance(outcome, Lease):
            return Acquired(outcome)
        return outcome

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

    def _claim(self, conn: Connection, request: ClaimRequest) -> ClaimResult:
        with write_transaction(conn):
            result = _store.claim(conn, request, self._core.clock(), self._core.demand)
        self._core.log_claim(request, result)
        return result

    def _acquire(
        self, request: ClaimRequest, *, wait: bool, timeout: float | None
    ) -> Lease | QueueWait:
        if timeout is not None and not timeout >= 0:
            raise ConfigError(f"timeout must be >= 0 or None (got {timeout!r})", argument="timeout")
        engine = self._check()
        deadline = None if timeout is None else monotonic() + timeout
        queued = False
        try:
            with translate_driver_errors(self._core.display), engine.connect() as conn:
                version = data_version(conn)
                result = self._claim(conn, request)
                while result.lease is None:
                    reason = result.verdicts[0].reason if result.verdicts else result.global_reason
                    if not wait:
                        return QueueWait(request.primary, reason)
                    if deadline is not None and monotonic() >= deadline:
                        raise AcquireTimeout(
                            f"no permit for {request.primary} within {timeout:g}s ({reason}); "
                            "nothing is held and no ticket is left queued",
                            key=request.primary,
                            timeout=timeout,
                        )
                    if not queued:
                        queued = True
                        self._waiting_changed(+1)
                    request = self._core.with_ticket(request, result)
                    version = self._wait_for_turn(conn, request, version, deadline)
                    result = self._claim(conn, request)
                return self._adopt(result.lease)
        except BaseException:
            if wait:
                self._discard(request)
            raise
        finally:
            if queued:
                self._waiting_changed(-1)

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
                with read_transaction(conn):
                    if _store.could_grant(conn, request):
                        return version

    def _discard(self, request: ClaimRequest) -> None:
        # Whatever was interrupted (timeout, Ctrl-C, close), leave no ticket and no unowned lease.
        with (
            contextlib.suppress(Exception),
            self._transaction(write=True, engine=self._engine) as conn,
        ):
            _store.discard(conn, lease_token=request.token, ticket_token=request.ticket_token)

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
        if lease.lost:
            return
        with self._transaction(write=True) as conn:
            released = _store.release(conn, lease.id, lease._record.token)
        if not released:
            lease._lost = True
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
        core = self._core
        with self._lock:
            held = dict(self._leases)
        now = core.clock()
        with self._transaction(write=True) as conn:
            lost_ids = _store.renew(conn, core.owner, now, core.ttl, held.keys())
        lost: list[Lease] = []
        with self._lock:
            for lease_id, lease in held.items():
                if lease_id in lost_ids:
                    lease._lost = True
                    lease._released = True
                    self._leases.pop(lease_id, None)
                    lost.append(lease)
                    log.warning(
                        "%r was lost: it expired and was reclaimed (the holder stalled longer "
                        "than the lease TTL of %ss)",
                        lease,
                        core.ttl,
                    )
                else:
                    lease.expires_ts = now + core.ttl
        return lost

    # --- reading -------------------------------------------------------------------------------

    def _read(self, func: Callable[[Connection], Any]) -> Any:
        with self._transaction(write=False) as conn:
            return func(conn)

    def resolve_limit(self, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        key = coerce_key(key)
        rows = self._read(_store.read_models)
        row = rows.get(key)
        return row.limit if row is not None else self._core.config.limit(key)

    def leases(self) -> list[LeaseInfo]:
        """Every lease in the database (all processes), oldest first."""
        return [LeaseInfo.from_record(r) for r in self._read(_store.list_leases)]

    def waiters(self) -> list[TicketInfo]:
        """Every queued waiter (all processes), in the order they will be served."""
        return [TicketInfo.from_record(r) for r in self._read(_store.list_tickets)]

    def status(self) -> Status:
        """The global cap and each model's limit, use and queue."""

        def read(conn: Connection) -> Status:
            rows = _store.read_models(conn)
            snap = _store.snapshot(conn, rows)
            waiting: dict[ModelKey, int] = {}
            for _, key in snap.queue:
                waiting[key] = waiting.get(key, 0) + 1
            ordered = sorted(
                rows.values(),
                key=lambda r: (r.position is None, r.position or 0, r.key),
            )
            return Status(
                max_agents=snap.cap,
                in_use=snap.total_held,
                waiting=len(snap.queue),
                models=tuple(
                    ModelStatus(
                        key=r.key,
                        limit=r.limit,
                        in_use=snap.held.get(r.key, 0),
                        waiting=waiting.get(r.key, 0),
                        cost_tier=r.cost_tier,
                        supports_tool_use=r.supports_tool_use,
                        is_cli=r.is_cli,
                        configured=r.position is not None,
                    )
                    for r in ordered
                ),
            )

        result: Status = self._read(read)
        return result

    def explain(
        self,
        primary: ModelKey | str,
        fallback_chain: Iterable[ModelKey | str] | str | None = None,
    ) -> Explanation:
        """The candidates ``acquire_with_fallback`` would try now, in order, each with a reason."""
        key = coerce_key(primary, what="primary model")
        chain = coerce_chain(fallback_chain)
        verdicts, global_reason = self._read(
            lambda conn: _store.explain(conn, key, chain, self._core.demand)
        )
        return Explanation(
            primary=key,
            candidates=tuple(CandidateReport.from_verdict(v) for v in verdicts),
            global_reason=global_reason,
        )

    def reap(self) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders, now."""
        core = self._core
        with self._transaction(write=True) as conn:
            removed = _store.reap(conn, core.clock(), my_host=core.holder.host_id)
        for item in removed:
            log_reaped(item)
        return [Reaped.from_removed(item) for item in removed]


def _after_fork_in_child() -> None:
    for limiter in list(_LIVE):
        limiter._after_fork()


def _close_all_at_exit() -> None:
    for limiter in list(_LIVE):
        with contextlib.suppress(Exception):
            limiter.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
logging.getLogger("collet_limiter").addHandler(logging.NullHandler())
