"""Claiming a permit: the decision transaction, written once against a SQLAlchemy ``Connection``.

The common cases cost one statement: a fresh request when nobody waits, and a waiter at the
head of the whole queue, are each a single conditional ``INSERT ... SELECT`` that inserts the
lease only if the model and the global cap have room. A fresh ``acquire_wait`` refused by its
model's own leases and waiters queues after one more read and the reap (four statements).
Anything else (waiters ahead on a model with room, a fallback to consider, a new key, a model
that learned from a refusal) takes the general path: read the rows, ask the fallback engine
for the order, apply the fairness rule, reap the dead only if something stood in the
primary's way, and decide again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from . import _events
from ._cooldown import cooling, effective_limit
from ._engine import Prepared, batch
from ._fairness import Snapshot, ahead_of_each
from ._fallback import Candidate, Via, plan
from ._keys import ModelKey
from ._store import (
    LeaseRecord,
    Outlook,
    Query,
    Removed,
    State,
    ensure_models,
    grant_waiting,
    held_counts,
    insert_lease,
    lease_by_token,
    lease_from,
    lease_query,
    make_snapshot,
    max_agents,
    outlook,
    read_models,
    reap,
    snapshot,
    state,
    state_from,
    state_queries,
    store_health,
    ticket_by_token,
    ticket_exists,
    utc_text,
    waiters_detail,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from sqlalchemy.engine import Connection

    from ._fallback import ModelRow
    from ._identity import Holder


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
    wake_addr: str | None = None  # where the waiter listens for its wake-up
    # When the request began (its first claim's time), once known: how long it waited.
    requested_ts: float | None = None
    history: bool = False  # write its events (``[limiter] history``)


@dataclass(slots=True)
class ClaimResult:
    """What a claim did: the lease granted, or the ticket queued (or kept)."""

    lease: LeaseRecord | None
    ticket: int | None
    verdicts: list[Verdict] = field(default_factory=list)
    global_reason: str = ""
    reaped: list[Removed] = field(default_factory=list)
    requeued: bool = False  # the request's ticket had been reaped and was queued again
    wake: list[tuple[str, int]] = field(default_factory=list)  # to notify after commit
    at: float = 0.0  # the claim's time


# --- the one-statement paths -------------------------------------------------------------------

# The one-statement attempts, by whether the request holds the head's ticket, returning the new
# lease's id (``_statements.FAST`` holds them, and the forms without RETURNING).
_FAST_RETURNING: Final = {
    head: Prepared(f"claim.fast_returning.{str(head).lower()}") for head in (False, True)
}
_MODEL_QUEUE: Final = Prepared("claim.model_queue")
_DELETE_TICKET: Final = Prepared("claim.delete_ticket")
_ENQUEUE: Final = Prepared("claim.enqueue")
_ENQUEUE_RETURNING: Final = Prepared("claim.enqueue_returning")


def _lease_values(request: ClaimRequest, key: ModelKey, via: Via, now: float) -> dict[str, Any]:
    holder = request.holder
    expires = now + request.ttl
    return {
        "token": request.token,
        "provider": key.provider,
        "model": key.model,
        "primary_provider": request.primary.provider,
        "primary_model": request.primary.model,
        "via": via,
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
        "requested_ts": now if request.requested_ts is None else request.requested_ts,
    }


def _record(values: dict[str, Any], lease_id: int) -> LeaseRecord:
    return LeaseRecord(
        id=lease_id,
        token=values["token"],
        key=ModelKey(values["provider"], values["model"]),
        primary=ModelKey(values["primary_provider"], values["primary_model"]),
        via=values["via"],
        holder=values["holder"],
        pid=values["pid"],
        pid_start=values["pid_start"],
        host_id=values["host_id"],
        hostname=values["hostname"],
        owner=values["owner"],
        acquired_ts=values["acquired_ts"],
        expires_ts=values["expires_ts"],
    )


def _fast(request: ClaimRequest, now: float) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The one-statement attempt's lease values and parameters, and whether it is the head's."""
    ticket = request.ticket
    via: Via = "primary" if ticket is None else "queue"
    values = _lease_values(request, request.primary, via, now)
    params: dict[str, Any] = {f"v_{name}": value for name, value in values.items()}
    if ticket is not None:
        params |= {"ticket_id": ticket, "ticket_token": request.ticket_token}
    return values, params, ticket is not None


