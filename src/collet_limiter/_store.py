"""Every transaction, written once against a SQLAlchemy ``Connection``.

The caller opens the transaction (``_engine.write_transaction`` for writes) and passes the time:
these functions know nothing of waiting, threads, asyncio or clocks, which is what lets the sync
Limiter, the AsyncLimiter (through ``AsyncConnection.run_sync``) and any dialect share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

from . import _events
from . import _schema as s
from ._config import DEFAULT_MAX_AGENTS
from ._cooldown import NOTHING_LEARNED, Health, effective_limit, limits_at, next_change
from ._engine import Prepared, batch
from ._fairness import Snapshot, admissible
from ._fallback import ModelRow, Via
from ._identity import is_provably_dead
from ._keys import ModelKey
from ._profiles import CostTier

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from sqlalchemy.engine import Connection, Row


def utc_text(ts: float) -> str:
    """Seconds since the epoch as readable UTC text: ``2026-11-27T23:07:55.123Z``."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_datetime(ts: float) -> datetime:
    """Seconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


# The prepared statements (``_statements`` holds their SQL).
_SELECT_MODELS: Final = Prepared("store.select_models")
_SELECT_META: Final = Prepared("store.select_meta")
_HELD: Final = Prepared("store.held")
_WAITING: Final = Prepared("store.waiting")
_AHEAD: Final = Prepared("store.ahead")
_TICKET_EXISTS: Final = Prepared("store.ticket_exists")
_RELEASE: Final = Prepared("store.release")
# The same, saying in the same statement (round trip, on a server) whether anyone waits.
_RELEASE_RETURNING: Final = Prepared("store.release_returning")
_ANY_WAITER: Final = Prepared("store.any_waiter")
_REAPABLE: Final = {kind: Prepared(f"store.reapable.{kind}") for kind in ("lease", "ticket")}
_TICKET_BY_TOKEN: Final = Prepared("store.ticket_by_token")
_WAITERS: Final = Prepared("store.waiters")
_HOLDERS: Final = Prepared("store.holders")
# Granting one ticket: its lease from its row, then the row goes.
_GRANT_LEASE: Final = Prepared("store.grant_lease")
_DELETE_GRANTED: Final = Prepared("store.delete_granted")
_GRANT_QUEUE: Final = Prepared("store.grant_queue")
# A waiter's wake-up on PostgreSQL: its limiter's channel, its ticket as the payload.
_NOTIFY: Final = Prepared("store.notify")
_LEASE_BY_TOKEN: Final = Prepared("store.lease_by_token")
_DISCARD_LEASE: Final = Prepared("store.discard_lease")
_DISCARD_TICKET: Final = Prepared("store.discard_ticket")
_DELETE_OWNED: Final = tuple(Prepared(f"store.delete_owned.{t}") for t in ("leases", "tickets"))
_HOLDERS_OF: Final = Prepared("store.holders_of")
_INSERT_MODEL: Final = Prepared("store.insert_model")
_RENEW: Final = {table: Prepared(f"store.renew.{table}") for table in ("leases", "tickets")}
_OWNED_LEASE_TOKENS: Final = Prepared("store.owned_lease_tokens")
_DELETE_ID: Final = {kind: Prepared(f"store.delete_id.{kind}") for kind in ("lease", "ticket")}
_MODEL_OF: Final = Prepared("store.model_of")
_STORE_HEALTH: Final = Prepared("store.store_health")
# A lease from values (``_claim._lease_values``): returning its id, or for the driver's lastrowid.
INSERT_LEASE: Final = {
    True: Prepared("claim.insert_lease_returning"),
    False: Prepared("claim.insert_lease"),
}


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


def _model_row(row: Any) -> ModelRow:
    return ModelRow(
        key=ModelKey(row.provider, row.model),
        limit=row.concurrency_limit,
        cost_tier=CostTier(row.cost_tier),
        supports_tool_use=bool(row.supports_tool_use),
        is_cli=bool(row.is_cli),
        position=row.position,
        health=_health(row),
    )


def _health(row: Any) -> Health:
    if row.cooldown_until_ts is None and row.effective_limit is None:
        return NOTHING_LEARNED  # the usual row: one identity test tells the rules
    return Health(
        effective=row.effective_limit,
        limited_ts=row.limited_ts,
        recover_secs=row.recover_secs,
        cooldown_until=row.cooldown_until_ts,
        cooldown_kind=row.cooldown_kind,
        cooldown_reason=row.cooldown_reason,
    )


def health_values(health: Health) -> dict[str, object]:
    """The ``models`` columns that store ``health``."""
    until, since = health.cooldown_until, health.limited_ts
    return {
        "effective_limit": health.effective,
        "limited_at": None if since is None else utc_text(since),
        "limited_ts": since,
        "recover_secs": health.recover_secs,
        "cooldown_until_at": None if until is None else utc_text(until),
        "cooldown_until_ts": until,
        "cooldown_kind": health.cooldown_kind,
        "cooldown_reason": health.cooldown_reason,
    }


def _row_values(row: ModelRow) -> dict[str, object]:
    return {
        "provider": row.key.provider,
        "model": row.key.model,
        "concurrency_limit": row.limit,
        "cost_tier": row.cost_tier.value,
        "supports_tool_use": row.supports_tool_use,
        "is_cli": row.is_cli,
        "position": row.position,
        **health_values(row.health),
    }


# --- models and meta ---------------------------------------------------------------------------


def read_models(conn: Connection) -> dict[ModelKey, ModelRow]:
    """Every row of the ``models`` table."""
    return _models_from(_SELECT_MODELS.rows(conn))


def _models_from(rows: Iterable[Any]) -> dict[ModelKey, ModelRow]:
    return {model.key: model for model in map(_model_row, rows)}


def ensure_models(
    conn: Connection,
    rows: dict[ModelKey, ModelRow],
    keys: Iterable[ModelKey],
    demand: Callable[[ModelKey], ModelRow],
) -> None:
    """Add a row for each of ``keys`` the table lacks (and to ``rows``). Write transaction."""
    missing = {key: demand(key) for key in keys if key not in rows}
    if missing:
        _insert_models(conn, missing.values())
        rows.update(missing)


def _insert_models(conn: Connection, rows: Iterable[ModelRow]) -> None:
    for row in rows:
        _INSERT_MODEL.execute(conn, _row_values(row)).close()


def read_meta(conn: Connection) -> dict[str, str]:
    """The settings table."""
    from ._statements import SELECT_META

    return {row.key: row.value for row in conn.execute(SELECT_META)}


def max_agents(conn: Connection) -> int:
    """The global cap in force (the last config written wins)."""
    return _cap_from(_SELECT_META.rows(conn, _CAP_KEY))


_CAP_KEY: Final = {"meta_key": s.META_MAX_AGENTS}


def _cap_from(rows: Sequence[Any]) -> int:
    return int(rows[0][0]) if rows else DEFAULT_MAX_AGENTS


def write_config(
    conn: Connection,
    *,
    rows: Sequence[ModelRow],
    cap: int,
    fingerprint: str,
    source: str,
    now: float,
    demand: Callable[[ModelKey], ModelRow],
    history: bool = False,
) -> bool:
    """Seed the ``models`` table and the global cap from a config, unless already current.

    Returns True when it wrote. Rows added on demand are kept, recomputed under the new config.
    With ``history``, a limit of a model that stays and a changed cap are recorded
    (``limit_changed``).
    """
    if stored_fingerprint(conn) == fingerprint:
        return False
    from . import _statements as q

    stored = read_models(conn)
    stored_cap = _SELECT_META.scalar(conn, _CAP_KEY)
    demand_keys = [key for key, row in stored.items() if row.position is None]
    conn.execute(q.DELETE_MODELS)
    configured = {row.key for row in rows}

    def learned(row: ModelRow) -> ModelRow:
        # A cooldown survives a config change; an adaptive limit does not: it was learned
        # against the old configured limit, and the new one is the operator's new word.
        before = stored.get(row.key)
        if before is None or before.health is NOTHING_LEARNED:
            return row
        return replace(row, health=replace(before.health, effective=None, recover_secs=None))

    new_rows = [learned(row) for row in rows]
    new_rows += [learned(demand(key)) for key in demand_keys if key not in configured]
    if new_rows:
        _insert_models(conn, new_rows)
    if history:
        _record_limits(conn, stored, new_rows, now)
        if stored_cap is not None and int(stored_cap) != cap:
            _events.record(
                conn, "limit_changed", now, limit_before=int(stored_cap), limit_after=cap,
                reason=f"max_agents of {source}",
            )  # fmt: skip
    settings = {
        s.META_MAX_AGENTS: str(cap),
        s.META_FINGERPRINT: fingerprint,
        s.META_CONFIG_SOURCE: source,
        s.META_CONFIG_WRITTEN_AT: utc_text(now),
    }
    conn.execute(q.delete_meta(list(settings)))
    conn.execute(q.INSERT_META, [{"key": k, "value": v} for k, v in settings.items()])
    return True


def _record_limits(
    conn: Connection, stored: Mapping[ModelKey, ModelRow], rows: Iterable[ModelRow], now: float
) -> None:
    """A ``limit_changed`` event for each model whose limit in force a config rewrite changed
    (the configured limit, or an adaptive limit it dropped)."""
    for row in rows:
        before = stored.get(row.key)
        if before is None:
            continue
        old = effective_limit(before.limit, before.health, now)
        new = effective_limit(row.limit, row.health, now)
        if old != new:
            _events.record(
                conn, "limit_changed", now, provider=row.key.provider, model=row.key.model,
                limit_before=old, limit_after=new, reason="config",
            )  # fmt: skip


def stored_fingerprint(conn: Connection) -> str | None:
    """The fingerprint of the config last written to the database."""
    value = _SELECT_META.scalar(conn, {"meta_key": s.META_FINGERPRINT})
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
    from ._statements import LIST_LEASES

    return [_lease_record(row) for row in conn.execute(LIST_LEASES)]


def list_tickets(conn: Connection) -> list[TicketRecord]:
    """Every queued ticket, in queue order."""
    from ._statements import LIST_TICKETS

    rows = conn.execute(LIST_TICKETS)
    return [_ticket_record(row) for row in rows]


def held_counts(conn: Connection) -> dict[ModelKey, int]:
    """Leases per model."""
    return _counts_from(_HELD.rows(conn))


def _counts_from(rows: Iterable[Any]) -> dict[ModelKey, int]:
    return {ModelKey(provider, model): count for provider, model, count in rows}


def _waiting_query(before: int | None) -> tuple[Prepared, dict[str, Any] | None]:
    return (_WAITING, None) if before is None else (_AHEAD, {"ticket_id": before})


def waiting_counts(conn: Connection, before: int | None = None) -> dict[ModelKey, int]:
    """Waiters per model: all of them, or those queued before ticket ``before``."""
    query, params = _waiting_query(before)
    return _counts_from(query.rows(conn, params))


# A prepared statement and its parameters, as ``batch`` takes them.
Query = tuple[Prepared, "dict[str, Any] | None"]


def _counts_queries(ticket: int | None) -> list[Query]:
    """Leases per model, waiters ahead of ``ticket`` per model, the global cap."""
    return [(_HELD, None), _waiting_query(ticket), (_SELECT_META, _CAP_KEY)]


def make_snapshot(
    rows: Mapping[ModelKey, ModelRow],
    now: float,
    *,
    held: Mapping[ModelKey, int],
    ahead: Mapping[ModelKey, int],
    cap: int,
) -> Snapshot:
    """The fairness rule's snapshot with the limits in force at ``now`` (cooldowns applied)."""
    limits = limits_at(rows, now)
    return Snapshot(
        limits=limits.limits,
        held=held,
        ahead=ahead,
        cap=cap,
        cooling=limits.cooling,
        lowered=limits.lowered,
    )


