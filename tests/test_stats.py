"""``Inspector.stats``: the history's figures per model over a window, on both databases.

A known history is built through the public API with a fake clock, and its figures are checked
exactly (on PostgreSQL, times come from the server's clock, so the real milliseconds between two
steps count too: a tolerance far above them and far below the seconds compared). The rules
themselves (nearest-rank percentiles, ties, windows) are checked on hand-made rows with the
pure ``compute``, and the ``model_stats`` view is checked to give the same figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import (
    AcquireTimeout,
    AsyncLimiter,
    ConfigError,
    Inspector,
    InvalidKeyError,
    Limiter,
    ModelKey,
    ModelStats,
    Stats,
)
from collet_limiter._engine import resolve_target
from collet_limiter._stats import (
    Lifetime,
    Report,
    compute,
    cooling_secs,
    nearest_rank,
    peak_holders,
    resolve_since,
)

from .conftest import SMALL, FakeClock, make_config
from .sql import rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

GLM5, GLM47 = ModelKey("zai", "glm-5"), ModelKey("zai", "glm-4.7")
FLASH, SONNET = ModelKey("zai", "glm-4.7-flash"), ModelKey("claude", "sonnet")
CONFIGURED = (GLM5, GLM47, FLASH, SONNET)  # SMALL's models, in config order
ON_DEMAND_A, ON_DEMAND_B = ModelKey("local", "a-model"), ModelKey("local", "b-model")
CONFIG = make_config(**SMALL)
TTL = 60.0
# On PostgreSQL every time is the server's clock moved as far as the fake one: the real time
# between two steps (milliseconds) adds to each wait and cooldown piece. Far above that, far
# below the whole seconds the tests tell apart.
SLACK = 0.5
# On PostgreSQL, the fake seconds between a lease's end and a start meant to follow it.
TIE_STEP = 0.1
# Real seconds a test waits at most for a thread to queue or be granted (never reached).
PATIENCE = 30.0
T0 = 1_800_000_000.0  # the ``clock`` fixture's start
VIAS = ("primary", "queue", "chain", "capability", "cli")
COUNTS = ("queued", "timeouts", "cancellations", "reclaims", "lost", "rate_limited")


# --- helpers -----------------------------------------------------------------------------------


def check(
    figures: ModelStats,
    backend: str,
    *,
    via: dict[str, int] | None = None,
    waits: tuple[float | None, float | None, float | None, float | None] = (None,) * 4,
    cooling: float = 0.0,
    peak: int = 0,
    **counts: int,
) -> None:
    """``figures`` are these: counts exact (zero unless given), times to the backend's
    tolerance; ``waits`` are p50, p95, p99 and max in ms."""
    unknown = set(counts) - set(COUNTS)
    assert not unknown, unknown
    by_via = dict.fromkeys(VIAS, 0) | (via or {})
    assert dict(figures.by_via) == by_via
    assert figures.acquisitions == sum(by_via.values())
    assert {name: getattr(figures, name) for name in COUNTS} == dict.fromkeys(COUNTS, 0) | counts
    assert figures.peak_holders == peak
    seconds = 1e-6 if backend == "sqlite" else SLACK
    got = (figures.wait_p50_ms, figures.wait_p95_ms, figures.wait_p99_ms, figures.wait_max_ms)
    assert [w is None for w in got] == [w is None for w in waits], got
    expected = [w for w in waits if w is not None]
    assert [w for w in got if w is not None] == pytest.approx(expected, abs=seconds * 1000)
    assert figures.cooling_secs == pytest.approx(cooling, abs=seconds)


def by_key(stats: Stats) -> dict[ModelKey | None, ModelStats]:
    return {m.key: m for m in stats.models}


@contextlib.contextmanager
def inspecting(database: Path | str, clock: FakeClock | None) -> Iterator[Inspector]:
    """An Inspector whose "now" follows the test's fake clock, as the limiters' times do.

    Inspector takes no clock argument (it reads the database's time); its core's clock is the
    one a Limiter's ``clock=`` sets, so this makes it read the time as the limiters write it
    (on PostgreSQL: the server's clock moved as far as the fake clock moved).
    """
    with Inspector(database, config=CONFIG) as inspector:
        if clock is not None:
            inspector._core.clock = clock
        yield inspector


class Waiter(threading.Thread):
    """``limiter.acquire_wait(key)`` in a thread: the lease it got, or the error."""

    def __init__(self, limiter: Limiter, key: ModelKey) -> None:
        super().__init__(daemon=True)
        self.limiter, self.key = limiter, key
        self.lease: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.lease = self.limiter.acquire_wait(self.key, timeout=PATIENCE)
        except BaseException as exc:  # reported by granted()
            self.error = exc

    def granted(self) -> Any:
        self.join(PATIENCE)
        assert not self.is_alive(), "the waiter was never granted"
        assert self.error is None, self.error
        return self.lease


def queue_behind(limiter: Limiter, key: ModelKey) -> Waiter:
    """A waiter for ``key``, started and seen in the queue."""
    queued = len(limiter.waiters())
    waiter = Waiter(limiter, key)
    waiter.start()
    deadline = time.monotonic() + PATIENCE
    while len(limiter.waiters()) == queued:
        assert waiter.is_alive() and time.monotonic() < deadline, waiter.error
        time.sleep(0.005)
    return waiter


def cancelled_wait(database: Path | str, clock: FakeClock, key: ModelKey) -> None:
    """An async acquire_wait on ``key`` (full) cancelled by ``asyncio.wait_for``'s timeout."""

    async def main() -> None:
        async with AsyncLimiter(database, config=CONFIG, clock=clock, lease_ttl=TTL) as limiter:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(limiter.acquire_wait(key), 0.05)

    asyncio.run(main())


def known_history(
    open_sync_limiter: Callable[..., Limiter], database: Path | str, clock: FakeClock
) -> datetime:
    """The history the tests know by heart, from t=0 to t=120 (seconds of the fake clock);
    returns t=0 as the database's time.

    GLM5:   lease l1 [0, 19] primary; at 5 an acquire_wait times out and at 15 one is
            cancelled (each queued first); at 15 a waiter queues and gets m [19, 40] when l1
            goes (waited 4 s). Reports: at 19 (retry after 30: cooling until 49), at 29
            (until 59: 10 s more), and at 110 on n [110, 120] (until 115). Cooling 45 s.
    GLM47:  l2 [0, 5] via chain (GLM5 full), l3 [5, 40] via capability.
    SONNET: l4 [5, 40] via cli (GLM5 and GLM47 full).
    FLASH:  f [40, 105] primary, expired at 100, reclaimed by a reap at 105; its holder's
            renewal then finds it lost.
    local/a-model and local/b-model [0, 5]: added on demand.
    All together at most 4 held, in [0, 5): at 5, 19 and 40 leases end as others begin.

    On SQLite those ends and starts have equal times, which checks the ties. On PostgreSQL
    two transactions at one fake time are stamped a fraction of a millisecond apart in no set
    order (the server's clock, moved as far as the fake one, is read at different moments), so
    there a step of ``TIE_STEP`` puts the starts after the ends, as they happened.
    """
    start = clock.now
    step = TIE_STEP if isinstance(database, str) else 0.0

    def at(t: float) -> None:
        clock.advance(start + t - clock.now)

    a, b, c = (open_sync_limiter(CONFIG, clock=clock, lease_ttl=TTL) for _ in range(3))
    l1 = a.acquire(GLM5)
    l2 = a.acquire(GLM5, [GLM47])
    assert (l2.key, l2.via) == (GLM47, "chain")
    on_demand = [a.acquire(ON_DEMAND_A), a.acquire(ON_DEMAND_B)]
    at(5)
    for lease in (l2, *on_demand):
        lease.release()
    clock.advance(step)
    l3 = a.acquire_with_fallback(GLM5).lease  # type: ignore[union-attr]
    l4 = a.acquire_with_fallback(GLM5).lease  # type: ignore[union-attr]
    assert [(l3.key, l3.via), (l4.key, l4.via)] == [(GLM47, "capability"), (SONNET, "cli")]
    with pytest.raises(AcquireTimeout):
        b.acquire_wait(GLM5, timeout=0.05)
    at(15)
    cancelled_wait(database, clock, GLM5)
    waiter = queue_behind(b, GLM5)
    at(19)
    l1.release()
    m = waiter.granted()
    assert (m.key, m.via) == (GLM5, "queue")
    m.report_rate_limited(30)
    at(29)
    m.report_rate_limited(30)
    at(40)
    for lease in (l3, l4, m):
        lease.release()
    clock.advance(step)
    f = c.acquire(FLASH)
    at(105)
    assert [(r.kind, r.key) for r in b.reap()] == [("lease", FLASH)]
    assert c.renew() == [f]
    at(110)
    n = a.acquire(GLM5)
    assert n.via == "primary"
    n.report_rate_limited(5)
    at(120)
    n.release()
    return l1.acquired_at


# --- a known history, through the public API ---------------------------------------------------


def test_the_figures_of_a_known_history_are_exact(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    origin = known_history(open_sync_limiter, database, clock)
    with inspecting(database, clock) as inspector:
        stats = inspector.stats()
    assert stats.exists
    assert stats.since is None
    assert (stats.now - origin).total_seconds() == pytest.approx(120, abs=SLACK)
    # the configured models in config order, then the others by key
    assert [m.key for m in stats.models] == [*CONFIGURED, ON_DEMAND_A, ON_DEMAND_B]
    got = by_key(stats)
    check(
        got[GLM5],
        backend,
        via={"primary": 2, "queue": 1},
        waits=(0, 4000, 4000, 4000),
        queued=3,
        timeouts=1,
        cancellations=1,
        rate_limited=3,
        cooling=30 + 10 + 5,
        peak=1,  # l1 ends at 19 as m begins
    )
    check(got[GLM47], backend, via={"chain": 1, "capability": 1}, waits=(0, 0, 0, 0), peak=1)
    check(got[SONNET], backend, via={"cli": 1}, waits=(0, 0, 0, 0), peak=1)
    check(got[FLASH], backend, via={"primary": 1}, waits=(0, 0, 0, 0), reclaims=1, lost=1, peak=1)
    for key in (ON_DEMAND_A, ON_DEMAND_B):
        check(got[key], backend, via={"primary": 1}, waits=(0, 0, 0, 0), peak=1)
    check(
        stats.total,
        backend,
        via={"primary": 5, "queue": 1, "chain": 1, "capability": 1, "cli": 1},
        # 8 waits of 0 and one of 4000: ranks 5, 9 and 9 of 9
        waits=(0, 4000, 4000, 4000),
        queued=3,
        timeouts=1,
        cancellations=1,
        reclaims=1,
        lost=1,
        rate_limited=3,
        cooling=45,
        peak=4,  # l1, l2 and the on-demand ones; not 6: at 5 three end as two begin
    )
    assert stats.total.key is None


def test_a_window_counts_what_happened_in_it_and_cuts_the_cooldowns_and_holds_at_its_start(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    since = known_history(open_sync_limiter, database, clock) + timedelta(seconds=25)
    with inspecting(database, clock) as inspector:
        windows = [
            inspector.stats(since=timedelta(seconds=95)),
            inspector.stats(since=since),
            inspector.stats(since=since.replace(tzinfo=None)),  # naive: UTC
            inspector.stats(since=since.timestamp()),
        ]
    for stats in windows:
        assert stats.since is not None
        assert (stats.since - since).total_seconds() == pytest.approx(0, abs=SLACK)
        # the on-demand models' leases ended before the window: not shown
        assert [m.key for m in stats.models] == list(CONFIGURED)
        got = by_key(stats)
        # n only; reports at 29 and 110; cooling [25, 49] + [49, 59] + [110, 115]
        check(
            got[GLM5],
            backend,
            via={"primary": 1},
            waits=(0, 0, 0, 0),
            rate_limited=2,
            cooling=24 + 10 + 5,
            peak=1,
        )
        check(got[GLM47], backend, peak=1)  # l3 began before the window: held, not acquired
        check(got[SONNET], backend, peak=1)
        check(
            got[FLASH], backend, via={"primary": 1}, waits=(0, 0, 0, 0), reclaims=1, lost=1, peak=1
        )
        check(
            stats.total,
            backend,
            via={"primary": 2},
            waits=(0, 0, 0, 0),
            reclaims=1,
            lost=1,
            rate_limited=2,
            cooling=39,
            peak=3,  # m, l3 and l4, held as the window begins
        )


def test_a_model_filter_shows_that_model_alone_and_its_figures_are_the_total(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    known_history(open_sync_limiter, database, clock)
    with inspecting(database, clock) as inspector:
        everything = by_key(inspector.stats())
        for key in (GLM5, GLM47, FLASH, ON_DEMAND_B):
            for model in (key, key.as_str()):
                alone = inspector.stats(model=model)
                assert alone.models == (everything[key],)
                assert alone.total == replace(everything[key], key=None)
        nothing = inspector.stats(model="nowhere/never")
    assert [m.key for m in nothing.models] == [ModelKey("nowhere", "never")]
    check(nothing.models[0], backend)
    check(nothing.total, backend)


def test_a_held_lease_and_a_cooldown_under_way_count_up_to_now(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    a, b = (open_sync_limiter(CONFIG, clock=clock, lease_ttl=TTL) for _ in range(2))
    first = a.acquire(GLM47)
    hot = a.acquire(GLM5)
    hot.report_rate_limited(30)  # cooling [0, 30]
    clock.advance(10)
    waiter = queue_behind(b, GLM47)
    clock.advance(3)
    first.release()
    held = waiter.granted()  # still held: its wait comes from the leases table
    clock.advance(7)
    with inspecting(database, clock) as inspector:
        at_20 = inspector.stats()
        clock.advance(20)
        at_40 = inspector.stats()
    for stats, cooled in ((at_20, 20), (at_40, 30)):
        got = by_key(stats)
        check(
            got[GLM5],
            backend,
            via={"primary": 1},
            waits=(0, 0, 0, 0),
            rate_limited=1,
            cooling=cooled,
            peak=1,
        )
        check(
            got[GLM47],
            backend,
            via={"primary": 1, "queue": 1},
            waits=(0, 3000, 3000, 3000),
            queued=1,
            peak=1,
        )
    held.release()
    hot.release()


def reclaimed_ticket(open_sync_limiter: Callable[..., Limiter], clock: FakeClock) -> None:
    """GLM5 held from t=0; a waiter queues; at t=100 a reap reclaims the lease and the ticket
    (both expired), and the waiter, still waiting, gets a lease (having waited 100 s). The
    first holder's release then finds its lease lost."""
    a, b = (open_sync_limiter(CONFIG, clock=clock, lease_ttl=TTL) for _ in range(2))
    first = a.acquire(GLM5)
    waiter = queue_behind(b, GLM5)
    clock.advance(100)
    assert sorted(r.kind for r in a.reap()) == ["lease", "ticket"]
    waiter.granted().release()
    first.release()


def test_a_reclaimed_ticket_is_no_acquisition_nor_a_reclaimed_lease(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    reclaimed_ticket(open_sync_limiter, clock)
    with inspecting(database, clock) as inspector:
        got = inspector.stats().total
    # On PostgreSQL the reap and the waiter's claim, at one fake time, are stamped a fraction
    # of a millisecond apart in either order (see known_history): held together, or not.
    peak = got.peak_holders if backend == "postgresql" and got.peak_holders == 2 else 1
    check(
        got,
        backend,
        via={"primary": 2},
        waits=(0, 100_000, 100_000, 100_000),
        queued=1,
        reclaims=1,
        lost=1,
        peak=peak,
    )


# Waits of the 19 grants through the queue, in seconds, in the order they happen: every whole
# second from 1 to 19, shuffled, so that only sorting puts them in order.
QUEUE_WAITS = (7, 19, 3, 11, 1, 15, 5, 13, 9, 17, 2, 18, 4, 12, 6, 16, 8, 14, 10)


def test_wait_percentiles_are_nearest_ranks_of_the_waits_built(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    clock: FakeClock,
    backend: str,
) -> None:
    """20 acquisitions: one uncontended (0 ms), then 19 grants through the queue, each waiting
    for the one before it to be released after a known time."""
    a, b = (open_sync_limiter(CONFIG, clock=clock, lease_ttl=TTL) for _ in range(2))
    lease = a.acquire(GLM5)
    for wait in QUEUE_WAITS:
        waiter = queue_behind(b, GLM5)
        clock.advance(wait)
        lease.release()
        lease = waiter.granted()
    lease.release()
    with inspecting(database, clock) as inspector:
        stats = inspector.stats()
    # sorted: 0, 1000, ..., 19000; ranks ceil(50 * 20 / 100) = 10, 19 and ceil(19.8) = 20
    check(
        by_key(stats)[GLM5],
        backend,
        via={"primary": 1, "queue": 19},
        waits=(9000, 18000, 19000, 19000),
        queued=19,
        peak=1,
    )


def test_stats_before_any_database_are_the_configured_models_with_zeros_and_create_nothing(
    database: Path | str, tmp_path: Path
) -> None:
    before = sorted(tmp_path.rglob("*"))
    with Inspector(database, config=CONFIG, missing_ok=True) as inspector:
        stats = inspector.stats(since=timedelta(hours=1))
        alone = inspector.stats(model=GLM47)
    assert stats.exists is False
    assert stats.since is not None
    assert (stats.now - stats.since).total_seconds() == pytest.approx(3600, abs=1e-5)
    assert [m.key for m in stats.models] == list(CONFIGURED)
    for figures in (*stats.models, stats.total, *alone.models, alone.total):
        check(figures, "sqlite")
    assert [m.key for m in alone.models] == [GLM47]
    assert sorted(tmp_path.rglob("*")) == before
    if isinstance(database, str):
        schema = resolve_target(database).schema
        assert rows(database, f"SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'") == []


@pytest.mark.parametrize(
    ("since", "model", "argument"),
    [
        ("yesterday", None, "since"),
        (math.nan, None, "since"),
        (math.inf, None, "since"),
        (True, None, "since"),
        (timedelta(seconds=-1), None, "since"),
        (timedelta(days=999_999), None, "since"),  # before the year 1: no time to show
        (1e300, None, "since"),
        (None, "glm-5", None),
        (None, 5, None),
    ],
)
def test_a_bad_since_or_model_is_refused_naming_it(
    db: Path, since: Any, model: Any, argument: str | None
) -> None:
    with (
        Inspector(db, config=CONFIG, missing_ok=True) as inspector,
        pytest.raises(ConfigError) as info,
    ):
        inspector.stats(since=since, model=model)
    if argument is None:  # a key: InvalidKeyError, a ConfigError
        assert isinstance(info.value, InvalidKeyError)
        assert str(info.value).startswith("invalid model ")
    else:
        assert info.value.argument == argument  # type: ignore[attr-defined]
        assert str(info.value).startswith(f"{argument} must be ")


# --- the model_stats view gives the same figures -----------------------------------------------

# How far in the past the view test's history is: the view measures cooldowns against the real
# clock, so the history must be over by then (it lasts 120 fake seconds).
HISTORY_AGO = 10_000.0
VIEW_COLUMNS = (
    "acquisitions",
    *(f"via_{via}" for via in VIAS),
    "wait_p50_ms",
    "wait_p95_ms",
    "wait_p99_ms",
    "wait_max_ms",
    *COUNTS,
    "cooling_secs",
    "peak_holders",
)


def as_view_row(figures: ModelStats) -> tuple[Any, ...]:
    """``figures`` in the view's column order."""
    values = {f.name: getattr(figures, f.name) for f in fields(figures)}
    values |= {f"via_{via}": count for via, count in figures.by_via.items()}
    return tuple(values[name] for name in VIEW_COLUMNS)


def test_the_model_stats_view_gives_the_same_figures_as_stats_over_all_the_history(
    open_sync_limiter: Callable[..., Limiter], database: Path | str
) -> None:
    # The limiters first use the clock at this host's time (on PostgreSQL that fixes the fake
    # clock's offset to the server's), then it goes back: the whole history is in the past.
    clock = FakeClock(time.time())
    open_sync_limiter(CONFIG, clock=clock, lease_ttl=TTL).status()
    clock.advance(-HISTORY_AGO)
    known_history(open_sync_limiter, database, clock)
    view = {
        (provider, model): row
        for provider, model, *row in rows(
            database, f"SELECT provider, model, {', '.join(VIEW_COLUMNS)} FROM model_stats"
        )
    }
    with inspecting(database, None) as inspector:  # "now" is the real time, as the view's
        stats = inspector.stats()
    ours: dict[Any, tuple[Any, ...]] = {("*", "*"): as_view_row(stats.total)}
    for figures in stats.models:
        assert figures.key is not None
        ours[figures.key.provider, figures.key.model] = as_view_row(figures)
    assert set(view) == set(ours)
    for key, row in view.items():
        assert list(row) == pytest.approx(list(ours[key]), abs=1e-6), key


def test_the_model_stats_view_agrees_with_stats_after_a_reclaimed_ticket(
    open_sync_limiter: Callable[..., Limiter], database: Path | str, clock: FakeClock
) -> None:
    reclaimed_ticket(open_sync_limiter, clock)
    with inspecting(database, clock) as inspector:
        stats = inspector.stats()
    view = rows(database, f"SELECT {', '.join(VIEW_COLUMNS)} FROM model_stats WHERE model = '*'")
    assert list(view[0]) == pytest.approx(list(as_view_row(stats.total)), abs=1e-6)


# --- the rules, on hand-made rows --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (None, None, None)),
        ([5.0], (5.0, 5.0, 5.0)),
        ([1.0, 2.0], (1.0, 2.0, 2.0)),  # ranks 1, 2, 2
        ([1.0, 2.0, 3.0], (2.0, 3.0, 3.0)),  # ranks 2, 3, 3
        ([float(i) for i in range(1, 101)], (50.0, 95.0, 99.0)),  # exact ranks
        ([float(i) for i in range(1, 102)], (51.0, 96.0, 100.0)),  # ceil(50.5), ceil(95.95)...
        ([float(i) for i in range(1, 21)], (10.0, 19.0, 20.0)),
    ],
)
def test_percentiles_are_the_value_at_the_nearest_rank(
    values: list[float], expected: tuple[float | None, ...]
) -> None:
    assert tuple(nearest_rank(values, p) for p in (50, 95, 99)) == expected


@pytest.mark.parametrize(
    ("spans", "since", "peak"),
    [
        ([], None, 0),
        ([(0, 10)], None, 1),
        ([(0, 10), (10, 20)], None, 1),  # one ends as the other begins
        ([(10, 20), (0, 10)], None, 1),  # in any order
        ([(0, 10), (9.999, 20)], None, 2),
        ([(5, 5)], None, 0),  # held for no time
        ([(0, 10), (10, 10), (10, 20)], None, 1),
        ([(0, None), (5, None), (7, 8)], None, 3),  # held now: open
        ([(0, 10), (20, 30)], 15, 1),  # the first ended before the window
        ([(0, 10), (5, 30), (20, 30)], 15, 2),  # begun before it: counts from since
        ([(0, 15), (15, 30)], 15, 1),  # ends as the window and the other begin
        ([(0, 15), (5, 15), (15, 30)], 15, 1),  # held together only before the window
        ([(0, 14.9), (15, 30)], 15, 1),
        ([(0, None), (1, None), (2, 3)], 10, 2),
    ],
)
def test_the_peak_counts_ends_before_starts_at_equal_times(
    spans: list[tuple[float, float | None]], since: float | None, peak: int
) -> None:
    assert peak_holders(spans, since) == peak


def report(ts: float, until: float, key: ModelKey = GLM5) -> Report:
    return Report(key, T0 + ts, T0 + until)


@pytest.mark.parametrize(
    ("reports", "since", "now", "cooled"),
    [
        ([], None, 100, 0),
        ([(0, 30)], None, 100, 30),
        ([(0, 30), (10, 60)], None, 100, 60),  # an extension
        ([(0, 30), (10, 30)], None, 100, 30),  # a report that did not extend it
        ([(0, 30), (40, 50)], None, 100, 40),  # two cooldowns
        ([(0, 30), (10, 60)], None, 45, 45),  # under way: up to now
        ([(0, 30), (10, 60)], 20, 100, 40),  # a window that cuts it
        ([(0, 30), (10, 60)], 35, 40, 5),
        ([(0, 30)], 30, 100, 0),
        ([(0, 30), (10, 60)], 70, 100, 0),
    ],
)
def test_cooling_is_the_union_of_each_reports_piece_within_the_window(
    reports: list[tuple[float, float]], since: float | None, now: float, cooled: float
) -> None:
    window = None if since is None else T0 + since
    assert cooling_secs([report(*r) for r in reports], window, T0 + now) == cooled


def life(
    key: ModelKey,
    acquired: float,
    ended: float | None = None,
    *,
    kind: str | None = "released",
    via: str = "primary",
    waited: float = 0.0,
) -> Lifetime:
    return Lifetime(
        key,
        via,
        T0 + acquired,
        waited,
        None if ended is None else T0 + ended,
        None if ended is None else kind,
    )


def stats_of(
    *,
    since: float | None = None,
    now: float = 1000,
    lifetimes: Sequence[Lifetime] = (),
    reports: Sequence[Report] = (),
    tallies: Sequence[tuple[ModelKey, str, int]] = (),
    listed: Sequence[ModelKey] = CONFIGURED,
    model: ModelKey | None = None,
) -> Stats:
    return compute(
        since=None if since is None else T0 + since,
        now=T0 + now,
        lifetimes=lifetimes,
        reports=reports,
        tallies=tallies,
        listed=listed,
        model=model,
    )


def test_without_any_history_the_configured_models_show_zeros() -> None:
    stats = stats_of()
    assert [m.key for m in stats.models] == list(CONFIGURED)
    assert stats.models[0] == ModelStats(GLM5)
    assert stats.total == ModelStats(None)
    assert stats.total.wait_p50_ms is None
    assert dict(stats.total.by_via) == dict.fromkeys(VIAS, 0)
    assert (stats.since, stats.now) == (None, datetime.fromtimestamp(T0 + 1000, timezone.utc))


def test_a_discarded_lease_is_no_acquisition_but_was_held() -> None:
    stats = stats_of(
        lifetimes=[
            life(GLM5, 0, 10, waited=50),
            life(GLM5, 5, 5, kind="discarded", waited=7000),
            life(GLM5, 6, 8, kind="discarded", waited=9000),
        ]
    )
    got = stats.models[0]
    assert (got.acquisitions, got.wait_max_ms, got.peak_holders) == (1, 50.0, 2)


def test_a_reclaimed_lease_is_an_acquisition_and_a_reclaim_when_it_ends_in_the_window() -> None:
    lifetimes = [life(GLM5, 0, 100, kind="reclaimed"), life(GLM5, 50, 60)]
    everything = stats_of(lifetimes=lifetimes).models[0]
    assert (everything.acquisitions, everything.reclaims) == (2, 1)
    late = stats_of(lifetimes=lifetimes, since=55).models[0]
    assert (late.acquisitions, late.reclaims, late.peak_holders) == (0, 1, 2)
    after = stats_of(lifetimes=lifetimes, since=100.5).models[0]
    assert (after.acquisitions, after.reclaims, after.peak_holders) == (0, 0, 0)


def test_acquisitions_are_those_begun_in_the_window_and_their_waits_only() -> None:
    lifetimes = [
        life(GLM5, 0, 20, waited=100, via="queue"),
        life(GLM5, 10, waited=300, via="chain"),  # held now
        life(GLM5, 20, 30, waited=200),
    ]
    stats = stats_of(lifetimes=lifetimes, since=10)
    got = stats.models[0]
    assert got.acquisitions == 2
    assert dict(got.by_via) == dict.fromkeys(VIAS, 0) | {"chain": 1, "primary": 1}
    assert (got.wait_p50_ms, got.wait_p95_ms, got.wait_max_ms) == (200.0, 300.0, 300.0)
    assert got.peak_holders == 2  # the first, from since, and the one held now


def test_models_with_activity_follow_the_configured_ones_sorted_and_a_filter_keeps_one() -> None:
    zed, other = ModelKey("zed", "m"), ModelKey("abc", "m")
    lifetimes = [life(zed, 0, 10), life(GLM47, 0, 3)]
    tallies = [(other, "limit_changed", 1)]  # any event makes a model active
    stats = stats_of(lifetimes=lifetimes, tallies=tallies, listed=[GLM47, GLM5])
    assert [m.key for m in stats.models] == [GLM47, GLM5, other, zed]
    assert stats.total.acquisitions == 2
    assert stats.total.peak_holders == 2  # across the models
    alone = stats_of(lifetimes=lifetimes, tallies=tallies, listed=[GLM47, GLM5], model=zed)
    assert alone.models == (by_key(stats)[zed],)
    assert alone.total == replace(by_key(stats)[zed], key=None)
    # a model whose leases and events all came before the window is not shown
    late = stats_of(lifetimes=lifetimes, tallies=(), listed=[GLM47], since=20)
    assert [m.key for m in late.models] == [GLM47]


def test_a_cooldown_reported_before_the_window_shows_its_model_while_it_lasts_into_it() -> None:
    rows_ = [report(0, 30, ModelKey("x", "y"))]
    assert [m.key for m in stats_of(reports=rows_, since=20, listed=[]).models] == [
        ModelKey("x", "y")
    ]
    stats = stats_of(reports=rows_, since=20, listed=[])
    assert (stats.total.cooling_secs, stats.total.rate_limited) == (10, 0)
    assert stats_of(reports=rows_, since=40, listed=[]).models == ()


def test_the_total_cooling_is_the_models_sum() -> None:
    reports = [report(0, 30, GLM5), report(10, 20, GLM47), report(25, 40, GLM47)]
    stats = stats_of(reports=reports)
    assert [m.cooling_secs for m in stats.models[:2]] == [30, 25]
    assert (stats.total.cooling_secs, stats.total.rate_limited) == (55, 3)


def test_only_queued_timed_out_cancelled_and_lost_events_are_counted_from_the_tallies() -> None:
    tallies = [
        (GLM5, "queued", 4),
        (GLM5, "timed_out", 2),
        (GLM5, "cancelled", 1),
        (GLM5, "lost", 3),
        (GLM5, "reclaimed", 9),  # the lifetimes count reclaimed leases (not tickets)
        (GLM5, "rate_limited", 9),  # the reports count these
        (GLM5, "fell_back", 9),
        (GLM47, "queued", 1),
    ]
    stats = stats_of(tallies=tallies)
    got = stats.models[0]
    assert (got.queued, got.timeouts, got.cancellations, got.lost) == (4, 2, 1, 3)
    assert (got.reclaims, got.rate_limited) == (0, 0)
    assert stats.total.queued == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (T0, T0),
        (int(T0), T0),
        (datetime.fromtimestamp(T0, timezone.utc), T0),
        (datetime.fromtimestamp(T0, timezone.utc).replace(tzinfo=None), T0),  # naive: UTC
        (datetime.fromtimestamp(T0, timezone(timedelta(hours=2))), T0),
        (timedelta(minutes=5), T0 + 1000 - 300),
        (timedelta(0), T0 + 1000),
    ],
)
def test_since_may_be_epoch_seconds_a_datetime_or_a_timedelta_before_now(
    value: Any, expected: float | None
) -> None:
    assert resolve_since(value, T0 + 1000) == expected