def _fast_granted(
    conn: Connection, request: ClaimRequest, values: dict[str, Any], lease_id: int
) -> LeaseRecord:
    """The lease the one-statement attempt inserted; the head's ticket goes."""
    if request.ticket is not None:
        _DELETE_TICKET.execute(conn, {"ticket_id": request.ticket}).close()
    return _record(values, lease_id)


def _try_fast(conn: Connection, request: ClaimRequest, now: float) -> LeaseRecord | None:
    values, params, head = _fast(request, now)
    if conn.dialect.insert_returning:  # SQLite >= 3.35, PostgreSQL: the id in the same statement
        inserted = _FAST_RETURNING[head].scalar(conn, params)
        if inserted is None:
            return None
        lease_id = int(inserted)
    else:
        from . import _statements as q

        if not conn.execute(q.FAST[head], params).rowcount:
            return None
        lease_id = conn.execute(q.LEASE_ID_BY_TOKEN, {"token": request.token}).scalar_one()
    return _fast_granted(conn, request, values, lease_id)


def _first_look(
    conn: Connection, request: ClaimRequest, now: float
) -> tuple[LeaseRecord | None, State | None]:
    """The lease a release granted the request already, or the one-statement attempt's; for a
    queued request on a server also the general path's state, read in the same round trip.

    Not for a fresh request: it is usually granted by the attempt alone, and sending the reads
    with it made an uncontended cycle about a third slower (one process, 1,000 cycles: 646-825
    against 960-1,283 cycles/s)."""
    if conn.dialect.name == "postgresql" and request.ticket is not None:
        return _first_trip(conn, request, now)
    if request.ticket is not None:
        granted_already = lease_by_token(conn, request.token)
        if granted_already is not None:  # a release granted it from our ticket
            return granted_already, None
    return _try_fast(conn, request, now), None


def _first_trip(
    conn: Connection, request: ClaimRequest, now: float
) -> tuple[LeaseRecord | None, State]:
    """On a server: the lease a release may have granted the request, the one-statement
    attempt and the general path's reads, in one round trip (under the group's lock every
    round trip counts). At most one of the first two finds or writes a lease: a granted
    ticket is gone, and the head's attempt needs its ticket. Returns the lease, if any, and
    the state (read before the attempt's insert, so valid when it inserted nothing)."""
    values, params, head = _fast(request, now)
    queries: list[Query] = [lease_query(request.token)] if head else []
    queries += [
        (_FAST_RETURNING[head], params),
        *state_queries(request.ticket, request.ticket_token),
    ]
    results = batch(conn, queries)
    if head:
        granted_already = lease_from(results.pop(0))
        if granted_already is not None:  # a release granted it from our ticket
            return granted_already, state_from(results[1:], request.ticket, now)
    inserted = results.pop(0)
    state_now = state_from(results, request.ticket, now)
    if inserted:
        return _fast_granted(conn, request, values, int(inserted[0][0])), state_now
    return None, state_now


# --- the general path --------------------------------------------------------------------------


def _with_why(candidate: Candidate, room: str) -> str:
    """A fallback's room verdict, prefixed with why it is a candidate (the primary needs none)."""
    return room if candidate.via in ("primary", "queue") else f"{candidate.reason}; {room}"


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
        verdict = Verdict(candidate, granted=ok, reason=_with_why(candidate, reason))
        verdicts.append(verdict)
        if ok:
            return verdict, verdicts, global_reason
        if not global_ok:
            break  # no candidate can get past a full global cap
    return None, verdicts, global_reason