def snapshot(
    conn: Connection, rows: dict[ModelKey, ModelRow], ticket: int | None, now: float
) -> Snapshot:
    """Limits, lease counts and cap, and the waiters ahead of ``ticket``, as of this transaction."""
    held, ahead, cap = batch(
        conn, [(_HELD, None), _waiting_query(ticket), (_SELECT_META, _CAP_KEY)]
    )
    return make_snapshot(
        rows, now, held=_counts_from(held), ahead=_counts_from(ahead), cap=_cap_from(cap)
    )


State = tuple[dict[ModelKey, ModelRow], Snapshot, bool]


def state_queries(ticket: int | None, ticket_token: str) -> list[Query]:
    """The reads of ``state``, for a caller that sends them with others (``batch``)."""
    exists_query = (_TICKET_EXISTS, {"ticket_id": ticket or 0, "ticket_token": ticket_token})
    return [(_SELECT_MODELS, None), *_counts_queries(ticket), exists_query]


def state_from(results: Sequence[list[Any]], ticket: int | None, now: float) -> State:
    """``state`` from the rows of ``state_queries``."""
    models, held, ahead, cap, found = results
    rows = _models_from(models)
    snap = make_snapshot(
        rows, now, held=_counts_from(held), ahead=_counts_from(ahead), cap=_cap_from(cap)
    )
    return rows, snap, ticket is None or bool(found[0][0])


