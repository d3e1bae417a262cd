"""Every transaction, written once against a SQLAlchemy ``Connection``.

The caller opens the transaction (``_engine.write_transaction`` for writes) and passes the time:
these functions know nothing of waiting, threads, asyncio or clocks, which is what lets the sync
Limiter, the AsyncLimiter (through ``AsyncConnection.run_sync``) and any dialect share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, delete, func, insert, select, update

from . import _schema as s
from ._config import DEFAULT_MAX_AGENTS
from ._fairness import Snapshot, ahead_of_each
from ._fallback import Candidate, ModelRow, Via, plan
from ._identity import is_provably_dead
from ._keys import ModelKey
from ._profiles import CostTier

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Sequence

    from sqlalchemy import Select, Table, Update
    from sqlalchemy.engine import Connection, CursorResult, Row

    from ._identity import Holder


def utc_text(ts: float) -> str:
    """Seconds since the epoch as readable UTC text: ``2026-11-27T23:07:55.123Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_datetime(ts: float) -> datetime:
    """Seconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


# Statements are built once: SQLAlchemy then computes each one's cache key once, which makes an
# execution about three times cheaper than building the statement on every call.
_SELECT_MODELS: Final = select(s.models)
_SELECT_META: Final = select(s.meta.c.value).where(s.meta.c.key == bindparam("meta_key"))
_HELD: Final = select(s.leases.c.provider, s.leases.c.model, func.count()).group_by(
    s.leases.c.provider, s.leases.c.model
)
_QUEUE: Final = select(s.waiters.c.id, s.waiters.c.provider, s.waiters.c.model).order_by(
    s.waiters.c.id
)
_WAITING: Final = select(s.waiters.c.provider, s.waiters.c.model, func.count()).group_by(
    s.waiters.c.provider, s.waiters.c.model
)
_AHEAD: Final = _WAITING.where(s.waiters.c.id < bindparam("ticket_id"))
_TICKET_EXISTS: Final = select(func.count()).where(s.waiters.c.id == bindparam("ticket_id"))
_INSERT_MODELS: Final = insert(s.models)
_INSERT_LEASE: Final = insert(s.leases)
_INSERT_TICKET: Final = insert(s.waiters)
_DELETE_TICKET: Final = delete(s.waiters).where(s.waiters.c.id == bindparam("ticket_id"))
_RELEASE: Final = delete(s.leases).where(
    (s.leases.c.id == bindparam("lease_id")) & (s.leases.c.token == bindparam("lease_token"))
)


def _reapable(table: Table) -> Select[Any]:
    return select(
        table.c.id,
        table.c.provider,
        table.c.model,
        table.c.pid,
        table.c.pid_start,
        table.c.hostname,
        table.c.holder,
        table.c.expires_ts,
    ).where((table.c.expires_ts < bindparam("now")) | (table.c.host_id == bindparam("my_host")))


_REAPABLE: Final = {"lease": _reapable(s.leases), "ticket": _reapable(s.waiters)}


def _renew(table: Table) -> Update:
    return (
        update(table)
        .where(table.c.owner == bindparam("renew_owner"))
        .values(expires_ts=bindparam("new_expires_ts"), expires_at=bindparam("new_expires_at"))
    )


_RENEW_LEASES: Final = _renew(s.leases)
_RENEW_TICKETS: Final = _renew(s.waiters)
_OWNED_LEASE_IDS: Final = select(s.leases.c.id).where(s.leases.c.owner == bindparam("renew_owner"))


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease row as stored."""

    id: int
    token: str
    key: ModelKey
    primary: ModelKey
    via: Via
    holder: str | None
    pid: int
    pid_start: float
    host_id: str
    hostname: str
    owner: str
    acquired_ts: float
    expires_ts: float


@dataclass(frozen=True, slots=True)
class TicketRecord:
    """A waiter's ticket as stored; smaller ids are served first."""

    id: int
    token: str
    key: ModelKey
    holder: str | None
    pid: int
    pid_start: float
    host_id: str
    hostname: str
    owner: str
    enqueued_ts: float
    expires_ts: float