def _decide_now(
    conn: Connection, request: ClaimRequest, rows: dict[ModelKey, ModelRow], now: float
) -> tuple[int | None, bool, tuple[Verdict | None, list[Verdict], str]]:
    """Read the snapshot for the request and decide; returns (ticket, requeued, decision)."""
    ticket, requeued = request.ticket, False
    if ticket is not None and not ticket_exists(conn, ticket, request.ticket_token):
        ticket, requeued = None, True  # our ticket was reaped while we were stalled
    return ticket, requeued, _decide(request, rows, snapshot(conn, rows, ticket, now), ticket)


def _decide_first(
    conn: Connection,
    request: ClaimRequest,
    demand: Callable[[ModelKey], ModelRow],
    now: float,
    prefetched: State | None = None,
) -> tuple[int | None, bool, dict[ModelKey, ModelRow], tuple[Verdict | None, list[Verdict], str]]:
    """``_decide_now`` with the ``models`` rows read in the same round trip (and completed with
    rows for keys the table lacks), or with the state the caller read already; returns
    (ticket, requeued, rows, decision)."""
    rows, snap, still_queued = prefetched or state(conn, request.ticket, request.ticket_token, now)
    known = len(rows)
    ensure_models(conn, rows, (request.primary, *request.chain), demand)
    if not still_queued:  # our ticket was reaped while we were stalled: we are behind everyone
        snap = snapshot(conn, rows, None, now)
        return None, True, rows, _decide(request, rows, snap, None)
    if len(rows) != known:
        snap = make_snapshot(rows, now, held=snap.held, ahead=snap.ahead, cap=snap.cap)
    return request.ticket, False, rows, _decide(request, rows, snap, request.ticket)


def claim(
    conn: Connection,
    request: ClaimRequest,
    now: float,
    demand: Callable[[ModelKey], ModelRow],
    *,
    retry: bool = False,
) -> ClaimResult:
    """Grant a lease on the first candidate with room, or queue/keep a ticket. Write transaction.

    Reaping happens only when the primary could not be granted, and is followed by a second
    decision: an uncontended acquire never pays for it. ``retry``: an earlier attempt of this
    very claim may have committed without its caller hearing (the connection dropped), so
    its lease or ticket, found by token, is taken up instead of writing a second one.
    """
    if retry:
        recovered = _recover(conn, request)
        if isinstance(recovered, ClaimResult):
            return recovered
        request = recovered
    fast, prefetched = _first_look(conn, request, now)
    if fast is not None:
        return ClaimResult(fast, None, at=now)
    queued, reaped = _queue_at_once(conn, request, now)
    if queued is not None:
        return queued
    ticket, requeued, rows, (granted, verdicts, global_reason) = _decide_first(
        conn, request, demand, now, prefetched
    )
    forget_recovered(conn, rows, now, history=request.history)
    if not reaped and (granted is None or granted is not verdicts[0]):
        # Something stood in the way of the primary: if it is dead or expired, reclaim it and
        # decide again, so that a crashed holder never pushes a request onto a fallback.
        reaped = reap(conn, now, my_host=request.holder.host_id, history=request.history)
        if reaped:
            again, requeued_now, (granted, verdicts, global_reason) = _decide_now(
                conn, replace(request, ticket=ticket), rows, now
            )
            ticket, requeued = again, requeued or requeued_now

    result = ClaimResult(None, ticket, verdicts, global_reason, reaped, requeued, at=now)
    if granted is not None:
        values = _lease_values(request, granted.candidate.key, granted.candidate.via, now)
        result.lease = lease = _record(values, insert_lease(conn, values))
        if ticket is not None:
            _DELETE_TICKET.execute(conn, {"ticket_id": ticket}).close()
            result.ticket = None
        if request.history and lease.via not in ("primary", "queue"):
            _fell_back(conn, request, lease, verdicts[0].reason, now)
    elif ticket is None and (request.enqueue or requeued):
        result.ticket = enqueue(conn, request, now)
    if reaped:  # what we reclaimed and did not take ourselves may let others in
        result.wake = grant_waiting(conn, now, skip=result.ticket)
    return result


