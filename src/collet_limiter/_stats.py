"""``stats``: what the history says about each model over a window of time.

The figures are those of the ``model_stats`` view (migration 0006), which gives them over all
the history kept; here they are computed for any window ``[since, now]``, in Python, by
``compute`` from rows that ``read`` takes in one read transaction. ``compute`` is pure, so the
tests check its rules on hand-made rows, and that it agrees with the view on a real history.

- Acquisitions are the lease lifetimes delivered to a caller (ended ``released`` or
  ``reclaimed``, or held now) that began in the window; a ``discarded`` lease, granted to an
  acquire that gave up at that moment, never reached anyone. Their waits give nearest-rank
  percentiles: of the ``n`` waits in ascending order, the one at rank ``ceil(p * n / 100)``.
- Queued, timed-out, cancelled, lost and rate-limited events and reclaimed leases are counted
  when they happened in the window.
- Cooling: each report cools its model from its time, or from the end the report before it
  had set if that is later, until the end it set (or now); those pieces, clipped to the window.
- The peak of concurrently held leases (every lifetime, discarded ones too) in the window: at
  equal times a lease that ends frees its place before one that begins takes it.

What is not guaranteed: pruning (``[limiter] history_days``) removes old rows, so a window
reaching further back than the history kept sees only what is left of it; and a lease granted
by an older collet-limiter (no ``requested_ts``) counts as having waited 0 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import func, or_, select

from . import _schema as s
from ._engine import Prepared
from ._errors import ConfigError
from ._events import LEASE_ENDINGS
from ._keys import ModelKey
from ._store import utc_datetime

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from sqlalchemy import Select
    from sqlalchemy.engine import Connection

# How a lease can be granted, in the order the figures show them (``_fallback.Via``).
VIAS: Final = ("primary", "queue", "chain", "capability", "cli")
# The percentiles of the waits that ``ModelStats`` gives.
PERCENTILES: Final = (50, 95, 99)
# The event kinds counted as they are; the others only show that a model was active.
_COUNTED: Final = {
    "queued": "queued",
    "timed_out": "timeouts",
    "cancelled": "cancellations",
    "lost": "lost",
}


@dataclass(frozen=True, slots=True)
class ModelStats:
    """One model's figures over a window (``key`` None: all the models together).

    Waits are in milliseconds, from the request to the grant, and None when nothing was
    acquired. ``by_via`` counts the acquisitions by how they were granted, for every via
    (primary, queue, chain, capability, cli). ``cooling_secs`` is the time the model spent
    cooling down after reported refusals (the total is the models' sum); ``peak_holders`` the
    most leases held at once (the total's is across all the models, not a sum).
    """

    key: ModelKey | None
    acquisitions: int = 0
    by_via: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(VIAS, 0))
    wait_p50_ms: float | None = None
    wait_p95_ms: float | None = None
    wait_p99_ms: float | None = None
    wait_max_ms: float | None = None
    queued: int = 0
    timeouts: int = 0
    cancellations: int = 0
    reclaims: int = 0
    lost: int = 0
    rate_limited: int = 0
    cooling_secs: float = 0.0
    peak_holders: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """The history's figures from ``since`` (None: all the history kept) to ``now``.

    ``models`` are the configured models, in config order (with zeros if nothing happened),
    then any other model with activity in the window, sorted; with a ``model`` filter, that
    model alone. ``exists`` is False when there was no database yet (all zeros).
    """

    since: datetime | None
    now: datetime
    models: tuple[ModelStats, ...]
    total: ModelStats
    exists: bool = True


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One lease's life: ended (an ``events`` row, ``ended`` its kind) or held now (None)."""

    key: ModelKey
    via: str
    acquired_ts: float
    waited_ms: float
    ended_ts: float | None = None
    ended: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """One ``rate_limited`` event: when, and the model's cooldown end after it."""

    key: ModelKey
    ts: float
    until_ts: float


def resolve_since(value: float | datetime | timedelta | None, now: float) -> float | None:
    """``since`` as seconds since the epoch: a number is one already, a naive datetime is UTC,
    a timedelta is that long before ``now``; None stays None (everything kept)."""
    if value is None:
        return None
    resolved = _since_seconds(value, now)
    try:
        utc_datetime(resolved)  # shown as a time: it must be one
    except (ValueError, OverflowError, OSError):
        raise ConfigError(
            f"since must be a time between the years 1 and 9999 (got {value!r})",
            argument="since",
        ) from None
    return resolved


def _since_seconds(value: float | datetime | timedelta, now: float) -> float:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ConfigError(
                f"since must be a duration >= 0 before now (got {value!r})", argument="since"
            )
        return now - value.total_seconds()
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return aware.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigError(
        f"since must be seconds since the epoch, a datetime, a timedelta or None (got {value!r})",
        argument="since",
    )


def nearest_rank(ordered: Sequence[float], percent: int) -> float | None:
    """The ``percent``-th percentile of ascending ``ordered`` by nearest rank: the value at
    1-based rank ``ceil(percent * n / 100)``, in integer arithmetic; None when empty."""
    if not ordered:
        return None
    rank = -(-percent * len(ordered) // 100)
    return ordered[max(rank, 1) - 1]


def peak_holders(spans: Iterable[tuple[float, float | None]], since: float | None) -> int:
    """The most ``(start, end)`` spans (end None: still open) held at once from ``since`` on.

    A span that ended before ``since`` is left out, one that began before counts from
    ``since``. At equal times ends come first: a lease released as another is granted was
    never held together with it (and a span of no length never counts)."""
    points: list[tuple[float, int]] = []
    for start, end in spans:
        if since is not None and end is not None and end < since:
            continue
        points.append((start if since is None else max(start, since), 1))
        if end is not None:
            points.append((end, -1))
    points.sort()
    held = peak = 0
    for _, step in points:
        held += step
        peak = max(peak, held)
    return peak


def cooling_secs(reports: Iterable[Report], since: float | None, now: float) -> float:
    """Seconds one model spent cooling down in ``[since, now]``, from all its reports (those
    before ``since`` too), in the order they were written."""
    total = 0.0
    previous: float | None = None
    for report in reports:
        start = report.ts if previous is None else max(report.ts, previous)
        if since is not None:
            start = max(start, since)
        end = min(report.until_ts, now)
        if end > start:
            total += end - start
        previous = report.until_ts
    return total


def _figures(
    key: ModelKey | None,
    lifetimes: Sequence[Lifetime],
    reports: Mapping[ModelKey, list[Report]],
    tallies: Mapping[str, int],
    *,
    since: float | None,
    now: float,
) -> ModelStats:
    """The figures of the ``lifetimes`` and ``reports`` of one model (or of all, ``key``
    None), with the window's event counts ``tallies``."""
    acquired = [
        life
        for life in lifetimes
        if life.ended != "discarded" and (since is None or life.acquired_ts >= since)
    ]
    by_via = dict.fromkeys(VIAS, 0)
    for life in acquired:
        if life.via in by_via:
            by_via[life.via] += 1
    waits = sorted(life.waited_ms for life in acquired)
    p50, p95, p99 = (nearest_rank(waits, p) for p in PERCENTILES)
    in_window = [r for rows in reports.values() for r in rows if since is None or r.ts >= since]
    return ModelStats(
        key=key,
        acquisitions=len(acquired),
        by_via=by_via,
        wait_p50_ms=p50,
        wait_p95_ms=p95,
        wait_p99_ms=p99,
        wait_max_ms=waits[-1] if waits else None,
        queued=tallies.get("queued", 0),
        timeouts=tallies.get("timeouts", 0),
        cancellations=tallies.get("cancellations", 0),
        reclaims=sum(
            1
            for life in lifetimes
            if life.ended == "reclaimed"
            and (since is None or (life.ended_ts is not None and life.ended_ts >= since))
        ),
        lost=tallies.get("lost", 0),
        rate_limited=len(in_window),
        cooling_secs=sum(cooling_secs(rows, since, now) for rows in reports.values()),
        peak_holders=peak_holders(((life.acquired_ts, life.ended_ts) for life in lifetimes), since),
    )


def compute(
    *,
    since: float | None,
    now: float,
    lifetimes: Iterable[Lifetime],
    reports: Iterable[Report],
    tallies: Iterable[tuple[ModelKey, str, int]],
    listed: Iterable[ModelKey],
    model: ModelKey | None = None,
    exists: bool = True,
) -> Stats:
    """The figures over ``[since, now]`` (seconds since the epoch; ``since`` None: everything).

    ``lifetimes`` are every lease lifetime kept (ended or held now), ``reports`` every
    ``rate_limited`` event kept, in id order, and ``tallies`` ``(key, kind, count)`` of the
    events in the window (kinds other than queued, timed_out, cancelled and lost only make a
    model active). ``listed`` are the configured models, shown first and even without
    activity; ``model`` keeps that model alone, its figures then being the total too.
    """
    by_key: dict[ModelKey, list[Lifetime]] = {}
    for life in lifetimes:
        if since is None or life.ended_ts is None or life.ended_ts >= since:
            by_key.setdefault(life.key, []).append(life)
    reported: dict[ModelKey, list[Report]] = {}
    for report in reports:
        reported.setdefault(report.key, []).append(report)
    counted: dict[ModelKey, dict[str, int]] = {}
    for key, kind, count in tallies:
        counts = counted.setdefault(key, {})
        name = _COUNTED.get(kind)
        if name is not None:
            counts[name] = counts.get(name, 0) + count
    active = {*by_key, *counted} | {
        key
        for key, rows in reported.items()
        if any(since is None or r.ts >= since for r in rows) or cooling_secs(rows, since, now) > 0
    }
    shown = list(dict.fromkeys(listed))
    shown += sorted(active.difference(shown))
    if model is not None:
        shown = [model]
    models = tuple(
        _figures(
            key,
            by_key.get(key, []),
            {key: reported.get(key, [])},
            counted.get(key, {}),
            since=since,
            now=now,
        )
        for key in shown
    )
    every = [life for key in shown for life in by_key.get(key, [])]
    tally: dict[str, int] = {}
    for key in shown:
        for name, count in counted.get(key, {}).items():
            tally[name] = tally.get(name, 0) + count
    total = _figures(
        None, every, {k: reported.get(k, []) for k in shown}, tally, since=since, now=now
    )
    return Stats(
        since=None if since is None else utc_datetime(since),
        now=utc_datetime(now),
        models=models,
        total=total,
        exists=exists,
    )


# --- reading -----------------------------------------------------------------------------------


class _Keys(dict[tuple[str, str], ModelKey]):
    """One ``ModelKey`` per (provider, model) read: a row per lease need not build its own."""

    def __missing__(self, names: tuple[str, str]) -> ModelKey:
        key = self[names] = ModelKey(*names)
        return key


def _rows(
    conn: Connection, statement: Select[Any], table: Any, model: ModelKey | None = None
) -> list[Any]:
    """The rows of ``statement`` (of ``model`` only, unless None) as the driver's tuples:
    a window can hold a row per lease, and SQLAlchemy's result rows would triple the cost."""
    if model is not None:
        statement = statement.where(
            (table.c.provider == model.provider) & (table.c.model == model.model)
        )
    cursor = Prepared("stats.rows", statement).execute(conn)
    try:
        return list(cursor.fetchall())
    finally:
        cursor.close()


def read(
    conn: Connection,
    *,
    since: float | None,
    now: float,
    model: ModelKey | None = None,
) -> Stats:
    """The figures over ``[since, now]`` from the database (call it in a read transaction)."""
    e, leases = s.events, s.leases
    after = [] if since is None else [e.c.ts >= since]
    ended = select(
        e.c.provider,
        e.c.model,
        e.c.via,
        e.c.acquired_ts,
        func.coalesce(e.c.waited_ms, 0.0),
        e.c.ts,
        e.c.kind,
    ).where(
        # not IN: an expanding parameter, which the driver-level execution does not render
        or_(*(e.c.kind == kind for kind in LEASE_ENDINGS)),
        e.c.lease_id.is_not(None),
        *after,
    )
    held = select(
        leases.c.provider,
        leases.c.model,
        leases.c.via,
        leases.c.acquired_ts,
        # as lease_history computes it, so that both agree to the last bit
        (leases.c.acquired_ts - func.coalesce(leases.c.requested_ts, leases.c.acquired_ts))
        * 1000.0,
    )
    # A report without an end (none is written so) cools for nothing.
    reported = (
        select(e.c.provider, e.c.model, e.c.ts, func.coalesce(e.c.until_ts, e.c.ts))
        .where(e.c.kind == "rate_limited")
        .order_by(e.c.id)
    )
    tallied = (
        select(e.c.provider, e.c.model, e.c.kind, func.count())
        .where(e.c.provider.is_not(None), *after)
        .group_by(e.c.provider, e.c.model, e.c.kind)
    )
    configured = (
        select(s.models.c.provider, s.models.c.model)
        .where(s.models.c.position.is_not(None))
        .order_by(s.models.c.position)
    )
    key = _Keys()
    lifetimes = [
        Lifetime(key[p, m], via, float(acq), float(wait), float(ts), kind)
        for p, m, via, acq, wait, ts, kind in _rows(conn, ended, e, model)
    ]
    lifetimes += [
        Lifetime(key[p, m], via, float(acq), float(wait))
        for p, m, via, acq, wait in _rows(conn, held, leases, model)
    ]
    reports = [
        Report(key[p, m], float(ts), float(until))
        for p, m, ts, until in _rows(conn, reported, e, model)
    ]
    tallies = [(key[p, m], kind, int(n)) for p, m, kind, n in _rows(conn, tallied, e, model)]
    listed = [key[p, m] for p, m in _rows(conn, configured, s.models)]
    return compute(
        since=since,
        now=now,
        lifetimes=lifetimes,
        reports=reports,
        tallies=tallies,
        listed=listed,
        model=model,
    )
