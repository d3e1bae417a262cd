"""The history: each transaction writes exactly the events it causes (see ``_events``), read
back with plain SQL, on both databases and, where the face takes part, both faces.

The fake clock makes every time exact on SQLite. On PostgreSQL a transaction's time is the
server's clock moved by as far as the fake clock moved (see ``Core.now``): differences of fake
time come out within ``PG_SLACK`` of the fake steps, and times copied from a row are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from collet_limiter import (
    Acquired,
    AcquireTimeout,
    AsyncLimiter,
    Limiter,
    LimiterClosedError,
    ModelKey,
    _claim,
    _engine,
    load_config,
)

from .conftest import SMALL, make_config
from .namespaces import reap_worker, start_worker
from .sql import SQLITE_ONLY, rows

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator

    from .conftest import FakeClock

GLM5, GLM47 = ModelKey("zai", "glm-5"), ModelKey("zai", "glm-4.7")
PID, HOST = os.getpid(), socket.gethostname()
TTL = 60.0  # the default lease TTL, which these tests leave alone
TIMEOUT = 60  # bound of every wait for observed state, thread and child process
# On PostgreSQL the gap between the server reading its clock (as the transaction takes its
# lock) and this process reading its own is normally well under a millisecond; 0.5 s leaves a
# loaded machine room and stays below every fake-clock step compared (1.5 s and more).
PG_SLACK = 0.5
# acquire_wait's timeout is real time: the test moves the fake clock as soon as it sees the
# ticket, which takes milliseconds; two seconds leave a loaded machine room to do that first.
REAL_TIMEOUT = 2.0
REFUSAL = "full (1/1 held)"  # the primary's verdict when its one slot is taken
CLOSED = "limiter closed"
COLUMNS = (
    "kind", "provider", "model", "primary_provider", "primary_model", "via", "lease_id",
    "ticket_id", "holder", "pid", "hostname", "acquired_ts", "waited_ms", "held_ms", "reason",
    "cooldown_kind", "until_ts", "limit_before", "limit_after", "ts",
)  # fmt: skip


def config(**limiter: Any) -> Any:
    """SMALL (limit 1 per model, max_agents 10) with these ``[limiter]`` settings."""
    return make_config(**SMALL, limiter=limiter)


def events(database: Path | str) -> list[dict[str, Any]]:
    """Every row of ``events``, in the order written."""
    found = rows(database, f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY id")
    return [dict(zip(COLUMNS, row, strict=True)) for row in found]


def kinds(database: Path | str) -> list[str]:
    return [str(row[0]) for row in rows(database, "SELECT kind FROM events ORDER BY id")]


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """An expected ``events`` row: ``fields``, every other column NULL."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(kind=kind, **fields)
    return row


def on(key: ModelKey, asked: ModelKey | None = None) -> dict[str, str]:
    """The model columns of an event on ``key`` for a request that asked for ``asked``."""
    asked = asked or key
    return {
        "provider": key.provider,
        "model": key.model,
        "primary_provider": asked.provider,
        "primary_model": asked.model,
    }


def here(label: str | None, pid: int = PID) -> dict[str, Any]:
    """The holder columns of an event written for this process (or ``pid`` on this host)."""
    return {"holder": label, "pid": pid, "hostname": HOST}


def near(database: Path | str, value: float) -> Any:
    """A time (s) that a fake-clock step decides: exact on SQLite, within PG_SLACK on a server."""
    return value if isinstance(database, Path) else pytest.approx(value, abs=PG_SLACK)


def near_ms(database: Path | str, value: float) -> Any:
    """``near`` for a duration in milliseconds."""
    return value if isinstance(database, Path) else pytest.approx(value, abs=PG_SLACK * 1000)


def start(database: Path | str, clock: FakeClock, query: str) -> float:
    """The time of the first transaction: the fake clock's on SQLite (so every expected time is
    checked against it), else what the row read by ``query`` holds (the server's clock)."""
    if isinstance(database, Path):
        return clock.now
    return cast("float", wait_for(database, query)[0][0])


