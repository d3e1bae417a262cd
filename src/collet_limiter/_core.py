"""What the sync and async limiters share: settings, requests, transactions and decision logs.

Each transaction is one method taking a SQLAlchemy ``Connection``: it opens the transaction, runs
the ``_store`` functions and logs the outcome. ``Limiter`` calls them on its connections;
``AsyncLimiter`` passes them to ``AsyncConnection.run_sync``. Only waiting, heartbeats and
threads versus tasks differ between the two faces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from . import _claim, _events, _store
from ._claim import ClaimRequest, ClaimResult
from ._config import ENV_DB, Config, default_db_path, load_config
from ._cooldown import after_report, cooling, effective_limit
from ._engine import (
    Target,
    hot_write_transaction,
    read_transaction,
    resolve_target,
    server_now,
    write_transaction,
)
from ._errors import (
    AcquireTimeout,
    ConfigError,
    DatabaseBusyError,
    DatabaseUnavailableError,
    LimiterError,
)
from ._files import Sharing, is_network_filesystem, prepare_database
from ._identity import current_holder, new_token
from ._keys import ModelKey, coerce_chain, coerce_key
from ._migrate import ensure_schema
from ._results import (
    CandidateReport,
    Cooldown,
    Explanation,
    LeaseInfo,
    ModelStatus,
    Reaped,
    Status,
    TicketInfo,
)
from ._wake import notify

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from sqlalchemy.engine import Connection

    from ._claim import Verdict
    from ._cooldown import Health, Kind
    from ._fairness import Snapshot
    from ._fallback import ModelRow
    from ._store import LeaseRecord, Outlook, Removed

log: Final = logging.getLogger("collet_limiter")

# Key in a connection's ``info``: a list that collects the wake-ups of the transactions run on it,
# for the caller to send after it gives up its turn to write (a woken waiter's first act is to
# write, so waking it while we still hold the writer lock would only make it block on us).
WAKE_KEY: Final = "collet_limiter_wake"
# Key in a connection's ``info``: how many times the transaction run on it was retried after the
# connection to the server dropped (its earlier attempt may have committed without our hearing).
RETRY_KEY: Final = "collet_limiter_retry"


def wake_after_commit(conn: Connection, targets: list[tuple[str, int]]) -> None:
    """Wake ``targets`` now, or later if the caller collects wake-ups on ``conn`` (``WAKE_KEY``)."""
    if not targets:
        return
    pending: list[tuple[str, int]] | None = conn.info.get(WAKE_KEY)
    if pending is None:
        notify(targets)
    else:
        pending.extend(targets)


def _positive(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not value > 0:
        raise ConfigError(f"{name} must be > 0 (got {value!r})", argument=name)
    return float(value)


class Core:
    """The state and rules a limiter facade needs, independent of how it waits."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None,
        *,
        config: Config | None,
        clock: Callable[[], float] | None,
        lease_ttl: float | None,
        poll_interval: float | None,
        max_poll_interval: float | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.config = config if config is not None else load_config(env=env)
        settings = self.config.limiter
        explicit = db if db is not None else (env.get(ENV_DB) or settings.db)
        self.is_default_path = explicit is None
        self.target: Target = resolve_target(explicit or default_db_path(env))
        self.clock: Callable[[], float] = clock or time.time
        self.ttl = _positive("lease_ttl", lease_ttl, settings.lease_ttl_secs)
        self.poll_interval = _positive(
            "poll_interval", poll_interval, settings.poll_interval_ms / 1000
        )
        self.max_poll_interval = max(
            self.poll_interval,
            _positive("max_poll_interval", max_poll_interval, settings.max_poll_interval_ms / 1000),
        )
        self.busy_timeout_ms = settings.busy_timeout_ms
        self.history = settings.history
        self.history_days = settings.history_days
        self.sharing = Sharing(settings.group)
        self.file_id: tuple[int, int] | None = None
        self.clock_offset = 0.0  # the PostgreSQL server's clock minus ``clock`` (see now())
        self._drift0: float | None = None  # an injected clock's offset at the first now()
        self.config_rows = self.config.model_rows()
        self.quota_logged: set[ModelKey] = set()  # models whose quota refusal was logged here
        self.fingerprint = config_fingerprint(self.config, self.config_rows)
        self.reset_identity()

    def reset_identity(self) -> None:
        """A new owner id and process identity (at creation, and in a child after ``fork``)."""
        self.owner = uuid.uuid4().hex
        self.pid = os.getpid()
        self.holder = current_holder()

    @property
    def display(self) -> str:
        """The database, for messages."""
        return self.target.display

    def now(self, conn: Connection) -> float:
        """The time for the write transaction open on ``conn``.

        On SQLite (one host) the limiter's clock. On PostgreSQL the server's clock, read as the
        transaction took its lock, so that hosts with skewed clocks agree on every expiry: an
        injected ``clock`` only adds how far it has moved beyond this host's clock since the
        first transaction of any limiter using it in this process (a test's hand-moved clock,
        shared by its limiters), never its offset. The difference to ``clock`` is kept for
        what is judged without a transaction (``estimated_now``): the lock-free look, the
        watcher's expiry timer.
        """
        server = server_now(conn)
        if server is None:
            return self.clock()
        return self._on_server_clock(server)

    def _on_server_clock(self, server: float) -> float:
        if self.clock is not time.time:
            drift = self.clock() - time.time()
            if self._drift0 is None:
                self._drift0 = _baseline(self.clock, drift)
            server += drift - self._drift0
        self.clock_offset = server - self.clock()
        return server

    def read_now(self, conn: Connection) -> float:
        """The time for the read transaction open on ``conn`` (a server's clock: one query)."""
        if self.target.is_sqlite:
            return self.clock()
        value = conn.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())").scalar()
        return self.estimated_now() if value is None else self._on_server_clock(float(value))

    def estimated_now(self) -> float:
        """What ``now`` would say at this moment, without asking the database."""
        if self.target.is_sqlite:
            return self.clock()
        return self.clock() + self.clock_offset

    def demand(self, key: ModelKey) -> ModelRow:
        """The row to add for a key the table lacks."""
        return self.config.demand_row(key)

    def request(
        self,
        primary: ModelKey | str,
        chain: Iterable[ModelKey | str] | str | None,
        *,
        fallback: bool,
        enqueue: bool,
        label: str | None,
    ) -> ClaimRequest:
        """A claim request from this process for ``primary``."""
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"holder must be a string (got {label!r})", argument="holder")
        return ClaimRequest(
            primary=coerce_key(primary, what="primary model"),
            chain=tuple(coerce_chain(chain)),
            fallback=fallback,
            ticket=None,
            enqueue=enqueue,
            holder=self.holder,
            label=label,
            owner=self.owner,
            token=new_token(),
            ticket_token=new_token(),
            ttl=self.ttl,
            history=self.history,
        )

    @staticmethod
    def deadline(timeout: float | None) -> float | None:
        """The monotonic deadline of an acquire with ``timeout`` seconds (None: no deadline)."""
        if timeout is None:
            return None
        if not timeout >= 0:  # also rejects NaN
            raise ConfigError(f"timeout must be >= 0 or None (got {timeout!r})", argument="timeout")
        return monotonic() + timeout

    @staticmethod
    def refusal(result: ClaimResult) -> str:
        """Why a claim granted nothing: the primary's verdict, or the global cap's."""
        return result.verdicts[0].reason if result.verdicts else result.global_reason

    def timeout_error(
        self, request: ClaimRequest, result: ClaimResult, timeout: float | None
    ) -> AcquireTimeout:
        """The error for an acquire whose deadline passed."""
        return AcquireTimeout(
            f"no permit for {request.primary} within {timeout:g}s ({self.refusal(result)}); "
            "nothing is held and no ticket is left queued",
            key=request.primary,
            timeout=timeout,
        )

    @staticmethod
    def with_ticket(request: ClaimRequest, result: ClaimResult) -> ClaimRequest:
        """The request to retry with: the primary only, holding the ticket the last claim left
        (and the time the first claim began, to tell how long it waited)."""
        since = result.at if request.requested_ts is None else request.requested_ts
        return replace(
            request, ticket=result.ticket, enqueue=False, fallback=False, requested_ts=since
        )

    def log_claim(self, request: ClaimRequest, result: ClaimResult) -> None:
        """Log the decision: debug when the primary is full, info on fallback, warning on none."""
        for removed in result.reaped:
            log_reaped(removed)
        if result.requeued:
            log.warning(
                "%s: this waiter's ticket had expired (process stalled longer than the lease TTL "
                "of %ss); queued again at the back",
                request.primary,
                self.ttl,
            )
        if not request.fallback:
            if result.lease is None:
                log.debug("%s: still waiting (%s)", request.primary, _first_reason(result))
            return
        primary_reason = _first_reason(result)
        lease = result.lease
        if lease is not None and lease.via == "primary":
            return
        log.debug("%s: primary not available (%s)", request.primary, primary_reason)
        if lease is not None:
            verdict = next(v for v in result.verdicts if v.granted)
            log.info(
                "%s: falling back to %s via %s (%s; primary: %s)",
                request.primary,
                lease.key,
                lease.via,
                verdict.candidate.reason,
                primary_reason,
            )
        else:
            log.warning(
                "%s: all %d candidates exhausted (%s); %s",
                request.primary,
                len(result.verdicts),
                primary_reason,
                "queueing for the primary" if request.enqueue else "returning QueueWait",
            )

    # --- opening -------------------------------------------------------------------------------

    def prepare_file(self) -> None:
        """Create the SQLite file (owner-only) before connecting; warn about network filesystems."""
        path = self.target.path
        if path is None:
            return
        prepare_database(path, create_dir=self.is_default_path, sharing=self.sharing)
        if is_network_filesystem(path):
            log.warning(
                "%s is on a network filesystem: SQLite's WAL mode needs a local one "
                "(shared memory and POSIX locks); limits may not hold across hosts",
                path,
            )

    def open_database(self, conn: Connection) -> None:
        """Create or upgrade the schema, then write this config unless the database holds it."""
        self.file_id = self._file_id()
        ensure_schema(conn, display=self.display, schema=self.target.schema)
        with read_transaction(conn):
            current = _store.stored_fingerprint(conn)
        if current == self.fingerprint:  # the usual case: no write lock taken
            return
        with write_transaction(conn):
            wrote = _store.write_config(
                conn,
                rows=self.config_rows,
                cap=self.config.max_agents,
                fingerprint=self.fingerprint,
                source=self.config.origin,
                now=self.now(conn),
                demand=self.demand,
                history=self.history,
            )
        if wrote and current is not None:
            log.warning(
                "%s: the database held another config; wrote %s (the last config written is "
                "what every process obeys)",
                self.display,
                self.config.origin,
            )

    def _file_id(self) -> tuple[int, int] | None:
        path = self.target.path
        if path is None:
            return None
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return info.st_dev, info.st_ino

    def file_replaced(self) -> bool:
        """Whether the database file was deleted or replaced since this limiter opened it.

        Connections opened before keep using the old, unlinked file while new processes create
        a new one: two databases, each unaware of the other's leases. A stat() per write
        transaction notices it.
        """
        return self.target.path is not None and self._file_id() != self.file_id

    def writer_busy(self) -> DatabaseBusyError:
        """The error when another process held the writer lock beyond the busy timeout."""
        lock = f"{self.display}.lock"
        return DatabaseBusyError(
            f"database {self.display}: another process held its writer lock ({lock}) for more "
            f"than the busy timeout of {self.busy_timeout_ms} ms; it may be stopped or stuck "
            "(check `fuser` on the lock file), or raise [limiter] busy_timeout_ms",
            path=self.display,
            reason="writer lock held",
        )

    def unreachable(self, exc: BaseException) -> DatabaseUnavailableError:
        """The error when the database server stayed unreachable beyond the busy timeout."""
        reason = getattr(exc, "reason", None) or str(exc)
        return DatabaseUnavailableError(
            f"database server {self.target.host} unreachable for more than the busy timeout of "
            f"{self.busy_timeout_ms} ms ({reason}); check that it runs and that this host can "
            f"reach it, or raise [limiter] busy_timeout_ms (database {self.display})",
            path=self.display,
            reason=reason,
        )

    def readopt(self, conn: Connection, records: Sequence[LeaseRecord]) -> list[LeaseRecord]:
        """Carry this limiter's leases into the new database file (see ``file_replaced``)."""
        log.error(
            "%s was deleted or replaced while in use: reopening it and re-registering the %d "
            "lease(s) this process holds (any process still on the old file should be restarted)",
            self.display,
            len(records),
        )
        with write_transaction(conn):
            now = self.now(conn)
            return [_store.readopt(conn, record, now, self.ttl) for record in records]

    # --- transactions shared by Limiter and AsyncLimiter -------------------------------------

    def claim(self, conn: Connection, request: ClaimRequest) -> ClaimResult:
        """One claim attempt in a write transaction, logged."""
        with hot_write_transaction(conn):
            retry = bool(conn.info.get(RETRY_KEY))
            result = _claim.claim(conn, request, self.now(conn), self.demand, retry=retry)
        wake_after_commit(conn, result.wake)
        self.log_claim(request, result)
        return result

    def granted(self, conn: Connection, request: ClaimRequest) -> LeaseRecord | None:
        """The lease a release granted to this queued request, if any: one lock-free read.

        One statement on the driver in autocommit, which SQLite runs in a read transaction of
        its own: no BEGIN and COMMIT around it on the path of every handoff.
        """
        return _store.lease_by_token(conn, request.token)

    def could_grant(
        self, conn: Connection, requests: Sequence[ClaimRequest]
    ) -> tuple[list[bool], Outlook]:
        """For queued requests, whether each would be granted now: one lock-free read."""
        with read_transaction(conn):
            now = self.estimated_now()
            return _claim.could_grant(conn, requests, self.holder.host_id, now)

    # Every transaction that frees room ends by waking the waiters a claim would now admit:
    # their addresses are read inside the transaction and notified after it commits.

    def release(
        self, conn: Connection, lease_id: int, token: str, record: LeaseRecord | None = None
    ) -> bool:
        """Delete one lease; False when it was already reclaimed (then, with its ``record``,
        recorded as ``lost``). Every ``PRUNE_EVERY``-th lease's release also prunes."""
        history = self.history
        with hot_write_transaction(conn):
            now = self.now(conn)
            released, waiting = _store.release(conn, lease_id, token, now, history=history)
            retried = bool(conn.info.get(RETRY_KEY))
            if released:
                wake = _store.grant_waiting(conn, now, anyone_waiting=waiting)
                if history and lease_id % _events.PRUNE_EVERY == 0:
                    _events.prune(conn, now, self.history_days)
            else:
                wake = []
                if history and record is not None and not retried:
                    self._record_lost(conn, record, now)
        wake_after_commit(conn, wake)
        # Retried after the connection dropped: the first attempt's commit may have released it.
        return released or retried

    def discard(
        self, conn: Connection, request: ClaimRequest, outcome: str = "cancelled", reason: str = ""
    ) -> None:
        """Remove whatever an interrupted acquire left: its ticket, and a lease it never got.

        ``outcome`` (timed_out or cancelled) and ``reason`` are what the history records."""
        with hot_write_transaction(conn):
            now = self.now(conn)
            if self.history:
                holder = request.holder
                asked = {
                    "provider": request.primary.provider,
                    "model": request.primary.model,
                    "holder": request.label,
                    "pid": holder.pid,
                    "hostname": holder.hostname,
                    "waited_ms": _claim.waited_ms(request, now),
                }
                tokens = (request.ticket_token, request.token)
                _events.gave_up(
                    conn, now, outcome=outcome, reason=reason, tokens=tokens, request=asked
                )
            _store.discard(conn, lease_token=request.token, ticket_token=request.ticket_token)
            wake = _store.grant_waiting(conn, now)
        wake_after_commit(conn, wake)

    def release_owner(self, conn: Connection) -> None:
        """Delete every lease and ticket of this limiter instance."""
        with write_transaction(conn):
            now = self.now(conn)
            _store.release_owner(conn, self.owner, now, history=self.history)
            wake = _store.grant_waiting(conn, now)
        wake_after_commit(conn, wake)

    def renew(self, conn: Connection, held: Mapping[str, LeaseRecord]) -> tuple[float, set[str]]:
        """Renew this instance's leases and tickets; returns (new expiry, tokens found lost).

        ``held`` are the leases the caller believes it holds, by token; the lost ones are
        recorded as ``lost`` in the same transaction."""
        with write_transaction(conn):
            now = self.now(conn)
            lost = _store.renew(conn, self.owner, now, self.ttl, held.keys())
            if self.history:
                for token in lost:
                    self._record_lost(conn, held[token], now)
        return now + self.ttl, lost

    @staticmethod
    def _record_lost(conn: Connection, record: LeaseRecord, now: float) -> None:
        _events.record(
            conn,
            "lost",
            now,
            acquired_ts=record.acquired_ts,
            held_ms=(now - record.acquired_ts) * 1000.0,
            reason="expired and reclaimed while its holder still held it",
            **_events.of_lease(record),
        )

    def log_lost(self, lease: object) -> None:
        """Say that a lease was found reclaimed from under its holder."""
        log.warning(
            "%r was lost: it expired and was reclaimed (its holder stalled longer than the lease "
            "TTL of %ss)",
            lease,
            self.ttl,
        )

    def reap(self, conn: Connection) -> list[Reaped]:
        """Remove expired leases and tickets and those of provably dead holders (and, with a
        history, prune it)."""
        with write_transaction(conn):
            now = self.now(conn)
            removed = _store.reap(conn, now, my_host=self.holder.host_id, history=self.history)
            wake = _store.grant_waiting(conn, now) if removed else []
            if self.history:
                _events.prune(conn, now, self.history_days)
        wake_after_commit(conn, wake)
        for item in removed:
            log_reaped(item)
        return [Reaped.from_removed(item) for item in removed]

    def report(
        self, conn: Connection, key: ModelKey, *, kind: Kind, retry_after: float | None, reason: str
    ) -> Cooldown:
        """Record a provider's refusal on ``key``: a cooldown for every process, and with
        ``[limiter] adaptive`` a lower effective limit. Write transaction."""
        settings = self.config.limiter
        if kind == "quota":  # waiting seconds does not cure a quota: the longer cooldown
            secs = max(retry_after or 0.0, settings.quota_cooldown_secs)
        else:
            secs = settings.cooldown_secs if retry_after is None else retry_after
        with write_transaction(conn):
            now = self.now(conn)
            row = _store.model_row(conn, key, self.demand)
            holders = _store.holders_of(conn, key) if settings.adaptive else 0
            health = after_report(
                row,
                now=now,
                holders=holders,
                secs=secs,
                kind=kind,
                reason=reason,
                adaptive=settings.adaptive,
                recover_secs=settings.adaptive_recover_secs,
            )
            _store.store_health(conn, key, health)
            if self.history:
                _record_report(conn, row, health, now)
        cooldown = Cooldown.of(
            replace(row, health=health), now, started=not cooling(row.health, now)
        )
        self._log_report(cooldown, secs, before=effective_limit(row.limit, row.health, now))
        return cooldown

    def _log_report(self, cooldown: Cooldown, secs: float, *, before: int) -> None:
        key, what = cooldown.key, cooldown.kind.replace("_", " ")
        if cooldown.kind == "quota":
            # Not cured by waiting: once per model and process, not a line per refused call.
            if cooldown.started or key not in self.quota_logged:
                self.quota_logged.add(key)
                log.error(
                    "%s: the provider refused for quota or billing (%s); no new lease on it for "
                    "%s (until %s); fix the account, then restart or wait",
                    key,
                    cooldown.reason,
                    _duration(secs),
                    cooldown.until.strftime("%H:%M:%S UTC"),
                )
        elif cooldown.started:
            log.warning(
                "%s: %s (%s); cooling down for %s, new requests go to fallbacks or wait",
                key,
                what,
                cooldown.reason,
                _duration(secs),
            )
        else:
            log.debug(
                "%s: %s again (%s); cooldown until %s", key, what, cooldown.reason, cooldown.until
            )
        if cooldown.effective_limit < before:
            log.warning(
                "%s: adaptive limit lowered to %d of the configured %d (%s)",
                key,
                cooldown.effective_limit,
                cooldown.limit,
                what,
            )

    # --- reads -----------------------------------------------------------------------------

    def resolve_limit(self, conn: Connection, key: ModelKey | str) -> int:
        """The limit in force for ``key``: its ``models`` row, else this config's rule."""
        key = coerce_key(key)
        with read_transaction(conn):
            row = _store.read_models(conn).get(key)
        return row.limit if row is not None else self.config.limit(key)

    def leases(self, conn: Connection) -> list[LeaseInfo]:
        """Every lease in the database, oldest first."""
        with read_transaction(conn):
            records = _store.list_leases(conn)
        return [LeaseInfo.from_record(record) for record in records]

    def waiters(self, conn: Connection) -> list[TicketInfo]:
        """Every queued waiter, in the order they will be served."""
        with read_transaction(conn):
            records = _store.list_tickets(conn)
        return [TicketInfo.from_record(record) for record in records]

    def status(self, conn: Connection) -> Status:
        """The global cap and each model's limit, use and queue, from one snapshot."""
        with read_transaction(conn):
            now = self.read_now(conn)
            rows = _store.read_models(conn)
            snap = _store.snapshot(conn, rows, None, now)
        return status_of(rows, snap, now)

    def explain(
        self,
        conn: Connection,
        primary: ModelKey | str,
        chain: Iterable[ModelKey | str] | str | None,
    ) -> Explanation:
        """The candidates a fresh acquire_with_fallback would try now, each with its verdict."""
        key = coerce_key(primary, what="primary model")
        keys = coerce_chain(chain)
        with read_transaction(conn):
            now = self.read_now(conn)
            verdicts, global_reason = _claim.explain(conn, key, keys, self.demand, now)
        return explanation_of(key, verdicts, global_reason)