def _queue_at_once(
    conn: Connection, request: ClaimRequest, now: float
) -> tuple[ClaimResult | None, list[Removed]]:
    """Queue a fresh request for its primary only (``acquire_wait``) whose model's own leases
    and waiters refuse it, reclaiming first what is dead or expired, as the general path
    would: four statements in all, against about ten. Returns the result, or None and what
    was reclaimed (the general path then decides, on what is left)."""
    if request.ticket is not None or not request.enqueue or request.fallback:
        return None, []
    refused = _full_for_newcomers(conn, request)
    if refused is None:
        return None, []
    reaped = reap(conn, now, my_host=request.holder.host_id, history=request.history)
    if reaped:
        return None, reaped
    return ClaimResult(None, enqueue(conn, request, now), [refused], at=now), []


def _full_for_newcomers(conn: Connection, request: ClaimRequest) -> Verdict | None:
    """The refusal of a fresh request whose primary's leases and waiters fill its limit (one
    read); None when that is not certain, and the general path must decide."""
    key = request.primary
    row = _MODEL_QUEUE.rows(conn, {"provider": key.provider, "model": key.model})
    if not row:
        return None
    limit, held, waiting = row[0]
    if held + waiting < limit:
        return None
    snap = Snapshot(limits={key: limit}, held={key: held}, ahead={key: waiting}, cap=0)
    ok, reason = snap.model_verdict(key)
    assert not ok, reason
    candidate = Candidate(key, "primary", eligible=True, reason="the requested model")
    return Verdict(candidate, granted=False, reason=reason)


def _fell_back(
    conn: Connection, request: ClaimRequest, lease: LeaseRecord, why: str, now: float
) -> None:
    waited = (now - lease_requested(request, now)) * 1000.0
    _events.record(conn, "fell_back", now, waited_ms=waited, reason=why, **_events.of_lease(lease))


def lease_requested(request: ClaimRequest, now: float) -> float:
    """When ``request`` began (``now`` for its first claim)."""
    return now if request.requested_ts is None else request.requested_ts


def waited_ms(request: ClaimRequest, now: float) -> float | None:
    """How long ``request`` has waited at ``now``, in ms (None before its first claim)."""
    return None if request.requested_ts is None else (now - request.requested_ts) * 1000.0


def forget_recovered(
    conn: Connection, rows: dict[ModelKey, ModelRow], now: float, *, history: bool
) -> None:
    """Clear what no longer applies, so that claims of the model take the one-statement path
    again: an adaptive limit that climbed back to the configured one, a cooldown that ended.
    With ``history``, record them (``limit_changed``, and ``cooldown_ended`` stamped with the
    moment it ended). Write transaction."""
    for key, row in rows.items():
        health = row.health
        until = health.cooldown_until
        recovered = (
            health.effective is not None and effective_limit(row.limit, health, now) >= row.limit
        )
        ended = until is not None and not cooling(health, now)
        if not (recovered or ended):
            continue
        where = {"provider": key.provider, "model": key.model}
        if recovered:
            health = replace(health, effective=None, recover_secs=None)
            if history:
                _events.record(
                    conn, "limit_changed", now, limit_before=row.health.effective,
                    limit_after=row.limit, reason="adaptive limit recovered", **where,
                )  # fmt: skip
        if ended and until is not None:
            kind = health.cooldown_kind
            health = replace(health, cooldown_until=None, cooldown_kind=None, cooldown_reason=None)
            if history:
                _events.record(conn, "cooldown_ended", until, cooldown_kind=kind, **where)
        store_health(conn, key, health)
        rows[key] = replace(row, health=health)


