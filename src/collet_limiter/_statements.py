"""The statements of ``_claim``, ``_store`` and ``_events`` as SQLAlchemy Core constructs.

The one definition of their SQL. The modules that run them hold ``Prepared`` statements by name
(``STATEMENTS`` maps each name to its construct) and import this module only to run a statement
that is not prepared (a config write, a renewal, a reap's delete, ...) or to compile one: on
SQLite ``_sqltext`` holds the text ``python -m collet_limiter._sqlgen`` compiled from here, so a
process that only acquires and releases never builds these, and the hot path's modules import
without SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    update,
)

from . import _schema as s

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, Insert, Select, Table, Update
    from sqlalchemy.sql.expression import ClauseElement

# Every statement a ``Prepared`` runs, by its name.
STATEMENTS: Final[dict[str, ClauseElement]] = {}


def _named(name: str, statement: Any) -> None:
    if name in STATEMENTS:
        raise ValueError(f"two statements are named {name!r}")
    STATEMENTS[name] = statement


# --- the history (_events) ---------------------------------------------------------------------


def _ended(table: Table, kind: str, *, held: bool) -> list[ColumnElement[Any]]:
    """The ``events`` values of a lease or ticket row at ``e_ts``: for a lease's end (``held``)
    how long it waited for its grant and was held; else how long the request had waited."""
    now: Any = bindparam("e_ts", type_=Float)
    lease = table is s.leases
    requested = func.coalesce(
        table.c.requested_ts, table.c.acquired_ts if lease else table.c.enqueued_ts
    )
    return [
        literal(kind) if kind else bindparam("e_kind"),
        bindparam("e_at"),
        now,
        table.c.provider,
        table.c.model,
        table.c.primary_provider if lease else table.c.provider,
        table.c.primary_model if lease else table.c.model,
        table.c.via if lease else null(),
        table.c.id if lease else null(),
        null() if lease else table.c.id,
        table.c.holder,
        table.c.pid,
        table.c.hostname,
        table.c.acquired_ts if lease else null(),
        ((table.c.acquired_ts if held else now) - requested) * 1000.0,
        (now - table.c.acquired_ts) * 1000.0 if held else null(),
        bindparam("e_reason", type_=Text),
        null(),
        null(),
        null(),
        null(),
    ]


def _copy(
    table: Table, kind: str, where: ColumnElement[bool], name: str, *, held: bool = True
) -> None:
    values = select(*_ended(table, kind, held=held and table is s.leases)).where(where)
    _named(name, insert(s.events).from_select(list(s.EVENT_COLUMNS), values))


_BY_ID: Final = {
    t: (t.c.id == bindparam("row_id")) & (t.c.token == bindparam("row_token"))
    for t in (s.leases, s.waiters)
}
_BY_TOKEN: Final = {t: t.c.token == bindparam("row_token") for t in (s.leases, s.waiters)}
_BY_OWNER: Final = {t: t.c.owner == bindparam("row_owner") for t in (s.leases, s.waiters)}

_copy(s.leases, "", _BY_ID[s.leases], "events.lease_by_id")
_copy(s.waiters, "", _BY_ID[s.waiters], "events.ticket_by_id")
_copy(s.leases, "discarded", _BY_TOKEN[s.leases], "events.discarded_lease")
for _table in (s.waiters, s.leases):
    _copy(_table, "", _BY_TOKEN[_table], f"events.gave_up.{_table.name}", held=False)
_copy(s.leases, "released", _BY_OWNER[s.leases], "events.closed_leases")
_copy(s.waiters, "cancelled", _BY_OWNER[s.waiters], "events.closed_tickets")
_named("events.insert", insert(s.events).values({c: bindparam(c) for c in s.EVENT_COLUMNS}))

# Pruning (see _events.prune).
_named(
    "events.batch_end",
    select(s.events.c.id).order_by(s.events.c.id).limit(1).offset(bindparam("skip")),
)
_named(
    "events.first_kept",
    select(func.min(s.events.c.id)).where(
        (s.events.c.id < bindparam("bound")) & (s.events.c.ts >= bindparam("cutoff"))
    ),
)
_KEY_COLUMNS: Final = ("kind", "provider", "model", "via")


def _key(column: str) -> ColumnElement[Any]:
    return (
        func.coalesce(s.events.c[column], literal_column("''"))
        if column != "kind"
        else s.events.c.kind
    )


_COUNTS: Final = select(*(_key(c).label(c) for c in _KEY_COLUMNS), func.count()).group_by(
    *(_key(c) for c in _KEY_COLUMNS)
)
_named("events.all_counts", _COUNTS)
_named("events.aged", _COUNTS.where(s.events.c.id < bindparam("stop")))
_named("events.delete_aged", delete(s.events).where(s.events.c.id < bindparam("stop")))
_COUNT_KEY: Final = (
    (s.event_counts.c.kind == bindparam("k_kind"))
    & (s.event_counts.c.provider == bindparam("k_provider"))
    & (s.event_counts.c.model == bindparam("k_model"))
    & (s.event_counts.c.via == bindparam("k_via"))
)
_named(
    "events.add_count",
    update(s.event_counts)
    .where(_COUNT_KEY)
    .values(count=s.event_counts.c.count + bindparam("k_count")),
)
_named(
    "events.new_count",
    insert(s.event_counts).values(
        kind=bindparam("k_kind"),
        provider=bindparam("k_provider"),
        model=bindparam("k_model"),
        via=bindparam("k_via"),
        count=bindparam("k_count"),
    ),
)
PRUNED_COUNTS: Final = select(s.event_counts)

# --- reading and writing state (_store) --------------------------------------------------------

_named("store.select_models", select(s.models))
_named("store.select_meta", select(s.meta.c.value).where(s.meta.c.key == bindparam("meta_key")))
_named(
    "store.held",
    select(s.leases.c.provider, s.leases.c.model, func.count()).group_by(
        s.leases.c.provider, s.leases.c.model
    ),
)
_WAITING_SELECT: Final = select(s.waiters.c.provider, s.waiters.c.model, func.count()).group_by(
    s.waiters.c.provider, s.waiters.c.model
)
_named("store.waiting", _WAITING_SELECT)
_named("store.ahead", _WAITING_SELECT.where(s.waiters.c.id < bindparam("ticket_id")))
_named(
    "store.ticket_exists",
    select(func.count()).where(
        (s.waiters.c.id == bindparam("ticket_id"))
        & (s.waiters.c.token == bindparam("ticket_token"))
    ),
)
_named(
    "store.insert_model", insert(s.models).values({c.name: bindparam(c.name) for c in s.models.c})
)
_RELEASE_STATEMENT: Final = delete(s.leases).where(
    (s.leases.c.id == bindparam("lease_id")) & (s.leases.c.token == bindparam("lease_token"))
)
_named("store.release", _RELEASE_STATEMENT)
# The same, saying in the same statement (round trip, on a server) whether anyone waits.
_named("store.release_returning", _RELEASE_STATEMENT.returning(select(s.waiters.c.id).exists()))
_named("store.any_waiter", select(s.waiters.c.id).limit(1))


def _reapable(table: Table) -> Select[Any]:
    return select(
        table.c.id,
        table.c.token,
        table.c.provider,
        table.c.model,
        table.c.pid,
        table.c.pid_start,
        table.c.hostname,
        table.c.holder,
        table.c.expires_ts,
    ).where((table.c.expires_ts < bindparam("now")) | (table.c.host_id == bindparam("my_host")))


_named("store.reapable.lease", _reapable(s.leases))
_named("store.reapable.ticket", _reapable(s.waiters))


def _renew(table: Table) -> Update:
    return (
        update(table)
        .where(table.c.owner == bindparam("renew_owner"))
        .values(expires_ts=bindparam("new_expires_ts"), expires_at=bindparam("new_expires_at"))
    )


_named("store.renew.leases", _renew(s.leases))
_named("store.renew.tickets", _renew(s.waiters))
_named(
    "store.owned_lease_tokens",
    select(s.leases.c.token).where(s.leases.c.owner == bindparam("renew_owner")),
)
LEASE_ID_BY_TOKEN: Final = select(s.leases.c.id).where(s.leases.c.token == bindparam("token"))
_named("store.delete_id.lease", delete(s.leases).where(s.leases.c.id == bindparam("row_id")))
_named("store.delete_id.ticket", delete(s.waiters).where(s.waiters.c.id == bindparam("row_id")))
_THIS_MODEL: Final = (s.models.c.provider == bindparam("provider")) & (
    s.models.c.model == bindparam("model")
)
_named("store.model_of", select(s.models).where(_THIS_MODEL))
_named(
    "store.store_health",
    update(s.models).where(_THIS_MODEL).values({c: bindparam(f"h_{c}") for c in s.HEALTH_COLUMNS}),
)
SELECT_META: Final = select(s.meta)
DELETE_MODELS: Final = delete(s.models)
INSERT_META: Final = insert(s.meta)
LIST_LEASES: Final = select(s.leases).order_by(s.leases.c.id)
LIST_TICKETS: Final = select(s.waiters).order_by(s.waiters.c.id)


def delete_meta(keys: list[str]) -> Any:
    """Delete the ``meta`` rows of ``keys``."""
    return delete(s.meta).where(s.meta.c.key.in_(keys))


_named(
    "store.ticket_by_token",
    select(s.waiters.c.id).where(s.waiters.c.token == bindparam("ticket_token")),
)
_named(
    "store.waiters",
    select(
        s.waiters.c.id,
        s.waiters.c.provider,
        s.waiters.c.model,
        s.waiters.c.wake_addr,
        s.waiters.c.lease_token,
        s.waiters.c.pid,
        s.waiters.c.pid_start,
        s.waiters.c.host_id,
        s.waiters.c.expires_ts,
    ).order_by(s.waiters.c.id),
)
_named(
    "store.holders",
    select(s.leases.c.pid, s.leases.c.pid_start, s.leases.c.host_id, s.leases.c.expires_ts),
)

# Granting one ticket: its lease from its row, then the row goes. One pair of prepared statements
# per ticket (a release usually admits one) rather than an expanding IN list, which SQLAlchemy
# would compile anew on every execution.
_named(
    "store.grant_lease",
    insert(s.leases).from_select(
        [
            "token", "provider", "model", "primary_provider", "primary_model", "via", "holder",
            "pid", "pid_start", "host_id", "hostname", "owner", "acquired_at", "expires_at",
            "acquired_ts", "expires_ts", "requested_ts",
        ],
        select(
            s.waiters.c.lease_token, s.waiters.c.provider, s.waiters.c.model,
            s.waiters.c.provider, s.waiters.c.model, literal("queue"), s.waiters.c.holder,
            s.waiters.c.pid, s.waiters.c.pid_start, s.waiters.c.host_id, s.waiters.c.hostname,
            s.waiters.c.owner, bindparam("granted_at"), s.waiters.c.expires_at,
            bindparam("granted_ts"), s.waiters.c.expires_ts,
            func.coalesce(s.waiters.c.requested_ts, s.waiters.c.enqueued_ts),
        ).where(s.waiters.c.id == bindparam("granted_id")),
    ),
)  # fmt: skip
_named("store.delete_granted", delete(s.waiters).where(s.waiters.c.id == bindparam("granted_id")))


def _grant_queue() -> Select[Any]:
    """SQL: the queue in order, each waiter with its model's row and leases, the leases of
    every model, and the global cap: all the fairness rule reads, in one statement.

    A waiter whose model has no row gets NULLs there (the rule passes it over, as before);
    the leases of models nobody waits for only count against the cap.
    """
    w, m, lease = s.waiters.c, s.models.c, s.leases.c
    same_model = (m.provider == w.provider) & (m.model == w.model)
    model_columns = [c for c in s.models.c if c.name not in ("provider", "model")]
    return (
        select(
            w.id,
            w.provider,
            w.model,
            w.wake_addr,
            w.lease_token,
            *model_columns,
            select(func.count())
            .where((lease.provider == w.provider) & (lease.model == w.model))
            .scalar_subquery()
            .label("held_here"),
            select(func.count()).select_from(s.leases).scalar_subquery().label("held_all"),
            select(s.meta.c.value)
            .where(s.meta.c.key == s.META_MAX_AGENTS)
            .scalar_subquery()
            .label("cap"),
        )
        .select_from(s.waiters.outerjoin(s.models, same_model))
        .order_by(w.id)
    )


_named("store.grant_queue", _grant_queue())
# A waiter's wake-up on PostgreSQL: its limiter's channel, its ticket as the payload.
_named("store.notify", select(func.pg_notify(bindparam("channel"), bindparam("payload"))))
_named("store.lease_by_token", select(s.leases).where(s.leases.c.token == bindparam("token")))
_named("store.discard_lease", delete(s.leases).where(s.leases.c.token == bindparam("lease_token")))
_named(
    "store.discard_ticket", delete(s.waiters).where(s.waiters.c.token == bindparam("ticket_token"))
)
for _table, _name in ((s.leases, "leases"), (s.waiters, "tickets")):
    _named(
        f"store.delete_owned.{_name}", delete(_table).where(_table.c.owner == bindparam("owner"))
    )
_named(
    "store.holders_of",
    select(func.count()).where(
        (s.leases.c.provider == bindparam("provider")) & (s.leases.c.model == bindparam("model"))
    ),
)

# --- claiming (_claim) -------------------------------------------------------------------------

LEASE_COLUMNS: Final = (
    "token", "provider", "model", "primary_provider", "primary_model", "via", "holder", "pid",
    "pid_start", "host_id", "hostname", "owner", "acquired_at", "expires_at", "acquired_ts",
    "expires_ts", "requested_ts",
)  # fmt: skip


def _count(table: Any, *where: Any) -> Any:
    return select(func.count()).select_from(table).where(*where).scalar_subquery()


def _room_ahead_of(ticket: Any) -> Any:
    """SQL: room for the request even if every waiter queued before it were served first.

    ``ticket`` bounds the waiters ahead (all of them for a fresh request). Counting every
    waiter ahead against the global cap, rather than only those whose model has room, is
    stricter than the fairness rule, so whatever this admits the rule admits too; what it
    refuses goes on to the general path, which applies the rule exactly.
    """
    provider: Any = bindparam("v_provider")
    model: Any = bindparam("v_model")
    lease_on = (s.leases.c.provider == provider) & (s.leases.c.model == model)
    ahead = s.waiters.c.id < ticket
    ahead_on = ahead & (s.waiters.c.provider == provider) & (s.waiters.c.model == model)
    # Only a model that learned nothing takes this path: one with a cooldown (ongoing, or
    # ended and not yet recorded as ended), or with an adaptive limit, has no limit here (NULL),
    # and goes on to the general path, which applies _cooldown and forgets what is over.
    limit = (
        select(s.models.c.concurrency_limit)
        .where(
            (s.models.c.provider == provider)
            & (s.models.c.model == model)
            & s.models.c.effective_limit.is_(None)
            & s.models.c.cooldown_until_ts.is_(None)
        )
        .scalar_subquery()
    )
    cap = (
        select(cast(s.meta.c.value, Integer))
        .where(s.meta.c.key == s.META_MAX_AGENTS)
        .scalar_subquery()
    )
    return and_(  # a missing models row makes this NULL: no
        _count(s.leases, lease_on) + _count(s.waiters, ahead_on) < limit,
        _count(s.leases) + _count(s.waiters, ahead) < cap,
    )


def _conditional_insert(*conditions: Any) -> Insert:
    values: Any = select(*(bindparam(f"v_{name}") for name in LEASE_COLUMNS)).where(*conditions)
    return insert(s.leases).from_select(list(LEASE_COLUMNS), values)


# A fresh request is behind every waiter (no ticket can exceed this); a queued one is behind the
# waiters with smaller tickets, and must still hold its own (not reaped while it stalled).
EVERYONE: Final = 2**62
# The one-statement attempts, by whether the request holds the head's ticket: the plain form
# (for a database without RETURNING) and, prepared, the one returning the new lease's id.
FAST: Final[dict[bool, Insert]] = {
    False: _conditional_insert(_room_ahead_of(EVERYONE)),
    True: _conditional_insert(
        _room_ahead_of(bindparam("ticket_id")),
        exists().where(
            (s.waiters.c.id == bindparam("ticket_id"))
            & (s.waiters.c.token == bindparam("ticket_token"))
        ),
    ),
}
for _head, _fast in FAST.items():
    _named(f"claim.fast_returning.{str(_head).lower()}", _fast.returning(s.leases.c.id))


def _model_queue() -> Any:
    """SQL: a model's configured limit, its leases and its waiters, if it learned nothing.

    For a fresh request that waits for its primary only: when that model's leases and waiters
    already fill its limit, the fairness rule refuses the request whatever the global cap says
    (it stands behind every waiter), so the claim can queue it without reading the rest of
    the database. A model with a cooldown or an adaptive limit has no row here, as in
    ``_room_ahead_of``: the general path applies what it learned.
    """
    provider: Any = bindparam("provider")
    model: Any = bindparam("model")
    m = s.models.c
    return select(
        m.concurrency_limit,
        _count(s.leases, (s.leases.c.provider == provider) & (s.leases.c.model == model)),
        _count(s.waiters, (s.waiters.c.provider == provider) & (s.waiters.c.model == model)),
    ).where(
        (m.provider == provider)
        & (m.model == model)
        & m.effective_limit.is_(None)
        & m.cooldown_until_ts.is_(None)
    )


_named("claim.model_queue", _model_queue())
_named("claim.delete_ticket", delete(s.waiters).where(s.waiters.c.id == bindparam("ticket_id")))
TICKET_COLUMNS: Final = (
    "token", "provider", "model", "holder", "pid", "pid_start", "host_id", "hostname", "owner",
    "enqueued_at", "expires_at", "enqueued_ts", "expires_ts", "wake_addr", "lease_token",
    "requested_ts",
)  # fmt: skip
_INSERT_LEASE: Final = insert(s.leases).values({c: bindparam(c) for c in LEASE_COLUMNS})
_named("claim.insert_lease", _INSERT_LEASE)
_named("claim.insert_lease_returning", _INSERT_LEASE.returning(s.leases.c.id))
_INSERT_TICKET: Final = insert(s.waiters).values({c: bindparam(c) for c in TICKET_COLUMNS})
_named("claim.enqueue", _INSERT_TICKET)
_named("claim.enqueue_returning", _INSERT_TICKET.returning(s.waiters.c.id))