def state(conn: Connection, ticket: int | None, ticket_token: str, now: float) -> State:
    """The ``models`` rows, the snapshot for ``ticket`` and whether that ticket is still queued
    (True for no ticket), read together (one round trip on a server)."""
    return state_from(batch(conn, state_queries(ticket, ticket_token)), ticket, now)


def ticket_exists(conn: Connection, ticket: int, token: str) -> bool:
    """Whether a ticket is still queued (reaping removes the tickets of stalled waiters)."""
    params = {"ticket_id": ticket, "ticket_token": token}
    return bool(_TICKET_EXISTS.scalar(conn, params))


def ticket_by_token(conn: Connection, token: str) -> int | None:
    """The id of the ticket queued under ``token``, if any."""
    found = _TICKET_BY_TOKEN.scalar(conn, {"ticket_token": token})
    return None if found is None else int(found)


def grant_waiting(
    conn: Connection,
    now: float,
    *,
    skip: int | None = None,
    anyone_waiting: bool | None = None,
) -> list[tuple[str, int]]:
    """Grant the waiters the fairness rule now admits; returns whom to wake after commit.

    Called at the end of every transaction that frees room (release, reap, discard, close): one
    read of the queue, and nothing more when it is empty. On PostgreSQL the wake-ups are
    ``NOTIFY``s issued here, which the server delivers when (and only if) the transaction
    commits; nothing is left to send after the commit. Each admitted ticket that carries a
    lease token becomes that waiter's lease (via ``queue``, expiring when the ticket would) in
    this transaction, so the woken waiter only reads it: one write per handoff. A ticket without
    one (queued by an older collet-limiter) is only woken, and claims for itself. ``skip`` is
    the caller's own ticket; ``anyone_waiting`` whether anyone waits, when the caller knows (a
    release asks in its own statement). Returns (wake address, ticket) for every admitted
    ticket that has an address.
    """
    if anyone_waiting is None:
        cursor = _ANY_WAITER.execute(conn)
        anyone_waiting = cursor.fetchone() is not None
        cursor.close()
    if not anyone_waiting:  # the usual case, answered by the driver alone
        return []
    waiting = _GRANT_QUEUE.rows(conn)
    if not waiting:
        return []
    # Keyed by (provider, model) tuples, which hash in C: a ModelKey's hash is a Python call,
    # and the rule looks keys up a few times per waiter.
    rows: dict[ModelKey, ModelRow] = {}
    held: dict[tuple[str, str], int] = {}
    for row in waiting:
        pair = (row.provider, row.model)
        if pair not in held:
            held[pair] = row.held_here
            if row.concurrency_limit is not None:  # else it has no models row
                model = _model_row(row)
                rows[model.key] = model
    limits = limits_at(rows, now).limits
    first = waiting[0]
    tickets = admissible(
        [(row.id, (row.provider, row.model)) for row in waiting],
        {(key.provider, key.model): limit for key, limit in limits.items()},
        held,
        DEFAULT_MAX_AGENTS if first.cap is None else int(first.cap),
        held_total=first.held_all,
    )
    by_id = {row.id: row for row in waiting}
    tickets = [t for t in tickets if t != skip]
    granted = [t for t in tickets if by_id[t].lease_token is not None]
    granted_at = utc_text(now) if granted else ""
    writes: list[tuple[Prepared, dict[str, Any] | None]] = []
    for ticket in granted:  # in queue order, so lease ids follow it
        params = {"granted_id": ticket, "granted_ts": now, "granted_at": granted_at}
        writes += [(_GRANT_LEASE, params), (_DELETE_GRANTED, {"granted_id": ticket})]
    targets = [(by_id[t].wake_addr, t) for t in tickets if by_id[t].wake_addr]
    on_server = conn.dialect.name == "postgresql"
    if on_server:
        writes += [(_NOTIFY, {"channel": c, "payload": str(t)}) for c, t in targets]
    batch(conn, writes)
    return [] if on_server else targets