@dataclass(frozen=True, slots=True)
class Removed:
    """A lease or ticket removed by reaping, and why."""

    kind: str  # "lease" or "ticket"
    id: int
    key: ModelKey
    pid: int
    hostname: str
    holder: str | None
    reason: str  # "expired" or "holder dead"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One fallback candidate with the decision about it."""

    candidate: Candidate
    granted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a claim asks for, and who asks."""

    primary: ModelKey
    chain: tuple[ModelKey, ...]
    fallback: bool  # False: the primary only, as acquire_wait does
    ticket: int | None  # the request's place in the queue, once queued
    enqueue: bool  # queue a ticket for the primary when nothing is granted
    holder: Holder
    label: str | None
    owner: str
    token: str
    ticket_token: str
    ttl: float


@dataclass(slots=True)
class ClaimResult:
    """What a claim did: the lease granted, or the ticket queued (or kept)."""

    lease: LeaseRecord | None
    ticket: int | None
    verdicts: list[Verdict] = field(default_factory=list)
    global_reason: str = ""
    reaped: list[Removed] = field(default_factory=list)
    requeued: bool = False  # the request's ticket had been reaped and was queued again


def _model_row(row: Row[tuple[str, str, int, str, bool, bool, int | None]]) -> ModelRow:
    return ModelRow(
        key=ModelKey(row.provider, row.model),
        limit=row.concurrency_limit,
        cost_tier=CostTier(row.cost_tier),
        supports_tool_use=bool(row.supports_tool_use),
        is_cli=bool(row.is_cli),
        position=row.position,
    )


def _row_values(row: ModelRow) -> dict[str, object]:
    return {
        "provider": row.key.provider,
        "model": row.key.model,
        "concurrency_limit": row.limit,
        "cost_tier": row.cost_tier.value,
        "supports_tool_use": row.supports_tool_use,
        "is_cli": row.is_cli,
        "position": row.position,
    }


# --- models and meta ---------------------------------------------------------------------------


def read_models(conn: Connection) -> dict[ModelKey, ModelRow]:
    """Every row of the ``models`` table."""
    return {model.key: model for model in map(_model_row, conn.execute(_SELECT_MODELS))}


def ensure_models(
    conn: Connection,
    rows: dict[ModelKey, ModelRow],
    keys: Iterable[ModelKey],
    demand: Callable[[ModelKey], ModelRow],
) -> None:
    """Add a row for each of ``keys`` the table lacks (and to ``rows``). Write transaction."""
    missing = {key: demand(key) for key in keys if key not in rows}
    if missing:
        conn.execute(_INSERT_MODELS, [_row_values(row) for row in missing.values()])
        rows.update(missing)


def read_meta(conn: Connection) -> dict[str, str]:
    """The settings table."""
    return {row.key: row.value for row in conn.execute(select(s.meta))}


def max_agents(conn: Connection) -> int:
    """The global cap in force (the last config written wins)."""
    value = conn.execute(_SELECT_META, {"meta_key": s.META_MAX_AGENTS}).scalar()
    return int(value) if value is not None else DEFAULT_MAX_AGENTS


def write_config(
    conn: Connection,
    *,
    rows: Sequence[ModelRow],
    cap: int,
    fingerprint: str,
    source: str,
    now: float,
    demand: Callable[[ModelKey], ModelRow],
) -> bool:
    """Seed the ``models`` table and the global cap from a config, unless already current.

    Returns True when it wrote. Rows added on demand are kept, recomputed under the new config.
    """
    if stored_fingerprint(conn) == fingerprint:
        return False
    demand_keys = [
        ModelKey(row.provider, row.model)
        for row in conn.execute(
            select(s.models.c.provider, s.models.c.model).where(s.models.c.position.is_(None))
        )
    ]
    conn.execute(delete(s.models))
    configured = {row.key for row in rows}
    values = [_row_values(row) for row in rows]
    values += [_row_values(demand(key)) for key in demand_keys if key not in configured]
    if values:
        conn.execute(insert(s.models), values)
    settings = {
        s.META_MAX_AGENTS: str(cap),
        s.META_FINGERPRINT: fingerprint,
        s.META_CONFIG_SOURCE: source,
        s.META_CONFIG_WRITTEN_AT: utc_text(now),
    }
    conn.execute(delete(s.meta).where(s.meta.c.key.in_(list(settings))))
    conn.execute(insert(s.meta), [{"key": k, "value": v} for k, v in settings.items()])
    return True


def stored_fingerprint(conn: Connection) -> str | None:
    """The fingerprint of the config last written to the database."""
    value = conn.execute(_SELECT_META, {"meta_key": s.META_FINGERPRINT}).scalar()
    return None if value is None else str(value)


# --- reading state -----------------------------------------------------------------------------


def _lease_record(row: Row[tuple[object, ...]]) -> LeaseRecord:
    m = row._mapping  # noqa: SLF001 - public API, underscored to avoid column-name clashes
    return LeaseRecord(
        id=m["id"],
        token=m["token"],
        key=ModelKey(m["provider"], m["model"]),
        primary=ModelKey(m["primary_provider"], m["primary_model"]),
        via=m["via"],
        holder=m["holder"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        host_id=m["host_id"],
        hostname=m["hostname"],
        owner=m["owner"],
        acquired_ts=m["acquired_ts"],
        expires_ts=m["expires_ts"],
    )


def _ticket_record(row: Row[tuple[object, ...]]) -> TicketRecord:
    m = row._mapping  # noqa: SLF001 - public API, underscored to avoid column-name clashes
    return TicketRecord(
        id=m["id"],
        token=m["token"],
        key=ModelKey(m["provider"], m["model"]),
        holder=m["holder"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        host_id=m["host_id"],
        hostname=m["hostname"],
        owner=m["owner"],
        enqueued_ts=m["enqueued_ts"],
        expires_ts=m["expires_ts"],
    )


def list_leases(conn: Connection) -> list[LeaseRecord]:
    """Every lease, oldest first."""
    return [_lease_record(row) for row in conn.execute(select(s.leases).order_by(s.leases.c.id))]


def list_tickets(conn: Connection) -> list[TicketRecord]:
    """Every queued ticket, in queue order."""
    rows = conn.execute(select(s.waiters).order_by(s.waiters.c.id))
    return [_ticket_record(row) for row in rows]


def held_counts(conn: Connection) -> dict[ModelKey, int]:
    """Leases per model."""
    return {ModelKey(provider, model): count for provider, model, count in conn.execute(_HELD)}


def queue(conn: Connection) -> list[tuple[int, ModelKey]]:
    """(ticket, key) for every waiter, in queue order."""
    return [(ticket, ModelKey(provider, model)) for ticket, provider, model in conn.execute(_QUEUE)]


def waiting_counts(conn: Connection, before: int | None = None) -> dict[ModelKey, int]:
    """Waiters per model: all of them, or those queued before ticket ``before``."""
    rows = conn.execute(_WAITING) if before is None else conn.execute(_AHEAD, {"ticket_id": before})
    return {ModelKey(provider, model): count for provider, model, count in rows}


def snapshot(conn: Connection, rows: dict[ModelKey, ModelRow], ticket: int | None) -> Snapshot:
    """Limits, lease counts and cap, and the waiters ahead of ``ticket``, as of this transaction."""
    return Snapshot(
        limits={key: row.limit for key, row in rows.items()},
        held=held_counts(conn),
        ahead=waiting_counts(conn, ticket),
        cap=max_agents(conn),
    )


def ticket_exists(conn: Connection, ticket: int) -> bool:
    """Whether a ticket is still queued (reaping removes the tickets of stalled waiters)."""
    return bool(conn.execute(_TICKET_EXISTS, {"ticket_id": ticket}).scalar())


# --- reaping -----------------------------------------------------------------------------------


def reap(conn: Connection, now: float, *, my_host: str) -> list[Removed]:
    """Delete leases and tickets that expired or whose holder is provably dead.

    Only rows that expired or were written on this host identity are examined: a holder on
    another host can be judged by its expiry alone. Needs a write transaction.
    """
    removed: list[Removed] = []
    verdicts: dict[tuple[int, float], bool] = {}

    def dead(pid: int, pid_start: float) -> bool:
        if (pid, pid_start) not in verdicts:
            verdicts[(pid, pid_start)] = is_provably_dead(
                holder_host=my_host, pid=pid, pid_start=pid_start
            )
        return verdicts[(pid, pid_start)]

    for kind, table in (("lease", s.leases), ("ticket", s.waiters)):
        doomed: list[int] = []
        for row in conn.execute(_REAPABLE[kind], {"now": now, "my_host": my_host}):
            if row.expires_ts < now:
                reason = "expired"
            elif dead(row.pid, row.pid_start):
                reason = "holder dead"
            else:
                continue
            doomed.append(row.id)
            removed.append(
                Removed(
                    kind,
                    row.id,
                    ModelKey(row.provider, row.model),
                    row.pid,
                    row.hostname,
                    row.holder,
                    reason,
                )
            )
        if doomed:
            conn.execute(delete(table).where(table.c.id.in_(doomed)))
    return removed


# --- claiming ----------------------------------------------------------------------------------


def _decide(
    request: ClaimRequest, rows: dict[ModelKey, ModelRow], snap: Snapshot, ticket: int | None
) -> tuple[Verdict | None, list[Verdict], str]:
    if request.fallback:
        candidates = plan(request.primary, request.chain, rows)
    else:
        via: Via = "queue" if ticket is not None else "primary"
        candidates = [Candidate(request.primary, via, eligible=True, reason="the requested model")]
    global_ok, global_reason = snap.global_verdict()
    verdicts: list[Verdict] = []
    for candidate in candidates:
        if not candidate.eligible:
            verdicts.append(Verdict(candidate, granted=False, reason=candidate.reason))
            continue
        ok, reason = snap.model_verdict(candidate.key)
        if ok and not global_ok:
            ok, reason = False, global_reason
        verdict = Verdict(candidate, granted=ok, reason=reason)
        verdicts.append(verdict)
        if ok:
            return verdict, verdicts, global_reason
        if not global_ok:
            break  # no candidate can get past a full global cap
    return None, verdicts, global_reason


def _decide_now(
    conn: Connection, request: ClaimRequest, rows: dict[ModelKey, ModelRow]
) -> tuple[int | None, bool, tuple[Verdict | None, list[Verdict], str]]:
    """Read the snapshot for the request and decide; returns (ticket, requeued, decision)."""
    ticket, requeued = request.ticket, False
    if ticket is not None and not ticket_exists(conn, ticket):
        ticket, requeued = None, True  # our ticket was reaped while we were stalled
    return ticket, requeued, _decide(request, rows, snapshot(conn, rows, ticket), ticket)


def claim(
    conn: Connection,
    request: ClaimRequest,
    now: float,
    demand: Callable[[ModelKey], ModelRow],
) -> ClaimResult:
    """Grant a lease on the first candidate with room, or queue/keep a ticket. Write transaction.

    Reaping happens only when the primary could not be granted, and is followed by a second
    decision: an uncontended acquire never pays for it.
    """
    rows = read_models(conn)
    ensure_models(conn, rows, (request.primary, *request.chain), demand)
    ticket, requeued, (granted, verdicts, global_reason) = _decide_now(conn, request, rows)
    reaped: list[Removed] = []
    if granted is None or granted is not verdicts[0]:
        # Something stood in the way of the primary: if it is dead or expired, reclaim it and
        # decide again, so that a crashed holder never pushes a request onto a fallback.
        reaped = reap(conn, now, my_host=request.holder.host_id)
        if reaped:
            again, requeued_now, (granted, verdicts, global_reason) = _decide_now(
                conn, replace(request, ticket=ticket), rows
            )
            ticket, requeued = again, requeued or requeued_now

    result = ClaimResult(None, ticket, verdicts, global_reason, reaped, requeued)
    if granted is not None:
        result.lease = _insert_lease(conn, request, granted.candidate, now)
        if ticket is not None:
            conn.execute(_DELETE_TICKET, {"ticket_id": ticket})
            result.ticket = None
    elif ticket is None and (request.enqueue or requeued):
        result.ticket = enqueue(conn, request, now)
    return result


def could_grant(conn: Connection, requests: Sequence[ClaimRequest]) -> list[bool]:
    """For queued requests, whether each would be granted now, read without any lock.

    Waiters look with this when another process committed, and only those it answers True for
    (or whose ticket vanished) go on to ``claim`` and take the write lock. An answer can be stale
    by the time it is used, which only delays a waiter until the next commit or periodic claim;
    the periodic claim is also what reaps dead holders. One read of the queue answers for all.
    """
    rows = read_models(conn)
    limits = {key: row.limit for key, row in rows.items()}
    held, cap = held_counts(conn), max_agents(conn)
    ahead = ahead_of_each(queue(conn), [r.ticket for r in requests if r.ticket is not None])
    answers = []
    for request in requests:
        counts = ahead.get(request.ticket) if request.ticket is not None else None
        if request.primary not in rows or counts is None:
            answers.append(True)  # a config rewrite or a reaped ticket: claim sorts it out
        else:
            snap = Snapshot(limits=limits, held=held, ahead=counts, cap=cap)
            answers.append(snap.admits(request.primary))
    return answers


def explain(
    conn: Connection,
    primary: ModelKey,
    chain: Sequence[ModelKey],
    demand: Callable[[ModelKey], ModelRow],
) -> tuple[list[Verdict], str]:
    """Every candidate with its verdict for a fresh request, without writing anything."""
    rows = read_models(conn)
    for key in (primary, *chain):
        rows.setdefault(key, demand(key))
    snap = snapshot(conn, rows, None)
    global_ok, global_reason = snap.global_verdict()
    verdicts: list[Verdict] = []
    for candidate in plan(primary, chain, rows):
        if not candidate.eligible:
            verdicts.append(Verdict(candidate, granted=False, reason=candidate.reason))
            continue
        ok, reason = snap.model_verdict(candidate.key)
        if ok and not global_ok:
            ok, reason = False, f"{reason}, but {global_reason}"
        verdicts.append(Verdict(candidate, granted=ok, reason=reason))
    return verdicts, global_reason


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _insert_lease(
    conn: Connection, request: ClaimRequest, candidate: Candidate, now: float
) -> LeaseRecord:
    holder = request.holder
    expires = now + request.ttl
    values = {
        "token": request.token,
        "provider": candidate.key.provider,
        "model": candidate.key.model,
        "primary_provider": request.primary.provider,
        "primary_model": request.primary.model,
        "via": candidate.via,
        "holder": request.label,
        "pid": holder.pid,
        "pid_start": holder.pid_start,
        "host_id": holder.host_id,
        "hostname": holder.hostname,
        "owner": request.owner,
        "acquired_at": utc_text(now),
        "expires_at": utc_text(expires),
        "acquired_ts": now,
        "expires_ts": expires,
    }
    lease_id = _inserted_id(conn.execute(_INSERT_LEASE, values))
    return LeaseRecord(
        id=lease_id,
        token=request.token,
        key=candidate.key,
        primary=request.primary,
        via=candidate.via,
        holder=request.label,
        pid=holder.pid,
        pid_start=holder.pid_start,
        host_id=holder.host_id,
        hostname=holder.hostname,
        owner=request.owner,
        acquired_ts=now,
        expires_ts=expires,
    )


def enqueue(conn: Connection, request: ClaimRequest, now: float) -> int:
    """Queue a ticket for the request's primary; returns the ticket. Write transaction."""
    holder = request.holder
    expires = now + request.ttl
    values = {
        "token": request.ticket_token,
        "provider": request.primary.provider,
        "model": request.primary.model,
        "holder": request.label,
        "pid": holder.pid,
        "pid_start": holder.pid_start,
        "host_id": holder.host_id,
        "hostname": holder.hostname,
        "owner": request.owner,
        "enqueued_at": utc_text(now),
        "expires_at": utc_text(expires),
        "enqueued_ts": now,
        "expires_ts": expires,
    }
    return _inserted_id(conn.execute(_INSERT_TICKET, values))