def status_of(rows: Mapping[ModelKey, ModelRow], snap: Snapshot, now: float) -> Status:
    """The ``Status`` of rows and a snapshot already read (pure: ``Inspector`` also builds one
    for a database not created yet, from the config's rows and an empty snapshot)."""
    waiting = snap.ahead  # for a fresh request, every waiter is ahead
    ordered = sorted(rows.values(), key=lambda r: (r.position is None, r.position or 0, r.key))
    return Status(
        max_agents=snap.cap,
        in_use=snap.total_held,
        waiting=sum(waiting.values()),
        models=tuple(
            ModelStatus.of(r, now, in_use=snap.held.get(r.key, 0), waiting=waiting.get(r.key, 0))
            for r in ordered
        ),
    )


def explanation_of(
    primary: ModelKey, verdicts: Iterable[Verdict], global_reason: str
) -> Explanation:
    """The ``Explanation`` of ``_claim.explain``'s (or ``_claim.judge``'s) verdicts."""
    return Explanation(
        primary=primary,
        candidates=tuple(CandidateReport.from_verdict(v) for v in verdicts),
        global_reason=global_reason,
    )


class Retries:
    """The budget of ``call``: how many attempts are left, and the deadline they share."""

    __slots__ = ("deadline", "left", "timeout")

    def __init__(self, attempts: int, timeout: float | None) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(
                f"attempts must be an int >= 1 (got {attempts!r})", argument="attempts"
            )
        self.left = attempts
        self.timeout = timeout
        self.deadline = Core.deadline(timeout)

    def remaining(self) -> float | None:
        """The timeout for the next acquire: what is left of the whole call's."""
        return None if self.deadline is None else max(0.0, self.deadline - monotonic())

    def again(self, exc: BaseException) -> bool:
        """After ``exc`` ended an attempt: whether to try again (a refusal, attempts left)."""
        from ._ratelimit import rate_limit_signal

        self.left -= 1
        if self.left <= 0 or isinstance(exc, LimiterError) or rate_limit_signal(exc) is None:
            return False
        log.info("retrying on a new lease (%d attempt(s) left) after: %s", self.left, exc)
        return True


