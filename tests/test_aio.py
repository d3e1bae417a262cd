"""What only the asyncio face has: async-with only, cancellation safety, many tasks, loop lag;
on every backend (a SQLite file, a PostgreSQL group)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collet_limiter import (
    AcquireTimeout,
    AsyncContextError,
    AsyncLease,
    AsyncLimiter,
    Config,
    Limiter,
    ModelKey,
)

from .conftest import fresh_group, make_config
from .sql import rows

if TYPE_CHECKING:
    from pathlib import Path

    from .conftest import FakeClock

ONE = make_config(models=[{"name": "m", "concurrency_limit": 1}])
# On PostgreSQL a transaction's time is the server's clock plus how far the fake clock moved
# beyond this host's since the limiter's first transaction: two transactions' times differ from
# the fake clock's by the difference in how long each took from reading the server's clock to
# reading this host's (tens of microseconds; 50 ms leaves room for a loaded machine and is half
# the 0.1 s the heartbeat test tells apart).
SERVER_CLOCK_SLACK = 0.05


def victims(database: Path | str) -> int:
    return int(rows(database, "select count(*) from leases where holder = 'victim'")[0][0])  # type: ignore[call-overload]


def waiters(database: Path | str) -> int:
    return int(rows(database, "select count(*) from waiters")[0][0])  # type: ignore[call-overload]


def fast(database: Path | str, config: Config = ONE, **kwargs: Any) -> AsyncLimiter:
    kwargs.setdefault("poll_interval", 0.002)
    kwargs.setdefault("max_poll_interval", 0.05)
    return AsyncLimiter(database, config=config, **kwargs)


def test_plain_with_says_to_use_async_with(database: Path | str) -> None:
    async def main() -> None:
        limiter = fast(database)
        message = "AsyncLimiter must be used with 'async with'"
        with pytest.raises(AsyncContextError, match=message), limiter:  # type: ignore[attr-defined]
            pass
        async with limiter:
            message = r"acquire\(\) must be used with 'async with'"
            with pytest.raises(AsyncContextError, match=message), limiter.acquire("p/m"):  # type: ignore[attr-defined]
                pass
            lease = await limiter.acquire("p/m")
            message = "AsyncLease must be used with 'async with'"
            with pytest.raises(TypeError, match=message), lease:  # type: ignore[attr-defined]
                pass
            await lease.release()

    asyncio.run(main())


def test_acquire_is_awaitable_and_an_async_context_manager(database: Path | str) -> None:
    async def main() -> None:
        async with fast(database) as limiter:
            async with limiter.acquire("p/m", holder="t") as lease:
                assert isinstance(lease, AsyncLease) and lease.holder == "t"
                assert [info.key for info in await limiter.leases()] == [ModelKey("p", "m")]
            assert lease.released and await limiter.leases() == []
            lease = await limiter.acquire("p/m")
            async with lease:
                pass
            assert await limiter.leases() == []

    asyncio.run(main())


def test_a_task_cancelled_while_queued_removes_its_ticket(database: Path | str) -> None:
    async def main() -> None:
        async with fast(database) as limiter:
            held = await limiter.acquire("p/m")
            task = asyncio.ensure_future(limiter.acquire_wait("p/m"))
            while not await limiter.waiters():
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await limiter.waiters() == []
            await held.release()

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_asyncio_timeout_around_acquire_works(database: Path | str) -> None:
    async def main() -> None:
        async with fast(database) as limiter:
            held = await limiter.acquire("p/m")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):  # type: ignore[attr-defined]
                    _held1 = await limiter.acquire("p/m")
            assert await limiter.waiters() == []
            assert [info.id for info in await limiter.leases()] == [held.id]

    asyncio.run(main())


def test_acquire_wait_timeout_raises_acquire_timeout(database: Path | str) -> None:
    async def main() -> None:
        async with fast(database) as limiter:
            _held2 = await limiter.acquire("p/m")
            with pytest.raises(AcquireTimeout, match="no permit for p/m within 0.05s"):
                _held3 = await limiter.acquire_wait("p/m", timeout=0.05)
            assert await limiter.waiters() == []

    asyncio.run(main())


# ``backend`` is function-scoped but only names the backend, the same for every example; each
# example makes its own fresh database.
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(delay=st.floats(min_value=0, max_value=0.02), contended=st.booleans())
def test_cancelling_acquire_at_any_point_never_strands_a_lease(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    delay: float,
    contended: bool,
) -> None:
    """Cancel at a hypothesis-chosen moment: either the caller got the lease, or nothing is left."""
    database: Path | str = (
        tmp_path_factory.mktemp("cancel") / "limiter.db"
        if backend == "sqlite"
        else fresh_group(request.getfixturevalue("pg_server"))
    )

    async def main() -> None:
        async with fast(database) as limiter:
            blocker = await limiter.acquire("p/m") if contended else None
            if blocker is not None:
                asyncio.get_running_loop().call_later(
                    delay / 2, lambda: asyncio.ensure_future(blocker.release())
                )
            task = asyncio.ensure_future(limiter.acquire("p/m", holder="victim"))
            await asyncio.sleep(delay)
            task.cancel()
            lease = None
            with contextlib.suppress(asyncio.CancelledError):
                lease = await task
            # A shielded cleanup may still be running: wait for the one state allowed (a
            # stranded lease or ticket never leaves while the limiter is open).
            left = (1 if lease is not None else 0, 0)
            deadline = time.monotonic() + 10
            while (victims(database), waiters(database)) != left:
                assert time.monotonic() < deadline, (victims(database), waiters(database), left)
                await asyncio.sleep(0.005)
            if lease is not None:
                await lease.release()

    asyncio.run(main())


@pytest.mark.parametrize(
    "count", [300, pytest.param(1000, marks=pytest.mark.slow)], ids=["ci", "full"]
)
def test_many_tasks_over_three_models_keep_the_limits(
    database: Path | str, capsys: pytest.CaptureFixture[str], count: int
) -> None:
    """Every task finishes and the limits hold; the loop lag is measured and printed (CI runs
    300 tasks; the full run, 1,000, took about 28 s per backend there).

    Lag is how late a 1 ms sleep wakes up. CPython's full (generation 2) garbage collections
    also stop the loop; they are timed separately, since they are the interpreter's, not ours.
    """
    limits = {"a": 3, "b": 2, "c": 4}
    config = make_config(
        collaboration={"max_agents": 8},
        models=[{"name": name, "concurrency_limit": limit} for name, limit in limits.items()],
    )
    holding = dict.fromkeys(limits, 0)
    peak = dict.fromkeys(limits, 0)
    lags: list[float] = []
    collections: list[float] = []
    started_gc: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started_gc.append(time.perf_counter())
        elif info["generation"] == 2 and started_gc:
            collections.append(time.perf_counter() - started_gc[-1])

    async def monitor(stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    async def main() -> float:
        async with fast(database, config, max_poll_interval=0.25) as limiter:
            stop = asyncio.Event()
            watch = asyncio.ensure_future(monitor(stop))

            async def task(index: int) -> None:
                model = "abc"[index % 3]
                async with limiter.acquire(f"p/{model}", holder=str(index)) as lease:
                    assert lease.key.model == model  # no fallback configured: queue for it
                    holding[model] += 1
                    peak[model] = max(peak[model], holding[model])
                    await asyncio.sleep(0.002)
                    holding[model] -= 1

            started = time.perf_counter()
            await asyncio.gather(*(task(i) for i in range(count)))
            elapsed = time.perf_counter() - started
            stop.set()
            await watch
            assert await limiter.leases() == []
            assert await limiter.waiters() == []
            return elapsed

    gc.callbacks.append(on_gc)
    try:
        elapsed = asyncio.run(main())
    finally:
        gc.callbacks.remove(on_gc)
    assert all(1 <= peak[m] <= limits[m] for m in limits), peak
    lags.sort()
    with capsys.disabled():
        print(
            f"\n{count} tasks over 3 models: {elapsed:.1f} s; loop lag p50 {lags[len(lags) // 2] * 1e3:.2f} ms, "
            f"p99 {lags[int(len(lags) * 0.99)] * 1e3:.2f} ms, max {lags[-1] * 1e3:.1f} ms; "
            f"{len(collections)} full GCs, longest {max(collections, default=0) * 1e3:.1f} ms"
        )


def test_one_heartbeat_thread_per_limiter_however_many_leases(database: Path | str) -> None:
    """The first lease starts the heartbeat (a thread, so a blocked loop cannot stop it); the
    next fifteen start no thread and no task."""

    async def main() -> None:
        async with fast(database, make_config(collaboration={"max_agents": 20})) as limiter:
            # A server's transactions never run on the loop but on the runtime's worker thread,
            # which the first one starts: start it before counting (on SQLite this runs inline).
            await limiter.reap()
            threads = threading.active_count()
            first = await limiter.acquire("p/x")
            assert threading.active_count() == threads + 1
            threads = threading.active_count()
            tasks = len(asyncio.all_tasks())
            more = [await limiter.acquire(f"p/m{i}") for i in range(15)]
            assert len(asyncio.all_tasks()) == tasks
            assert threading.active_count() == threads
            for lease in [first, *more]:
                await lease.release()

    asyncio.run(main())


def test_the_heartbeat_renews_async_leases(database: Path | str, clock: FakeClock) -> None:
    """Expiry follows the fake clock, so a late heartbeat on a loaded machine loses nothing;
    the test waits for the renewal itself (heartbeats come every TTL/3 = 0.1 s)."""

    async def main() -> None:
        async with fast(database, lease_ttl=0.3, clock=clock) as limiter:
            lease = await limiter.acquire("p/m")
            first_expiry = lease.expires_at
            clock.advance(0.2)
            deadline = time.monotonic() + 30
            while lease.expires_at == first_expiry:
                assert time.monotonic() < deadline, "no heartbeat renewed the lease in 30 s"
                await asyncio.sleep(0.01)
            # The renewal counts the TTL from the (fake) time it ran, not from the old expiry
            # (which would make it 0.3).
            renewed_by = (lease.expires_at - first_expiry).total_seconds()
            slack = SERVER_CLOCK_SLACK if isinstance(database, str) else None
            assert renewed_by == pytest.approx(0.2, abs=slack)
            assert not lease.lost
            (info,) = await limiter.leases()
            assert info.expires_at == lease.expires_at

    asyncio.run(main())


def test_sync_and_async_waiters_share_one_fifo_queue(database: Path | str) -> None:
    with Limiter(database, config=ONE, poll_interval=0.002) as sync_limiter:
        held = sync_limiter.acquire("p/m")
        order: list[str] = []

        def sync_waiter() -> None:
            with sync_limiter.acquire_wait("p/m", timeout=30):
                order.append("sync")
                time.sleep(0.02)

        async def main() -> None:
            async with fast(database) as limiter:
                task = asyncio.ensure_future(limiter.acquire_wait("p/m", timeout=30))
                while len(await limiter.waiters()) < 1:
                    await asyncio.sleep(0.001)
                thread = threading.Thread(target=sync_waiter)
                thread.start()
                while len(await limiter.waiters()) < 2:
                    await asyncio.sleep(0.001)
                await asyncio.get_running_loop().run_in_executor(None, held.release)
                lease = await task
                order.append("async")
                await asyncio.sleep(0.02)
                await lease.release()
                await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)

        asyncio.run(main())
        assert order == ["async", "sync"]