def wait_for(database: Path | str, query: str) -> list[tuple[object, ...]]:
    """The rows of ``query`` once there are any (a ticket queued by another thread)."""
    deadline = time.monotonic() + TIMEOUT
    while not (found := rows(database, query)):
        assert time.monotonic() < deadline, f"nothing from {query!r} within {TIMEOUT}s"
        time.sleep(0.005)
    return found


def one_ticket(database: Path | str) -> int:
    (row,) = wait_for(database, "SELECT id FROM waiters")
    return cast("int", row[0])


class Background:
    """A call run in a thread: its result, or its exception raised again, once it ends."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self._outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                self._outcome.append((True, func()))
            except BaseException as exc:  # handed to the test, raised again there
                self._outcome.append((False, exc))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), f"still running after {TIMEOUT}s"
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


# --- leases that end ---------------------------------------------------------------------------


def test_an_acquire_writes_no_event_and_its_release_writes_one_released_row(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5, holder="agent-1")
    assert rows(database, "SELECT id FROM leases") == [(lease.id,)]
    assert events(database) == []
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    clock.advance(2.5)
    lease.release()
    assert events(database) == [
        event(
            "released", **on(GLM5), via="primary", lease_id=lease.id, **here("agent-1"),
            acquired_ts=t0, waited_ms=0.0, held_ms=near_ms(database, 2500.0),
            ts=near(database, t0 + 2.5),
        )
    ]  # fmt: skip
    assert rows(database, "SELECT count(*) FROM leases") == [(0,)]


def test_a_waiter_granted_by_a_release_is_queued_then_ends_via_queue_with_its_wait(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    holder, waiter = open_limiter(config()), open_limiter(config())
    held = holder.acquire(GLM5, holder="first")
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    waiting = Background(lambda: waiter.acquire_wait(GLM5, holder="second"))
    ticket = one_ticket(database)
    assert kinds(database) == ["queued"]
    clock.advance(1.5)
    held.release()
    granted = waiting.result()
    assert (granted.key, granted.via) == (GLM5, "queue")
    clock.advance(2.5)
    granted.release()
    assert events(database) == [
        event(
            "queued", provider="zai", model="glm-5", ticket_id=ticket, **here("second"),
            waited_ms=0.0, ts=near(database, t0),
        ),
        event(
            "released", **on(GLM5), via="primary", lease_id=held.id, **here("first"),
            acquired_ts=t0, waited_ms=0.0, held_ms=near_ms(database, 1500.0),
            ts=near(database, t0 + 1.5),
        ),
        event(
            "released", **on(GLM5), via="queue", lease_id=granted.id, **here("second"),
            acquired_ts=near(database, t0 + 1.5), waited_ms=near_ms(database, 1500.0),
            held_ms=near_ms(database, 2500.0), ts=near(database, t0 + 4.0),
        ),
    ]  # fmt: skip


def test_a_fallback_writes_fell_back_with_what_was_asked_and_why_the_primary_refused(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    first, second = open_limiter(config()), open_limiter(config())
    held = first.acquire(GLM5)  # kept referenced: a dropped lease is given back
    outcome = second.acquire_with_fallback(GLM5, [GLM47], holder="moved")
    assert isinstance(outcome, Acquired)
    lease = outcome.lease
    assert (lease.key, lease.via) == (GLM47, "chain")
    t0 = start(database, clock, f"SELECT acquired_ts FROM leases WHERE id = {lease.id}")
    clock.advance(1.5)
    lease.release()
    assert events(database) == [
        event(
            "fell_back", **on(GLM47, asked=GLM5), via="chain", lease_id=lease.id,
            **here("moved"), waited_ms=0.0, reason=REFUSAL, ts=t0,
        ),
        event(
            "released", **on(GLM47, asked=GLM5), via="chain", lease_id=lease.id,
            **here("moved"), acquired_ts=t0, waited_ms=0.0, held_ms=near_ms(database, 1500.0),
            ts=near(database, t0 + 1.5),
        ),
    ]  # fmt: skip
    assert not held.released
    held.release()


# --- acquires that give up ---------------------------------------------------------------------


def test_an_acquire_that_times_out_writes_timed_out_with_its_wait(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    holder, waiter = open_limiter(config()), open_limiter(config())
    held = holder.acquire(GLM5)
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    waiting = Background(
        lambda: waiter.acquire_wait(GLM5, timeout=REAL_TIMEOUT, holder="impatient")
    )
    ticket = one_ticket(database)
    clock.advance(1.5)
    with pytest.raises(AcquireTimeout) as raised:
        waiting.result()
    reason = str(raised.value)
    assert reason.startswith(f"no permit for zai/glm-5 within {REAL_TIMEOUT:g}s ({REFUSAL})")
    assert events(database) == [
        event(
            "queued", provider="zai", model="glm-5", ticket_id=ticket, **here("impatient"),
            waited_ms=0.0, ts=near(database, t0),
        ),
        event(
            "timed_out", **on(GLM5), ticket_id=ticket, **here("impatient"),
            waited_ms=near_ms(database, 1500.0), reason=reason, ts=near(database, t0 + 1.5),
        ),
    ]  # fmt: skip
    assert rows(database, "SELECT count(*) FROM waiters") == [(0,)]
    assert not held.released
    held.release()


def test_a_cancelled_acquire_writes_cancelled_with_its_wait(
    api: str, open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    """Sync: a KeyboardInterrupt (a real SIGINT) in the waiting main thread; async: the waiting
    task cancelled."""
    holder, waiter = open_limiter(config()), open_limiter(config())
    held = holder.acquire(GLM5)
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    if api == "sync":
        runtime = waiter._runtime

        def interrupt() -> None:
            one_ticket(database)
            deadline = time.monotonic() + TIMEOUT
            # Registered as a waiter: parked between claims (an interrupt as a claim commits
            # is a test below).
            while not runtime.waiters:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            clock.advance(1.5)
            os.kill(os.getpid(), signal.SIGINT)

        helper = threading.Thread(target=interrupt)
        helper.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                waiter.acquire_wait(GLM5, timeout=TIMEOUT, holder="interrupted")
        finally:
            helper.join(TIMEOUT)
        reason = "KeyboardInterrupt"
    else:
        runtime = waiter.limiter._runtime

        async def cancel() -> None:
            task = asyncio.ensure_future(waiter.limiter.acquire_wait(GLM5, holder="interrupted"))
            deadline = time.monotonic() + TIMEOUT
            # Registered as a waiter: parked between claims (a cancellation that meets a claim
            # ending on the worker thread is a test below).
            while not runtime.waiters:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            clock.advance(1.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        waiter._loop.run(cancel())
        reason = "CancelledError"
    ((ticket,),) = rows(database, "SELECT ticket_id FROM events WHERE kind = 'queued'")
    assert events(database) == [
        event(
            "queued", provider="zai", model="glm-5", ticket_id=ticket, **here("interrupted"),
            waited_ms=0.0, ts=near(database, t0),
        ),
        event(
            "cancelled", **on(GLM5), ticket_id=ticket, **here("interrupted"),
            waited_ms=near_ms(database, 1500.0), reason=reason, ts=near(database, t0 + 1.5),
        ),
    ]  # fmt: skip
    assert rows(database, "SELECT count(*) FROM waiters") == [(0,)]
    assert not held.released
    held.release()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("api", ["async"], indirect=True)
def test_a_task_cancelled_as_its_claim_ends_on_the_worker_is_cancelled_and_recorded(
    open_limiter: Callable[..., Any], database: Path | str
) -> None:
    """On a server every transaction of an AsyncLimiter runs on its worker thread. Blocking
    the loop until the claim has run puts its result's callback on the loop ahead of the
    cancellation: the moment a caller's ``wait_for`` or ``task.cancel()`` can hit."""
    holder, waiter = open_limiter(config()), open_limiter(config())
    held = holder.acquire(GLM5)
    limiter = waiter.limiter
    runtime = limiter._runtime

    async def scenario() -> list[str]:
        task = asyncio.ensure_future(limiter.acquire_wait(GLM5, holder="cancelled"))
        await asyncio.sleep(0)  # the task's first step queues its claim on the worker
        runtime.submit(lambda: None).result(TIMEOUT)  # (blocking the loop) the claim has run
        assert kinds(database) == ["queued"]
        task.cancel()
        try:
            for _ in range(3):
                await asyncio.sleep(0)  # the task takes its next step
            runtime.submit(lambda: None).result(TIMEOUT)  # and what it queued has run
            return kinds(database)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert waiter._loop.run(scenario()) == ["queued", "cancelled"]
    assert not held.released
    held.release()


