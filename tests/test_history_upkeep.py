"""The history's upkeep: a process without one writes nothing, pruning keeps the window and
never lowers a count, and a database from before the history is upgraded into one (the events
each transaction writes are ``test_history``'s)."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import pytest

from collet_limiter import (
    Acquired,
    AcquireTimeout,
    Inspector,
    Limiter,
    LimiterClosedError,
    _events,
)
from collet_limiter._schema import SCHEMA_REVISION

from .conftest import SMALL, make_config
from .sql import SQLITE_ONLY, at_revision, rows
from .test_history import (
    GLM5,
    GLM47,
    TIMEOUT,
    TTL,
    Background,
    config,
    event,
    events,
    kinds,
    on,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .conftest import FakeClock


# --- history = false ---------------------------------------------------------------------------


def workload(
    open_sync_limiter: Callable[..., Limiter], clock: FakeClock, settings: Any
) -> list[Any]:
    """Something of every kind but ``discarded``; returns what the caller saw of its leases."""
    seen: list[Any] = []
    a, b = open_sync_limiter(config(**settings)), open_sync_limiter(config(**settings))
    first = a.acquire(GLM5)
    moved = b.acquire_with_fallback(GLM5, [GLM47])
    assert isinstance(moved, Acquired)
    seen.append((moved.lease.key, moved.lease.via))
    with pytest.raises(AcquireTimeout):
        b.acquire_wait(GLM5, timeout=0)
    waiting = Background(lambda: b.acquire_wait(GLM5))
    deadline = time.monotonic() + TIMEOUT
    while not b.waiters():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    first.release()
    granted = waiting.result()
    seen.append((granted.key, granted.via))
    seen.append(granted.report_rate_limited(10).started)
    granted.release()
    moved.lease.release()
    clock.advance(11)
    stalled = a.acquire(GLM5)  # claims the cooled model: its cooldown ended
    seen.append(stalled.via)
    clock.advance(TTL + 1)
    seen.append([(r.kind, r.reason) for r in b.reap()])
    stalled.release()
    seen.append(stalled.lost)
    closing = open_sync_limiter(config(**settings))
    kept = closing.acquire(GLM47)
    seen.append(kept.via)
    queued = Background(lambda: closing.acquire_wait(GLM47))
    while not closing.waiters():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    closing.close()
    with pytest.raises(LimiterClosedError):
        queued.result()
    seen.append(kept.released)
    open_sync_limiter(make_config(**dict(SMALL, collaboration={"max_agents": 7}), limiter=settings))
    seen.append(a.status().max_agents)
    return seen


@pytest.mark.parametrize("history", [True, False])
def test_without_history_the_same_workload_writes_no_event_and_leases_work_alike(
    open_sync_limiter: Callable[..., Limiter],
    clock: FakeClock,
    database: Path | str,
    history: bool,
) -> None:
    seen = workload(open_sync_limiter, clock, {"history": history})
    assert seen == [
        (GLM47, "chain"),
        (GLM5, "queue"),
        True,
        "primary",
        [("lease", "expired")],
        True,
        "primary",
        True,
        7,
    ]
    written = Counter(kinds(database))
    if history:
        assert written == {
            "fell_back": 1, "queued": 3, "timed_out": 1, "released": 4, "cooldown_started": 1,
            "rate_limited": 1, "cooldown_ended": 1, "reclaimed": 1, "lost": 1, "cancelled": 1,
            "limit_changed": 1,
        }  # fmt: skip
        assert set(written) == set(_events.KINDS) - {"discarded"}
    else:
        assert written == {}
        assert rows(database, "SELECT count(*) FROM event_counts") == [(0,)]
        with Inspector(database) as inspector:
            assert inspector.event_counts() == []


# --- pruning -----------------------------------------------------------------------------------


def cycles(limiter: Limiter, clock: FakeClock, count: int) -> None:
    """``count`` acquire-and-release cycles, each ending 1 s after the one before."""
    for _ in range(count):
        lease = limiter.acquire(GLM5)
        clock.advance(1)
        lease.release()


def counted(database: Path | str) -> list[tuple[object, ...]]:
    return rows(database, "SELECT kind, provider, model, via, count FROM event_counts")


def test_pruning_moves_events_older_than_the_window_into_event_counts(
    open_sync_limiter: Callable[..., Limiter], clock: FakeClock, database: Path | str
) -> None:
    limiter = open_sync_limiter(config(history_days=1))
    cycles(limiter, clock, 3)  # released at t0 + 1, 2, 3
    clock.advance(86400 + 0.5)  # the window (1 day) now begins at t0 + 3.5
    cycles(limiter, clock, 2)
    young = events(database)[3:]
    with Inspector(database) as inspector:
        total = [("released", "zai", "glm-5", "primary", 5)]
        assert inspector.event_counts() == total
        assert counted(database) == []
        assert limiter.reap() == []
        assert events(database) == young
        assert counted(database) == [("released", "zai", "glm-5", "primary", 3)]
        assert inspector.event_counts() == total  # a count never goes down
        cycles(limiter, clock, 1)
        clock.advance(86400 + 0.5)
        limiter.reap()  # the rest, added to the same counts
        assert events(database) == []
        assert counted(database) == [("released", "zai", "glm-5", "primary", 6)]
        assert inspector.event_counts() == [("released", "zai", "glm-5", "primary", 6)]


def test_a_prune_deletes_at_most_prune_batch_rows_oldest_first(
    open_sync_limiter: Callable[..., Limiter],
    clock: FakeClock,
    database: Path | str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_events, "PRUNE_BATCH", 2)
    limiter = open_sync_limiter(config(history_days=1))
    cycles(limiter, clock, 5)
    ids = [cast("int", row[0]) for row in rows(database, "SELECT id FROM events ORDER BY id")]
    clock.advance(86400 * 2)
    with Inspector(database) as inspector:
        for left in (3, 1, 0):
            limiter.reap()
            kept = [
                cast("int", row[0]) for row in rows(database, "SELECT id FROM events ORDER BY id")
            ]
            assert kept == ids[len(ids) - left :]
            assert counted(database) == [("released", "zai", "glm-5", "primary", 5 - left)]
            assert inspector.event_counts() == [("released", "zai", "glm-5", "primary", 5)]


def test_every_prune_every_th_release_prunes(
    open_sync_limiter: Callable[..., Limiter],
    clock: FakeClock,
    database: Path | str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_events, "PRUNE_EVERY", 3)
    limiter = open_sync_limiter(config(history_days=1))
    cycles(limiter, clock, 2)
    clock.advance(86400 * 2)
    lease = limiter.acquire(GLM5)
    assert lease.id == 3
    lease.release()  # lease 3: prunes the two old rows, keeps its own
    assert [row["lease_id"] for row in events(database)] == [3]
    assert counted(database) == [("released", "zai", "glm-5", "primary", 2)]


# --- an older database -------------------------------------------------------------------------


@SQLITE_ONLY
def test_an_older_database_is_upgraded_and_its_old_lease_ends_with_no_wait(
    database: Path, clock: FakeClock
) -> None:
    at_revision(
        database,
        "0005_cooldowns",
        "INSERT INTO leases (token, provider, model, primary_provider, primary_model, via, "
        "holder, pid, pid_start, host_id, hostname, owner, acquired_at, expires_at, "
        "acquired_ts, expires_ts) VALUES ('old-lease', 'zai', 'glm-5', 'zai', 'glm-5', "
        f"'primary', 'old', 4242, 0, 'elsewhere', 'old-host', 'o', 'x', 'x', {clock.now - 4}, "
        "9e18)",
        "INSERT INTO waiters (token, provider, model, holder, pid, pid_start, host_id, "
        "hostname, owner, enqueued_at, expires_at, enqueued_ts, expires_ts) VALUES "
        "('old-ticket', 'zai', 'glm-4.7', 'old', 4242, 0, 'elsewhere', 'old-host', 'o', 'x', "
        f"'x', {clock.now - 2}, {clock.now - 1})",
    )
    with Limiter(database, config=config(), clock=clock) as limiter:
        with sqlite3.connect(database) as look:
            assert look.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (SCHEMA_REVISION,)
            ]
            assert look.execute("SELECT token, requested_ts FROM leases").fetchall() == [
                ("old-lease", None)
            ]
            assert look.execute("SELECT token, requested_ts FROM waiters").fetchall() == [
                ("old-ticket", None)
            ]
            assert look.execute(
                "SELECT lease_id, waited_ms, ended FROM lease_history"
            ).fetchall() == [(1, 0.0, None)]
        # The expired old ticket: its wait counted from when it was queued.
        assert [(r.kind, r.id, r.reason) for r in limiter.reap()] == [("ticket", 1, "expired")]
        # The old lease, released as its holder would (by id and token) in the limiter's own
        # release transaction: no wait, since it never said when its request began.
        released = limiter._runtime.write(lambda conn: limiter._core.release(conn, 1, "old-lease"))
        assert released is True
    assert events(database) == [
        event(
            "reclaimed", provider="zai", model="glm-4.7", primary_provider="zai",
            primary_model="glm-4.7", ticket_id=1, holder="old", pid=4242, hostname="old-host",
            waited_ms=2000.0, reason="expired", ts=clock.now,
        ),
        event(
            "released", **on(GLM5), via="primary", lease_id=1, holder="old", pid=4242,
            hostname="old-host", acquired_ts=clock.now - 4, waited_ms=0.0, held_ms=4000.0,
            ts=clock.now,
        ),
    ]  # fmt: skip
    with sqlite3.connect(database) as look:
        assert look.execute(
            "SELECT lease_id, waited_ms, held_ms, ended FROM lease_history"
        ).fetchall() == [(1, 0.0, 4000.0, "released")]
        stats = look.execute(
            "SELECT provider, model, acquisitions, via_primary, wait_max_ms FROM model_stats "
            "ORDER BY provider, model"
        ).fetchall()
        assert stats == [
            ("*", "*", 1, 1, 0.0),
            ("zai", "glm-4.7", 0, 0, None),  # its reclaimed ticket: an event, no acquisition
            ("zai", "glm-5", 1, 1, 0.0),
        ]