# --- releasing and renewing --------------------------------------------------------------------


def release(conn: Connection, lease_id: int, token: str) -> bool:
    """Delete one lease by id and token; False when it was already gone (reclaimed)."""
    return conn.execute(_RELEASE, {"lease_id": lease_id, "lease_token": token}).rowcount > 0


def dequeue(conn: Connection, ticket_token: str) -> bool:
    """Remove a ticket by its token; False when it was already gone."""
    return conn.execute(delete(s.waiters).where(s.waiters.c.token == ticket_token)).rowcount > 0


def discard(conn: Connection, *, lease_token: str, ticket_token: str) -> None:
    """Remove whatever an interrupted acquire may have left: its lease and its ticket."""
    conn.execute(delete(s.leases).where(s.leases.c.token == lease_token))
    conn.execute(delete(s.waiters).where(s.waiters.c.token == ticket_token))


def release_owner(conn: Connection, owner: str) -> tuple[int, int]:
    """Delete every lease and ticket of one Limiter instance; returns (leases, tickets)."""
    leases = conn.execute(delete(s.leases).where(s.leases.c.owner == owner)).rowcount
    tickets = conn.execute(delete(s.waiters).where(s.waiters.c.owner == owner)).rowcount
    return leases, tickets


def renew(
    conn: Connection, owner: str, now: float, ttl: float, lease_ids: Collection[int]
) -> set[int]:
    """Extend every lease and ticket of ``owner`` by ``ttl``, one statement per table.

    ``lease_ids`` are the leases the caller believes it holds; the ones no longer stored (reaped
    after expiring) are returned so the caller can mark them lost. Needs a write transaction.
    """
    params = {
        "renew_owner": owner,
        "new_expires_ts": now + ttl,
        "new_expires_at": utc_text(now + ttl),
    }
    conn.execute(_RENEW_TICKETS, params)
    if not lease_ids:
        return set()
    if conn.execute(_RENEW_LEASES, params).rowcount >= len(lease_ids):
        return set()
    present = conn.execute(_OWNED_LEASE_IDS, {"renew_owner": owner}).scalars()
    return set(lease_ids) - set(present)
