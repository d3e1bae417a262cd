"""The history: the ``events`` rows each transaction writes about what it did, and pruning.

Every write here runs inside the transaction that causes the event, so the history commits or
rolls back with it. An ended lease is one row (kind ``released``, ``reclaimed`` or ``discarded``)
copied from its ``leases`` row by the statement before the one that deletes it: how it was
granted (via, the primary asked for), how long it waited (``acquired_ts - requested_ts``) and how
long it was held. The acquisition itself writes nothing more than its lease row: a lease held now
is in ``leases``, one that ended is in ``events`` (the ``lease_history`` view joins the two), and
an uncontended acquire and release costs one statement, and one page, more than without a
history (its measured cost is in the README's performance section).

The other kinds are one row each: ``queued`` (a ticket), ``timed_out`` and ``cancelled`` (an
acquire that gave up, with how long it waited), ``fell_back`` (granted on another model than the
primary: from what, via what, why), ``lost`` (a holder found its lease reclaimed),
``rate_limited`` (a reported refusal, with the cooldown's end after it), ``cooldown_started``,
``cooldown_ended`` (stamped with the moment it ended, written by the first claim or report on
the model after that: nothing writes at the moment itself) and ``limit_changed`` (the configured
limit or the global cap by a config, the adaptive limit by a report or its full recovery).
Reclaimed tickets are ``reclaimed`` rows with a ``ticket_id`` and no ``lease_id``.

Pruning deletes rows older than ``[limiter] history_days``, oldest id first and at most
``PRUNE_BATCH`` at a time, after adding them to ``event_counts``, so that a count
(``collet-limiter metrics``) never goes down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from . import _schema as s
from ._engine import Prepared

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ._store import LeaseRecord, Query

# Every kind of event, as stored in ``events.kind``.
KINDS: Final = (
    "released",
    "reclaimed",
    "discarded",
    "lost",
    "queued",
    "timed_out",
    "cancelled",
    "fell_back",
    "rate_limited",
    "cooldown_started",
    "cooldown_ended",
    "limit_changed",
)
LEASE_ENDINGS: Final = ("released", "reclaimed", "discarded")

# A release whose lease id is a multiple of this also prunes (an amortized, deterministic share of
# the work: no timer, and a process that only ever runs briefly still takes its turn).
PRUNE_EVERY: Final = 1000
# At most this many rows per prune, so that a first prune after a long time holds the writer
# lock for milliseconds, not seconds; the next prunes take the rest.
PRUNE_BATCH: Final = 5000

# The statements (``_statements`` holds their SQL).
_LEASE_BY_ID: Final = Prepared("events.lease_by_id")
_TICKET_BY_ID: Final = Prepared("events.ticket_by_id")
_DISCARDED_LEASE: Final = Prepared("events.discarded_lease")
_GAVE_UP: Final = {table: Prepared(f"events.gave_up.{table}") for table in ("waiters", "leases")}
_CLOSED_LEASES: Final = Prepared("events.closed_leases")
_CLOSED_TICKETS: Final = Prepared("events.closed_tickets")
_INSERT: Final = Prepared("events.insert")


def _times(now: float) -> dict[str, Any]:
    from ._store import utc_text  # here: _store imports this module

    return {"e_ts": now, "e_at": utc_text(now)}


def lease_ended(now: float, *, kind: str, row: tuple[int, str], reason: str | None = None) -> Query:
    """The statement that records the end of lease ``row`` (id, token); run it before the one
    that deletes it."""
    params = {**_times(now), "e_kind": kind, "e_reason": reason}
    return _LEASE_BY_ID, params | {"row_id": row[0], "row_token": row[1]}


def ticket_ended(now: float, *, kind: str, row: tuple[int, str], reason: str | None) -> Query:
    """The statement that records the end of ticket ``row`` (id, token) other than by a grant
    (the lease records that); run it before the one that deletes it."""
    params = {**_times(now), "e_kind": kind, "e_reason": reason}
    return _TICKET_BY_ID, params | {"row_id": row[0], "row_token": row[1]}


def gave_up(
    conn: Connection,
    now: float,
    *,
    outcome: str,
    reason: str,
    tokens: tuple[str, str],
    request: dict[str, Any],
) -> None:
    """Record an acquire that gave up (``outcome`` timed_out or cancelled), before its rows go.

    ``tokens`` are its (ticket, lease) tokens. The event is copied from its ticket (how long it
    waited), else from a lease granted to it as it gave up, else written from ``request``
    (``events`` values: it never queued). Such a lease is also recorded, as ``discarded``."""
    times = {**_times(now), "e_kind": outcome, "e_reason": reason}
    ticket_token, lease_token = tokens
    written = 0
    for table, token in (("waiters", ticket_token), ("leases", lease_token)):
        cursor = _GAVE_UP[table].execute(conn, times | {"row_token": token})
        written, _ = cursor.rowcount, cursor.close()
        if written:
            break
    if not written:
        record(conn, outcome, now, reason=reason, **request)
    params = {**_times(now), "e_reason": reason, "row_token": lease_token}
    _DISCARDED_LEASE.execute(conn, params).close()


def closed(conn: Connection, now: float, owner: str) -> None:
    """Record the leases (released) and tickets (cancelled) a closing limiter gives back."""
    params = {**_times(now), "e_reason": "limiter closed", "row_owner": owner}
    for statement in (_CLOSED_LEASES, _CLOSED_TICKETS):
        statement.execute(conn, params).close()


def of_lease(lease: LeaseRecord) -> dict[str, Any]:
    """The ``events`` columns that say which lease, for ``record``."""
    return {
        "provider": lease.key.provider,
        "model": lease.key.model,
        "primary_provider": lease.primary.provider,
        "primary_model": lease.primary.model,
        "via": lease.via,
        "lease_id": lease.id,
        "holder": lease.holder,
        "pid": lease.pid,
        "hostname": lease.hostname,
    }


def record(conn: Connection, kind: str, now: float, **fields: Any) -> None:
    """Write one event from values (``fields`` are ``events`` columns; the rest stay NULL)."""
    row = dict.fromkeys(s.EVENT_COLUMNS)
    row.update(fields, kind=kind, ts=now, at=_times(now)["e_at"])
    _INSERT.execute(conn, row).close()


# --- pruning -----------------------------------------------------------------------------------

# Pruning walks the table in id order, the order rows were written in, which the primary key
# gives for free: an index on ts (or AUTOINCREMENT) would cost every release one more page to
# write (CPU per uncontended cycle, history on against off: 19 % more with both, 13 % with
# neither). Times follow ids but not strictly (a cooldown_ended is stamped with the past),
# so a prune stops at the first row young enough to keep: an old row after it waits its turn.
_BATCH_END: Final = Prepared("events.batch_end")
_FIRST_KEPT: Final = Prepared("events.first_kept")
_ALL_COUNTS: Final = Prepared("events.all_counts")
_AGED: Final = Prepared("events.aged")
_DELETE_AGED: Final = Prepared("events.delete_aged")
_ADD_COUNT: Final = Prepared("events.add_count")
_NEW_COUNT: Final = Prepared("events.new_count")


def prune(conn: Connection, now: float, days: float) -> int:
    """Delete the events older than ``days`` written before the first one to keep, at most
    ``PRUNE_BATCH``, counting them in ``event_counts``; returns how many went. Write
    transaction."""
    cutoff = now - days * 86400.0
    bound = _BATCH_END.scalar(conn, {"skip": PRUNE_BATCH})
    bound = 2**62 if bound is None else int(bound)  # fewer rows than a batch: all of them
    kept = _FIRST_KEPT.scalar(conn, {"bound": bound, "cutoff": cutoff})
    stop = bound if kept is None else int(kept)
    removed = 0
    for kind, provider, model, via, count in _AGED.rows(conn, {"stop": stop}):
        params = {
            "k_kind": kind,
            "k_provider": provider,
            "k_model": model,
            "k_via": via,
            "k_count": count,
        }
        cursor = _ADD_COUNT.execute(conn, params)
        if not cursor.rowcount:
            _NEW_COUNT.execute(conn, params).close()
        cursor.close()
        removed += count
    if removed:
        _DELETE_AGED.execute(conn, {"stop": stop}).close()
    return removed


def counts(conn: Connection) -> list[tuple[str, str, str, str, int]]:
    """Every event ever written (kept or pruned) by kind, provider, model and via ('' for
    none): (kind, provider, model, via, count), for counters that never go down."""
    from ._statements import PRUNED_COUNTS

    kept = _ALL_COUNTS.rows(conn)
    pruned = conn.execute(PRUNED_COUNTS).all()
    total: dict[tuple[str, str, str, str], int] = {}
    for row in [*kept, *pruned]:
        key = (row[0], row[1], row[2], row[3])
        total[key] = total.get(key, 0) + int(row[4])
    return [(*key, count) for key, count in sorted(total.items())]