@SQLITE_ONLY
def test_an_interrupt_as_a_claim_commits_is_raised_as_such_and_recorded_cancelled(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a Ctrl-C landing inside ``commit()`` does (seen under load with a real SIGINT): here
    the waiter's first claim commits its ticket, then the interrupt is raised."""
    holder, waiter = open_sync_limiter(config()), open_sync_limiter(config())
    held = holder.acquire(GLM5)
    # A claim's COMMIT: the driver's own on SQLite (hot_write_transaction), SQLAlchemy's on a
    # server.
    owner: Any = _engine if isinstance(database, Path) else waiter._runtime.engine.dialect
    name = "driver_commit" if isinstance(database, Path) else "do_commit"
    commit = getattr(owner, name)

    def commit_then_interrupt(dbapi_connection: Any) -> None:
        monkeypatch.setattr(owner, name, commit)  # once
        commit(dbapi_connection)
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, commit_then_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            waiter.acquire_wait(GLM5, timeout=TIMEOUT, holder="interrupted")
        assert [(e["kind"], e["reason"]) for e in events(database)] == [
            ("queued", None),
            ("cancelled", "KeyboardInterrupt"),
        ]
        assert rows(database, "SELECT count(*) FROM waiters") == [(0,)]
    finally:
        held.release()


def test_a_task_cancelled_after_a_release_granted_it_records_cancelled_and_the_lease_discarded(
    open_sync_limiter: Callable[..., Limiter], clock: FakeClock, database: Path | str
) -> None:
    """The lease a release inserted for the waiter, which never took it: the give-up is copied
    from that lease (the ticket is gone), and the lease ends as ``discarded``.

    The holder is a sync Limiter released on the event loop's own thread, so that nothing runs
    on the loop (the waiter's wake-up included) between the grant and the cancellation."""
    held = open_sync_limiter(config()).acquire(GLM5, holder="first")
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")

    async def main() -> int:
        async with AsyncLimiter(database, config=config(), clock=clock) as waiter:
            task = asyncio.ensure_future(waiter.acquire_wait(GLM5, holder="gone"))
            deadline = time.monotonic() + TIMEOUT
            while not waiter._runtime or not waiter._runtime.waiters:  # parked between claims
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            clock.advance(1.5)
            held.release()  # blocks the loop: the grant commits before the task runs again
            ((granted,),) = rows(database, "SELECT id FROM leases")
            clock.advance(1.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return cast("int", granted)

    granted = asyncio.run(main())
    queued, released, cancelled, discarded = events(database)
    asked, given, end = queued["ts"], cancelled["acquired_ts"], cancelled["ts"]
    assert queued == event(
        "queued", provider="zai", model="glm-5", ticket_id=queued["ticket_id"], **here("gone"),
        waited_ms=0.0, ts=near(database, t0),
    )  # fmt: skip
    assert released == event(
        "released", **on(GLM5), via="primary", lease_id=held.id, **here("first"),
        acquired_ts=t0, waited_ms=0.0, held_ms=near_ms(database, 1500.0),
        ts=near(database, t0 + 1.5),
    )  # fmt: skip
    assert given == near(database, t0 + 1.5)
    assert end == near(database, t0 + 3.0)
    # The give-up: how long the request waited, to the end; nothing held.
    assert cancelled == event(
        "cancelled", **on(GLM5), via="queue", lease_id=granted, **here("gone"),
        acquired_ts=given, waited_ms=(end - asked) * 1000.0, reason="CancelledError", ts=end,
    )  # fmt: skip
    # The lease's end: how long it waited for its grant, and was held unused.
    assert discarded == event(
        "discarded", **on(GLM5), via="queue", lease_id=granted, **here("gone"),
        acquired_ts=given, waited_ms=(given - asked) * 1000.0,
        held_ms=(end - given) * 1000.0, reason="CancelledError", ts=end,
    )  # fmt: skip
    assert rows(database, "SELECT count(*) FROM leases") == [(0,)]


# --- reclaimed and lost ------------------------------------------------------------------------


def test_an_expired_lease_is_reclaimed_and_its_holders_release_then_records_it_lost(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    stalled, other = open_limiter(config()), open_limiter(config())
    lease = stalled.acquire(GLM5, holder="stalled")
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    clock.advance(TTL + 1.5)
    reaped = other.reap()
    assert [(r.kind, r.id, r.reason) for r in reaped] == [("lease", lease.id, "expired")]
    clock.advance(1.5)
    assert lease.release() is None
    assert lease.lost
    same = {**on(GLM5), "via": "primary", "lease_id": lease.id, **here("stalled")}
    assert events(database) == [
        event(
            "reclaimed", **same, acquired_ts=t0, waited_ms=0.0,
            held_ms=near_ms(database, (TTL + 1.5) * 1000), reason="expired",
            ts=near(database, t0 + TTL + 1.5),
        ),
        event(
            "lost", **same, acquired_ts=t0, held_ms=near_ms(database, (TTL + 3.0) * 1000),
            reason="expired and reclaimed while its holder still held it",
            ts=near(database, t0 + TTL + 3.0),
        ),
    ]  # fmt: skip


def test_a_renewal_that_finds_its_lease_reclaimed_records_it_lost_once(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    stalled, other = open_limiter(config()), open_limiter(config())
    lease = stalled.acquire(GLM5, holder="stalled")
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    clock.advance(TTL + 1.5)
    other.reap()
    clock.advance(1.5)
    assert stalled.renew() == [lease]
    assert lease.lost
    lease.release()  # a no-op now: no second lost row
    assert kinds(database) == ["reclaimed", "lost"]
    assert events(database)[1] == event(
        "lost", **on(GLM5), via="primary", lease_id=lease.id, **here("stalled"),
        acquired_ts=t0, held_ms=near_ms(database, (TTL + 3.0) * 1000),
        reason="expired and reclaimed while its holder still held it",
        ts=near(database, t0 + TTL + 3.0),
    )  # fmt: skip


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes, killed (if still running) and reaped at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        reap_worker(child)


def test_a_dead_holders_lease_and_a_dead_waiters_ticket_are_reclaimed_as_holder_dead(
    open_sync_limiter: Callable[..., Limiter],
    database: Path | str,
    tmp_path: Path,
    children: list[subprocess.Popen[str]],
) -> None:
    """Real processes, SIGKILLed. The limiter that reaps runs on real time: the workers'
    leases would have expired long ago by the fake clock."""
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent("""
        [collaboration]
        max_agents = 10
        [[models]]
        name = "glm-5"
        concurrency_limit = 1
        [[providers]]
        name = "zai"
        models = ["glm-5"]
        """)
    )
    limiter = open_sync_limiter(load_config(path), clock=None)
    common = ("--db", str(database), "--config", str(path), "--model", "zai/glm-5")
    holder = start_worker("hold", *common)
    children.append(holder)
    assert holder.stdout is not None
    assert holder.stdout.readline().startswith("HELD"), holder.stderr and holder.stderr.read()
    waiter = start_worker("wait", *common, "--timeout", str(TIMEOUT), "--label", "waiter")
    children.append(waiter)
    ticket = one_ticket(database)
    ((lease_id, acquired, requested),) = rows(
        database, "SELECT l.id, l.acquired_ts, w.requested_ts FROM leases l, waiters w"
    )
    for child in (waiter, holder):  # the waiter first: else it would reap the holder itself
        child.kill()
        child.wait(TIMEOUT)
    reaped = limiter.reap()
    assert [(r.kind, r.id, r.pid, r.reason) for r in reaped] == [
        ("lease", lease_id, holder.pid, "holder dead"),
        ("ticket", ticket, waiter.pid, "holder dead"),
    ]
    queued, lease_end, ticket_end = events(database)
    end = lease_end["ts"]
    assert queued == event(
        "queued", provider="zai", model="glm-5", ticket_id=ticket, **here("waiter", waiter.pid),
        waited_ms=0.0, ts=requested,
    )  # fmt: skip
    assert lease_end == event(
        "reclaimed", **on(GLM5), via="primary", lease_id=lease_id, **here("holder", holder.pid),
        acquired_ts=acquired, waited_ms=0.0, held_ms=(end - acquired) * 1000.0,
        reason="holder dead", ts=end,
    )  # fmt: skip
    assert ticket_end == event(
        "reclaimed", **on(GLM5), ticket_id=ticket, **here("waiter", waiter.pid),
        waited_ms=(end - requested) * 1000.0, reason="holder dead", ts=end,
    )  # fmt: skip


# --- learning from refusals --------------------------------------------------------------------


def test_reports_record_the_cooldown_its_extension_and_its_end_when_next_claimed(
    open_limiter: Callable[..., Any],
    clock: FakeClock,
    database: Path | str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    general = []  # claims that took the general path
    decide_first = _claim._decide_first

    def spy(*args: Any, **kwargs: Any) -> Any:
        general.append(args[1].primary)
        return decide_first(*args, **kwargs)

    monkeypatch.setattr(_claim, "_decide_first", spy)
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5)
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    lease.report_rate_limited(30)
    cooling = {"provider": "zai", "model": "glm-5", "cooldown_kind": "rate_limited"}
    reported = {**cooling, "reason": "reported rate limited"}
    until = near(database, t0 + 30)
    assert events(database) == [
        event("cooldown_started", **reported, until_ts=until, ts=near(database, t0)),
        event("rate_limited", **reported, until_ts=until, ts=near(database, t0)),
    ]
    clock.advance(5)
    lease.report_rate_limited(10)  # within the cooldown: it stays
    lease.report_rate_limited(100)  # beyond it: extended
    lease.release()
    assert events(database)[2:4] == [
        event("rate_limited", **reported, until_ts=until, ts=near(database, t0 + 5)),
        event(
            "rate_limited", **reported, until_ts=near(database, t0 + 105),
            ts=near(database, t0 + 5),
        ),
    ]  # fmt: skip
    # A cooldown ends at the report's own time plus its delay (exact on both databases).
    first, _, again, extending = events(database)[:4]
    assert (first["until_ts"], again["until_ts"]) == (first["ts"] + 30, first["ts"] + 30)
    assert extending["until_ts"] == extending["ts"] + 100
    assert kinds(database)[4:] == ["released"]
    extended = events(database)[3]["until_ts"]

    clock.advance(101)  # the cooldown ended at t0 + 105: nothing is written then
    assert len(events(database)) == 5
    general.clear()
    limiter.acquire(GLM5).release()
    assert general == [GLM5]
    assert events(database)[5] == event("cooldown_ended", **cooling, ts=extended)
    assert kinds(database)[6:] == ["released"]
    # What keeps a model off the one-statement path is gone (the last report's time stays).
    learned = (
        "effective_limit, cooldown_until_at, cooldown_until_ts, cooldown_kind, cooldown_reason"
    )
    assert rows(database, f"SELECT {learned} FROM models WHERE model = 'glm-5'") == [(None,) * 5]
    general.clear()
    limiter.acquire(GLM5).release()  # the one-statement path again, and no second end
    assert general == []
    assert kinds(database)[5:] == ["cooldown_ended", "released", "released"]


def test_a_report_after_an_unrecorded_cooldown_end_records_that_end_first(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5)
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    lease.report_rate_limited(10, quota=False, reason="HTTP 429")
    clock.advance(12)  # ended at t0 + 10, and no claim on the model since
    lease.report_rate_limited(20, reason="HTTP 429 again")
    where = {"provider": "zai", "model": "glm-5", "cooldown_kind": "rate_limited"}
    later = {**where, "reason": "HTTP 429 again", "until_ts": near(database, t0 + 32)}
    assert events(database)[2:] == [
        event("cooldown_ended", **where, ts=events(database)[0]["until_ts"]),
        event("cooldown_started", **later, ts=near(database, t0 + 12)),
        event("rate_limited", **later, ts=near(database, t0 + 12)),
    ]
    lease.release()


def test_an_adaptive_report_and_the_full_recovery_record_limit_changes(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    three = make_config(
        collaboration={"max_agents": 10},
        models=[{"name": "glm-5", "concurrency_limit": 3}],
        providers=[{"name": "zai", "models": ["glm-5"]}],
        limiter={"adaptive": True, "adaptive_recover_secs": 60},
    )
    limiter = open_limiter(three)
    held = [limiter.acquire(GLM5) for _ in range(3)]
    t0 = start(database, clock, "SELECT min(acquired_ts) FROM leases")
    assert held[0].report_rate_limited(1).effective_limit == 2
    where = {"provider": "zai", "model": "glm-5"}
    assert events(database) == [
        event(
            "cooldown_started", **where, cooldown_kind="rate_limited",
            until_ts=near(database, t0 + 1), reason="reported rate limited", ts=near(database, t0),
        ),
        event(
            "rate_limited", **where, cooldown_kind="rate_limited",
            until_ts=near(database, t0 + 1), reason="reported rate limited", ts=near(database, t0),
        ),
        event(
            "limit_changed", **where, limit_before=3, limit_after=2,
            reason="adaptive: lowered after rate_limited", ts=near(database, t0),
        ),
    ]  # fmt: skip
    for lease in held:
        lease.release()
    clock.advance(90)  # one recovery step (60 s): back at the configured 3
    limiter.acquire(GLM5).release()
    assert events(database)[6:8] == [
        event(
            "limit_changed", **where, limit_before=2, limit_after=3,
            reason="adaptive limit recovered", ts=near(database, t0 + 90),
        ),
        event(
            "cooldown_ended", **where, cooldown_kind="rate_limited",
            ts=events(database)[0]["until_ts"],
        ),
    ]  # fmt: skip
    assert kinds(database)[8:] == ["released"]
    assert rows(database, "SELECT effective_limit, cooldown_until_ts FROM models") == [(None, None)]


def test_a_report_after_an_unrecorded_full_recovery_records_that_recovery_first(
    open_sync_limiter: Callable[..., Limiter], clock: FakeClock, database: Path | str
) -> None:
    three = make_config(
        collaboration={"max_agents": 10},
        models=[{"name": "glm-5", "concurrency_limit": 3}],
        providers=[{"name": "zai", "models": ["glm-5"]}],
        limiter={"adaptive": True, "adaptive_recover_secs": 60},
    )
    limiter = open_sync_limiter(three)
    held = [limiter.acquire(GLM5) for _ in range(3)]
    held[0].report_rate_limited(1)  # 3 -> 2
    clock.advance(90)  # one step: back at 3, and no claim since to notice
    held[0].report_rate_limited(1)  # 3 -> 2 again
    try:
        limits = [
            (e["limit_before"], e["limit_after"])
            for e in events(database)
            if e["kind"] == "limit_changed"
        ]
        assert limits == [(3, 2), (2, 3), (3, 2)]
    finally:
        for lease in held:
            lease.release()


# --- configs -----------------------------------------------------------------------------------


def test_a_config_rewrite_records_the_model_limits_and_the_global_cap_it_changed(
    open_sync_limiter: Callable[..., Limiter], clock: FakeClock, database: Path | str
) -> None:
    open_sync_limiter(config())
    assert events(database) == []  # a first config changes nothing
    models = [{"name": "glm-5", "concurrency_limit": 3}, *SMALL["models"][1:]]
    changed = make_config(**dict(SMALL, models=models, collaboration={"max_agents": 7}))
    open_sync_limiter(changed)
    written = events(database)
    ts = written[0]["ts"]
    if isinstance(database, Path):
        assert ts == clock.now
    assert written == [
        event(
            "limit_changed", provider="zai", model="glm-5", limit_before=1, limit_after=3,
            reason="config", ts=ts,
        ),
        event(
            "limit_changed", limit_before=10, limit_after=7,
            reason="max_agents of <config built in code>", ts=ts,
        ),
    ]  # fmt: skip
    open_sync_limiter(changed)  # the same config again: nothing written
    assert len(events(database)) == 2


def test_a_config_rewrite_records_an_adaptive_limit_it_drops(
    open_sync_limiter: Callable[..., Limiter], database: Path | str
) -> None:
    def three(max_agents: int) -> Any:
        return make_config(
            collaboration={"max_agents": max_agents},
            models=[{"name": "glm-5", "concurrency_limit": 3}],
            providers=[{"name": "zai", "models": ["glm-5"]}],
            limiter={"adaptive": True},
        )

    limiter = open_sync_limiter(three(10))
    held = [limiter.acquire(GLM5) for _ in range(3)]
    assert held[0].report_rate_limited(600).effective_limit == 2
    assert kinds(database) == ["cooldown_started", "rate_limited", "limit_changed"]
    open_sync_limiter(three(9))  # the same limit of 3: only the adaptive 2 is dropped
    changed = events(database)[3:]
    assert [(e["provider"], e["model"], e["limit_before"], e["limit_after"]) for e in changed] == [
        ("zai", "glm-5", 2, 3),
        (None, None, 10, 9),
    ]
    assert [e["reason"] for e in changed] == ["config", "max_agents of <config built in code>"]
    for lease in held:
        lease.release()


# --- closing -----------------------------------------------------------------------------------


def test_closing_a_limiter_records_its_lease_released_and_its_ticket_cancelled(
    open_limiter: Callable[..., Any], clock: FakeClock, database: Path | str
) -> None:
    limiter = open_limiter(config())
    lease = limiter.acquire(GLM5, holder="kept")
    t0 = start(database, clock, "SELECT acquired_ts FROM leases")
    clock.advance(1.5)
    waiting = Background(lambda: limiter.acquire_wait(GLM5, holder="queued"))
    ticket = one_ticket(database)
    clock.advance(2.5)
    limiter.close()
    with pytest.raises(LimiterClosedError):
        waiting.result()
    assert events(database) == [
        event(
            "queued", provider="zai", model="glm-5", ticket_id=ticket, **here("queued"),
            waited_ms=0.0, ts=near(database, t0 + 1.5),
        ),
        event(
            "released", **on(GLM5), via="primary", lease_id=lease.id, **here("kept"),
            acquired_ts=t0, waited_ms=0.0, held_ms=near_ms(database, 4000.0), reason=CLOSED,
            ts=near(database, t0 + 4.0),
        ),
        event(
            "cancelled", **on(GLM5), ticket_id=ticket, **here("queued"),
            waited_ms=near_ms(database, 2500.0), reason=CLOSED, ts=near(database, t0 + 4.0),
        ),
    ]  # fmt: skip
    assert rows(database, "SELECT count(*) FROM leases") == [(0,)]