def lease_by_token(conn: Connection, token: str) -> LeaseRecord | None:
    """The lease stored under ``token`` (granted to a waiter by someone else's release)."""
    return lease_from(_LEASE_BY_TOKEN.rows(conn, {"token": token}))


def lease_query(token: str) -> Query:
    """The read of ``lease_by_token``, for a caller that sends it with others (``batch``)."""
    return (_LEASE_BY_TOKEN, {"token": token})


def lease_from(found: Sequence[Any]) -> LeaseRecord | None:
    """``lease_by_token`` from the rows of ``lease_query``."""
    if not found:
        return None
    row = found[0]
    return LeaseRecord(
        id=row.id,
        token=row.token,
        key=ModelKey(row.provider, row.model),
        primary=ModelKey(row.primary_provider, row.primary_model),
        via=row.via,
        holder=row.holder,
        pid=row.pid,
        pid_start=row.pid_start,
        host_id=row.host_id,
        hostname=row.hostname,
        owner=row.owner,
        acquired_ts=row.acquired_ts,
        expires_ts=row.expires_ts,
    )


@dataclass(frozen=True, slots=True)
class Outlook:
    """What a watcher needs besides the queue: who could die, and when something changes."""

    holders: frozenset[tuple[int, float]]  # (pid, start) of this host's holders and waiters
    # The earliest expiry of any lease or ticket, or end of a waited-for model's cooldown or
    # step of its adaptive limit: nothing is written then, so nothing else would tell.
    next_expiry: float | None
    # Waited-for models whose cooldown ended within ``SPREAD_WINDOW`` seconds before now: their
    # waiters are woken spread out (see Watcher), not all in the same millisecond.
    cooled: frozenset[ModelKey] = frozenset()