def _recover(conn: Connection, request: ClaimRequest) -> ClaimResult | ClaimRequest:
    """What a retried claim's lost attempt committed: its lease, or the request with its ticket."""
    granted_before = lease_by_token(conn, request.token)
    if granted_before is not None:
        return ClaimResult(granted_before, None)
    if request.ticket is None:
        queued = ticket_by_token(conn, request.ticket_token)
        if queued is not None:
            return replace(request, ticket=queued)
    return request


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
        "wake_addr": request.wake_addr,
        "lease_token": request.token,
        "requested_ts": lease_requested(request, now),
    }
    if conn.dialect.insert_returning:  # the id in the same statement
        ticket = int(_ENQUEUE_RETURNING.scalar(conn, values))
    else:
        cursor = _ENQUEUE.execute(conn, values)
        ticket, _ = int(cursor.lastrowid), cursor.close()
    if request.history:
        _events.record(
            conn, "queued", now, provider=request.primary.provider,
            model=request.primary.model, ticket_id=ticket, holder=request.label, pid=holder.pid,
            hostname=holder.hostname, waited_ms=(now - lease_requested(request, now)) * 1000.0,
        )  # fmt: skip
    return ticket


# --- looking without a lock --------------------------------------------------------------------


def could_grant(
    conn: Connection, requests: Sequence[ClaimRequest], my_host: str, now: float
) -> tuple[list[bool], Outlook]:
    """For queued requests, whether each would be granted now, read without any lock.

    A watcher looks with this when something changed, and wakes only the waiters it answers True
    for (or whose ticket vanished); they then ``claim`` under the write lock. An answer can be
    stale by the time it is used, which only delays a waiter until the next change. One read of
    the queue answers for all of a limiter's waiters, and also gives the ``Outlook``: the
    holders worth watching for death and the next expiry.
    """
    rows = read_models(conn)
    held, cap = held_counts(conn), max_agents(conn)
    waiting = waiters_detail(conn)
    queue = [(row.id, ModelKey(row.provider, row.model)) for row in waiting]
    ahead = ahead_of_each(queue, [r.ticket for r in requests if r.ticket is not None])
    answers = []
    for request in requests:
        counts = ahead.get(request.ticket) if request.ticket is not None else None
        if request.primary not in rows or counts is None:
            answers.append(True)  # a config rewrite or a reaped ticket: claim sorts it out
        else:
            snap = make_snapshot(rows, now, held=held, ahead=counts, cap=cap)
            answers.append(snap.admits(request.primary))
    return answers, outlook(conn, waiting, my_host, rows, now)


def explain(
    conn: Connection,
    primary: ModelKey,
    chain: Sequence[ModelKey],
    demand: Callable[[ModelKey], ModelRow],
    now: float,
) -> tuple[list[Verdict], str]:
    """Every candidate with its verdict for a fresh request at ``now``, writing nothing."""
    rows = read_models(conn)
    for key in (primary, *chain):
        rows.setdefault(key, demand(key))
    return judge(primary, chain, rows, snapshot(conn, rows, None, now))


def judge(
    primary: ModelKey, chain: Sequence[ModelKey], rows: Mapping[ModelKey, ModelRow], snap: Snapshot
) -> tuple[list[Verdict], str]:
    """``explain``'s verdicts from rows and a snapshot already read: pure, so that an Inspector
    can answer for a database not created yet (the config's rows, nothing held or queued)."""
    global_ok, global_reason = snap.global_verdict()
    verdicts: list[Verdict] = []
    for candidate in plan(primary, chain, rows):
        if not candidate.eligible:
            verdicts.append(Verdict(candidate, granted=False, reason=candidate.reason))
            continue
        ok, reason = snap.model_verdict(candidate.key)
        if ok and not global_ok:
            ok, reason = False, f"{reason}, but {global_reason}"
        verdicts.append(Verdict(candidate, granted=ok, reason=_with_why(candidate, reason)))
    return verdicts, global_reason