# An injected clock's offset from this host's clock when a limiter first used it on PostgreSQL,
# shared by every limiter using that clock, so that they agree on the time (see Core.now).
_BASELINES: weakref.WeakKeyDictionary[Callable[[], float], float] = weakref.WeakKeyDictionary()


def _baseline(clock: Callable[[], float], drift: float) -> float:
    try:
        return _BASELINES.setdefault(clock, drift)
    except TypeError:  # a clock that cannot be weakly referenced: its own baseline
        return drift


def _record_report(conn: Connection, row: ModelRow, health: Health, now: float) -> None:
    """The events of a reported refusal: the report, the cooldown it started (after the end of
    one that ended unrecorded), and the adaptive limit it lowered (after a full recovery left
    unrecorded)."""
    where = {"provider": row.key.provider, "model": row.key.model}
    before = row.health
    until, kind = health.cooldown_until, health.cooldown_kind
    if before.effective is not None and effective_limit(row.limit, before, now) >= row.limit:
        # Fully recovered with no claim since to record it (see _claim.forget_recovered).
        _events.record(
            conn, "limit_changed", now, limit_before=before.effective, limit_after=row.limit,
            reason="adaptive limit recovered", **where,
        )  # fmt: skip
    if not cooling(before, now):
        if before.cooldown_until is not None:
            _events.record(
                conn, "cooldown_ended", before.cooldown_until,
                cooldown_kind=before.cooldown_kind, **where,
            )  # fmt: skip
        _events.record(
            conn, "cooldown_started", now, cooldown_kind=kind, until_ts=until,
            reason=health.cooldown_reason, **where,
        )  # fmt: skip
    _events.record(
        conn, "rate_limited", now, cooldown_kind=kind, until_ts=until,
        reason=health.cooldown_reason, **where,
    )  # fmt: skip
    limit_before = effective_limit(row.limit, before, now)
    limit_after = effective_limit(row.limit, health, now)
    if limit_after != limit_before:
        _events.record(
            conn, "limit_changed", now, limit_before=limit_before, limit_after=limit_after,
            reason=f"adaptive: lowered after {kind}", **where,
        )  # fmt: skip


def _first_reason(result: ClaimResult) -> str:
    return result.verdicts[0].reason if result.verdicts else result.global_reason


def log_reaped(removed: Removed) -> None:
    """Log one reclaimed lease or ticket."""
    log.info(
        "reclaimed %s %d on %s of pid %d on %s (%s)",
        removed.kind,
        removed.id,
        removed.key,
        removed.pid,
        removed.hostname,
        removed.reason,
    )


def config_fingerprint(config: Config, rows: Iterable[ModelRow]) -> str:
    """A digest of everything a config writes to the database (to notice config changes)."""
    payload = {
        "max_agents": config.max_agents,
        "rows": [
            [str(r.key), r.limit, r.cost_tier.value, r.supports_tool_use, r.is_cli, r.position]
            for r in rows
        ],
        "models": [entry.model_dump(mode="json") for entry in config.models],
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _duration(secs: float) -> str:
    return f"{secs / 60:.0f} min" if secs >= 120 else f"{secs:g} s"


def monotonic() -> float:
    """Real elapsed time for timeouts and poll intervals (the injectable clock is for leases)."""
    return time.monotonic()