# How recently a cooldown must have ended for its waiters' wake-ups to be spread: the watcher
# looks within milliseconds of the end (its timer), so a few seconds only excludes old ones.
SPREAD_WINDOW: Final = 5.0


def outlook(
    conn: Connection,
    waiting: Sequence[Any],
    my_host: str,
    models: Mapping[ModelKey, ModelRow],
    now: float,
) -> Outlook:
    """The holders a watcher can watch for death, and the next expiry, from one more read."""
    leases = _HOLDERS.rows(conn)
    rows = [*leases, *waiting]
    holders = frozenset((r.pid, r.pid_start) for r in rows if r.host_id == my_host)
    expiry = min((r.expires_ts for r in rows), default=math.inf)
    waited = {ModelKey(r.provider, r.model) for r in waiting}
    expiry = min(expiry, next_change(models, waited, now))
    cooled = frozenset(
        key
        for key in waited
        if (row := models.get(key)) is not None
        and (until := row.health.cooldown_until) is not None
        and now - SPREAD_WINDOW <= until <= now
    )
    return Outlook(holders, None if math.isinf(expiry) else expiry, cooled)


def waiters_detail(conn: Connection) -> Sequence[Any]:
    """Every waiter (rows) with its wake address, process and expiry, in queue order."""
    return _WAITERS.rows(conn)


# --- reaping -----------------------------------------------------------------------------------


def reap(conn: Connection, now: float, *, my_host: str, history: bool) -> list[Removed]:
    """Delete leases and tickets that expired or whose holder is provably dead.

    Only rows that expired or were written on this host identity are examined: a holder on
    another host can be judged by its expiry alone. With ``history``, each is recorded as a
    ``reclaimed`` event. Needs a write transaction.
    """
    removed: list[Removed] = []
    verdicts: dict[tuple[int, float], bool] = {}

    def dead(pid: int, pid_start: float) -> bool:
        if (pid, pid_start) not in verdicts:
            verdicts[(pid, pid_start)] = is_provably_dead(
                holder_host=my_host, pid=pid, pid_start=pid_start
            )
        return verdicts[(pid, pid_start)]

    params = {"now": now, "my_host": my_host}
    found = batch(conn, [(_REAPABLE["lease"], params), (_REAPABLE["ticket"], params)])
    for kind, candidates in zip(("lease", "ticket"), found, strict=True):
        doomed: list[int] = []
        ended: list[Query] = []
        for row in candidates:
            if row.expires_ts < now:
                reason = "expired"
            elif dead(row.pid, row.pid_start):
                reason = "holder dead"
            else:
                continue
            doomed.append(row.id)
            if history:
                ending = _events.lease_ended if kind == "lease" else _events.ticket_ended
                ended.append(ending(now, kind="reclaimed", row=(row.id, row.token), reason=reason))
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
            batch(conn, [*ended, *((_DELETE_ID[kind], {"row_id": i}) for i in doomed)])
    return removed


# --- releasing and renewing --------------------------------------------------------------------


def release(
    conn: Connection, lease_id: int, token: str, now: float, *, history: bool
) -> tuple[bool, bool | None]:
    """Delete one lease by id and token (with ``history``, recorded as ``released`` first).

    Returns whether it was there (False: already reclaimed) and, when the database can say it
    in the same statement, whether anyone waits (None: not asked).
    """
    params = {"lease_id": lease_id, "lease_token": token}
    ended = [_events.lease_ended(now, kind="released", row=(lease_id, token))] if history else []
    if conn.dialect.delete_returning:
        found = batch(conn, [*ended, (_RELEASE_RETURNING, params)])[-1]
        return (True, bool(found[0][0])) if found else (False, None)
    batch(conn, ended)
    cursor = _RELEASE.execute(conn, params)
    released = cursor.rowcount > 0
    cursor.close()
    return bool(released), None


def discard(conn: Connection, *, lease_token: str, ticket_token: str) -> None:
    """Remove whatever an interrupted acquire may have left: its lease and its ticket."""
    _DISCARD_LEASE.execute(conn, {"lease_token": lease_token}).close()
    _DISCARD_TICKET.execute(conn, {"ticket_token": ticket_token}).close()


def release_owner(conn: Connection, owner: str, now: float, *, history: bool) -> tuple[int, int]:
    """Delete every lease and ticket of one Limiter instance; returns (leases, tickets).

    With ``history`` its leases are recorded as released, its tickets as cancelled."""
    if history:
        _events.closed(conn, now, owner)
    counts = []
    for statement in _DELETE_OWNED:
        cursor = statement.execute(conn, {"owner": owner})
        counts.append(cursor.rowcount)
        cursor.close()
    leases, tickets = counts
    return leases, tickets


def renew(
    conn: Connection, owner: str, now: float, ttl: float, lease_tokens: Collection[str]
) -> set[str]:
    """Extend every lease and ticket of ``owner`` by ``ttl``, one statement per table.

    ``lease_tokens`` are the leases the caller believes it holds; the ones no longer stored
    (reaped after expiring) are returned so the caller can mark them lost. Tokens, not ids:
    they are what proves a row is this lease. Needs a write transaction.
    """
    params = {
        "renew_owner": owner,
        "new_expires_ts": now + ttl,
        "new_expires_at": utc_text(now + ttl),
    }
    _RENEW["tickets"].execute(conn, params).close()
    # Leases too when the caller knows of none: a release may have granted one to a waiter of
    # this owner that has not read it yet.
    cursor = _RENEW["leases"].execute(conn, params)
    renewed, _ = cursor.rowcount, cursor.close()
    if renewed >= len(lease_tokens):
        return set()
    present = _OWNED_LEASE_TOKENS.rows(conn, {"renew_owner": owner})
    return set(lease_tokens) - {row[0] for row in present}


def readopt(conn: Connection, record: LeaseRecord, now: float, ttl: float) -> LeaseRecord:
    """Insert a lease this process holds into a database that lost it (the file was replaced).

    The lease keeps its token and holder; it gets a new id and a fresh expiry. A lease the new
    file already holds (it came with an old ``-wal`` file) is kept as it is. Write transaction.
    """
    stored = lease_by_token(conn, record.token)
    if stored is not None:
        return replace(record, id=stored.id)
    values = {
        "token": record.token,
        "provider": record.key.provider,
        "model": record.key.model,
        "primary_provider": record.primary.provider,
        "primary_model": record.primary.model,
        "via": record.via,
        "holder": record.holder,
        "pid": record.pid,
        "pid_start": record.pid_start,
        "host_id": record.host_id,
        "hostname": record.hostname,
        "owner": record.owner,
        "acquired_at": utc_text(record.acquired_ts),
        "expires_at": utc_text(now + ttl),
        "acquired_ts": record.acquired_ts,
        "expires_ts": now + ttl,
        "requested_ts": record.acquired_ts,
    }
    return replace(record, id=insert_lease(conn, values), expires_ts=now + ttl)


def insert_lease(conn: Connection, values: dict[str, Any]) -> int:
    """Insert a lease from its column values; returns its id."""
    returning = bool(conn.dialect.insert_returning)
    cursor = INSERT_LEASE[returning].execute(conn, values)
    try:
        if returning:
            row = cursor.fetchone()
            assert row is not None
            return int(row[0])
        return int(cursor.lastrowid)
    finally:
        cursor.close()


# --- learning from refusals --------------------------------------------------------------------


def model_row(conn: Connection, key: ModelKey, demand: Callable[[ModelKey], ModelRow]) -> ModelRow:
    """The ``models`` row of ``key``, added from ``demand`` if the table lacks it. Write
    transaction."""
    found = _MODEL_OF.rows(conn, {"provider": key.provider, "model": key.model})
    if found:
        return _model_row(found[0])
    rows: dict[ModelKey, ModelRow] = {}
    ensure_models(conn, rows, [key], demand)
    return rows[key]


def holders_of(conn: Connection, key: ModelKey) -> int:
    """How many leases ``key`` has now."""
    return int(_HOLDERS_OF.scalar(conn, {"provider": key.provider, "model": key.model}) or 0)


def store_health(conn: Connection, key: ModelKey, health: Health) -> None:
    """Write what was learned about ``key`` to its ``models`` row. Write transaction."""
    values = {f"h_{column}": value for column, value in health_values(health).items()}
    _STORE_HEALTH.execute(conn, {"provider": key.provider, "model": key.model, **values}).close()
