"""The runtime both faces share: the defects a review found, each forced to happen for real.

The interleavings are forced with real locks held by the test (``flock`` on ``<db>.lock``, or a
PostgreSQL group's advisory lock) or a trace function that stops a thread at a known call, and
observed through ``/proc``, ``pg_locks`` and the database itself. All but two failed on the
two-copy code before the runtime: the close race and the forked async child passed there too
(the window the review found lay between the closed check and the turn to write, which no
longer exist apart). Those about SQLite files (the lock file, a replaced file, datagram
wake-ups) run on SQLite only; the others on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import (
    AcquireTimeout,
    AsyncLimiter,
    Limiter,
    LimiterClosedError,
    LimiterError,
    SchemaVersionError,
    _wake,
)
from collet_limiter._engine import data_version

from .conftest import make_config
from .flocks import flock_waiters
from .sql import execute, pg_connect, rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ONE = make_config(collaboration={"max_agents": 10}, models=[{"name": "m", "concurrency_limit": 1}])
# The same with a minute-long backstop poll: a waiter woken in time was woken by a push.
PUSH_ONLY = make_config(
    collaboration={"max_agents": 10},
    models=[{"name": "m", "concurrency_limit": 1}],
    limiter={"poll_interval_ms": 60_000, "max_poll_interval_ms": 60_000},
)


def wait_for(predicate: Callable[[], bool], seconds: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not in time: {what}"
        time.sleep(0.002)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@contextlib.contextmanager
def writer_lock_held(database: Path | str) -> Iterator[None]:
    """Hold the writer lock as another writer would: every write of the limiter waits for us.

    A SQLite file's is ``<db>.lock``; a PostgreSQL group's, its advisory lock, taken here for
    the session of a connection of our own.
    """
    if isinstance(database, str):
        from collet_limiter._engine import resolve_target

        with pg_connect(database) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (resolve_target(database).lock_key,))
            yield  # closing the connection drops the lock
        return
    fd = os.open(f"{database}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def waits_for_writer_lock(database: Path | str) -> bool:
    """Whether this process (SQLite) or a connection (PostgreSQL) waits for the writer lock."""
    if isinstance(database, Path):
        return os.getpid() in flock_waiters(database.with_name(database.name + ".lock"))
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    return rows(database, query) != [(0,)]


def innermost(thread: threading.Thread) -> str:
    """The name of the Python function ``thread`` is in now."""
    frame = sys._current_frames().get(thread.ident or -1)
    return frame.f_code.co_name if frame is not None else ""


def test_close_racing_an_acquire_leaves_no_row_and_the_acquire_says_closed(
    database: Path | str,
) -> None:
    """The acquire is past its closed check, in its turn to write (stopped by a trace function
    as it checks whether the file was replaced, or on PostgreSQL as it begins the transaction),
    when close() runs: it must not write after close gave the rows back, nor use the closed
    writer-lock descriptor."""
    from collet_limiter._core import Core
    from collet_limiter._runtime import Runtime

    limiter = Limiter(database, config=ONE)
    paused, resume = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    got: list[Any] = []
    stop_at = Core.file_replaced if isinstance(database, Path) else Runtime._retrying
    target = stop_at.__code__

    def pause(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is target and not paused.is_set():
            paused.set()
            resume.wait(60)
        return None

    def acquire() -> None:
        sys.settrace(pause)
        try:
            got.append(limiter.acquire("p/m"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=acquire)
    thread.start()
    assert paused.wait(30)
    closer = threading.Thread(target=limiter.close)
    closer.start()
    # close() either finishes, or waits for the acquire's turn to write to end.
    wait_for(lambda: not closer.is_alive() or innermost(closer) == "close", what="close ran")
    resume.set()
    thread.join(30)
    closer.join(30)
    assert not thread.is_alive() and not closer.is_alive()
    assert not got
    assert len(errors) == 1 and isinstance(errors[0], LimiterClosedError), errors
    assert rows(database, "select count(*) from leases") == [(0,)]
    assert rows(database, "select count(*) from waiters") == [(0,)]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_failed_opens_leak_no_descriptor(database: Path | str, face: str) -> None:
    with Limiter(database, config=ONE):
        pass
    execute(database, "update alembic_version set version_num = 'from-the-future'")
    before = open_fds()

    def open_once() -> None:
        if face == "sync":
            Limiter(database, config=ONE)
        else:
            asyncio.run(AsyncLimiter(database, config=ONE).open())

    for _ in range(50):
        with pytest.raises(SchemaVersionError):
            open_once()
    gc.collect()
    assert open_fds() - before == set()


def test_a_process_with_more_than_1023_descriptors_is_still_woken_by_push(
    database: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    """select() fails above descriptor 1023; the watcher must keep working (poll)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip(f"the hard descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    padding = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(padding) > 1023
        config = PUSH_ONLY
        with (
            Limiter(database, config=config) as holder,
            Limiter(database, config=config) as waiter,
        ):
            lease = holder.acquire("p/m")
            got: list[Any] = []
            thread = threading.Thread(target=lambda: got.append(waiter.acquire_wait("p/m", 50)))
            thread.start()
            wait_for(lambda: len(waiter.waiters()) == 1)
            started = time.monotonic()
            lease.release()
            thread.join(60)
            # Only the push can wake it before its minute-long poll.
            assert got and time.monotonic() - started < 20
            got[0].release()
    finally:
        for fd in padding:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "out of range" not in caplog.text


def test_a_lease_garbage_collected_unreleased_is_given_back_with_a_resource_warning(
    database: Path | str,
) -> None:
    with Limiter(database, config=ONE) as limiter:
        lease = limiter.acquire("p/m")
        assert rows(database, "select count(*) from leases") == [(1,)]
        with pytest.warns(ResourceWarning, match="garbage-collected without release"):
            del lease  # the last reference: collected at once
        query = "select count(*) from leases"
        wait_for(lambda: rows(database, query) == [(0,)], what="given back")
        limiter.acquire("p/m", timeout=5).release()  # the slot is free again


def test_a_limiter_dropped_without_close_stops_its_threads_and_closes_its_descriptors(
    database: Path | str,
) -> None:
    before_fds = open_fds()
    before_threads = set(threading.enumerate())
    limiter = Limiter(database, config=ONE)
    lease = limiter.acquire("p/m")
    lease.release()
    assert set(threading.enumerate()) - before_threads  # its heartbeat runs
    del limiter, lease
    gc.collect()
    wait_for(lambda: not set(threading.enumerate()) - before_threads, what="threads stopped")
    wait_for(lambda: not open_fds() - before_fds, what="descriptors closed")


def test_an_os_error_from_checking_the_file_is_a_limiter_error(tmp_path: Path) -> None:
    """The replaced-file check stats the path; ELOOP (a directory swapped for a symlink loop)
    must come out as a LimiterError, not an OSError of the os module. SQLite only: a file."""
    home = tmp_path / "d"
    home.mkdir()
    db = home / "limiter.db"
    with Limiter(db, config=ONE) as limiter:
        home.rename(tmp_path / "moved")
        home.symlink_to(home)  # d -> d: every lookup through it loops
        with pytest.raises(LimiterError) as info:
            limiter.acquire("p/m")
        assert "loop" in str(info.value).lower() or "symbolic" in str(info.value).lower()
        home.unlink()
        (tmp_path / "moved").rename(home)


def test_a_claim_waiting_for_its_turn_while_the_file_is_replaced_lands_in_the_new_file(
    db: Path,
) -> None:
    """SQLite only: the database file is deleted under the waiting claim."""
    with Limiter(db, config=ONE) as limiter:
        limiter.acquire("p/m").release()  # opened, the lock file exists
        got: list[Any] = []
        with writer_lock_held(db):
            thread = threading.Thread(target=lambda: got.append(limiter.acquire("p/m")))
            thread.start()
            wait_for(lambda: os.getpid() in flock_waiters(db.with_name(db.name + ".lock")))
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{db}{suffix}")
        thread.join(30)
        assert got, "the acquire finished"
        assert rows(db, "select token from leases") == [(got[0].token,)]
        got[0].release()


def test_keyboard_interrupt_right_after_a_fallback_claim_committed_leaves_no_lease(
    database: Path | str,
) -> None:
    """The interrupt lands between the claim's commit and the lease's hand-over (forced with a
    trace function that raises it when the lease object is built)."""
    from collet_limiter._lease import BaseLease

    target = BaseLease.__init__.__code__

    def interrupt(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is target:
            sys.settrace(None)
            raise KeyboardInterrupt
        return None

    with Limiter(database, config=ONE) as limiter:
        sys.settrace(interrupt)
        try:
            with pytest.raises(KeyboardInterrupt):
                limiter.acquire_with_fallback("p/m")
        finally:
            sys.settrace(None)
        assert rows(database, "select count(*) from leases") == [(0,)]
        limiter.acquire("p/m", timeout=0).release()


def test_wake_ups_are_sent_after_the_writer_lock_is_given_up(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite only: datagram wake-ups and ``<db>.lock`` (PostgreSQL's NOTIFY is sent in the
    freeing transaction, by design)."""
    lock_path = f"{db}.lock"
    free_when_sent: list[bool] = []
    send = _wake._sender.send

    def observing_send(targets: Any) -> None:
        targets = list(targets)
        if targets:
            fd = os.open(lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                free_when_sent.append(True)
            except BlockingIOError:
                free_when_sent.append(False)
            finally:
                os.close(fd)
        send(targets)

    with Limiter(db, config=ONE) as holder, Limiter(db, config=ONE) as waiter:
        lease = holder.acquire("p/m")
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(waiter.acquire_wait("p/m", 30)))
        thread.start()
        wait_for(lambda: len(holder.waiters()) == 1)
        monkeypatch.setattr(_wake._sender, "send", observing_send)
        lease.release()
        thread.join(30)
        monkeypatch.undo()
        got[0].release()
    assert free_when_sent and all(free_when_sent), free_when_sent


def test_an_async_lease_survives_an_event_loop_blocked_longer_than_its_ttl(
    database: Path | str,
) -> None:
    """A synchronous call inside a coroutine blocks the loop for 2.5 TTLs: the heartbeat is a
    thread, so the lease is renewed and another limiter is never granted the slot meanwhile."""
    ttl = 0.6
    stop = threading.Event()
    intruders: list[str] = []

    def contend() -> None:
        with Limiter(database, config=ONE, lease_ttl=ttl) as other:
            while not stop.is_set():
                result = other.acquire_with_fallback("p/m")
                if not hasattr(result, "reason"):
                    intruders.append(str(result))
                    result.lease.release()  # type: ignore[union-attr]
                time.sleep(0.01)

    async def main() -> bool:
        async with AsyncLimiter(database, config=ONE, lease_ttl=ttl) as limiter:
            lease = await limiter.acquire("p/m")
            thread = threading.Thread(target=contend)
            thread.start()
            time.sleep(2.5 * ttl)
            stop.set()
            thread.join(30)
            lost = lease.lost
            await lease.release()
            return lost

    assert asyncio.run(main()) is False
    assert intruders == []


def test_an_async_limiter_left_open_at_exit_gives_its_rows_back(database: Path | str) -> None:
    code = textwrap.dedent(f"""
        import asyncio
        from collet_limiter import AsyncLimiter, Config
        async def main():
            limiter = AsyncLimiter({str(database)!r}, config=Config())
            global lease
            lease = await limiter.acquire("p/m")
            print("HELD", flush=True)
        asyncio.run(main())
    """)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "HELD" in result.stdout
    assert rows(database, "select count(*) from leases") == [(0,)]


def test_a_forked_child_uses_its_async_limiter_afresh(database: Path | str) -> None:
    async def hold() -> Any:
        limiter = AsyncLimiter(database, config=make_config(
            collaboration={"max_agents": 10},
            models=[{"name": "m", "concurrency_limit": 1}, {"name": "n", "concurrency_limit": 1}],
        ))  # fmt: skip
        return limiter, await limiter.acquire("p/m")

    loop = asyncio.new_event_loop()
    limiter, lease = loop.run_until_complete(hold())
    pid = os.fork()
    if pid == 0:  # the child: a new loop, the same limiter object
        code = 1
        try:

            async def child() -> None:
                with pytest.raises(AcquireTimeout):  # the parent's lease still counts
                    await limiter.acquire_wait("p/m", timeout=0)
                other = await limiter.acquire("p/n", timeout=5)
                await other.release()
                await limiter.close()

            asyncio.run(child())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not lease.released and rows(database, "select count(*) from leases") == [(1,)]
    loop.run_until_complete(lease.release())
    loop.run_until_complete(limiter.close())
    loop.close()


def test_a_cancelled_async_acquire_waiting_for_the_writer_lock_leaves_nothing(
    database: Path | str,
) -> None:
    """The transaction cannot start inline (another process holds the writer lock; on
    PostgreSQL it never does), so it runs on the worker; the task is cancelled meanwhile and
    must not leave a lease or a ticket."""

    async def main() -> None:
        async with AsyncLimiter(database, config=ONE) as limiter:
            with writer_lock_held(database):
                task = asyncio.ensure_future(limiter.acquire("p/m"))
                while not waits_for_writer_lock(database):
                    await asyncio.sleep(0.002)
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert rows(database, "select count(*) from leases") == [(0,)]
            assert rows(database, "select count(*) from waiters") == [(0,)]

    asyncio.run(main())


def test_the_acquire_loop_is_written_once() -> None:
    """Neither face implements claiming, queueing or undoing itself: both run the runtime's
    steps (a guard against the two copies coming back)."""
    import inspect

    from collet_limiter import _aio, _limiter

    for module in (_aio, _limiter):
        source = inspect.getsource(module)
        assert "acquire_steps(" in source
        for private in ("core.claim(", "core.discard(", "with_ticket(", "core.release("):
            assert private not in source, (module.__name__, private)


def test_a_waiter_cancelled_just_as_a_release_granted_it_gives_the_lease_on(
    database: Path | str,
) -> None:
    """A release grants the first waiter its lease in the release's own transaction; that
    waiter's task is cancelled before it runs again. Its lease must go to the next waiter
    (exactly one outcome: never leaked, never granted twice)."""
    config = PUSH_ONLY

    async def main() -> None:
        async with AsyncLimiter(database, config=config) as limiter:
            with (
                Limiter(database, config=config) as holder,
                Limiter(database, config=config) as behind,
            ):
                lease = holder.acquire("p/m")
                first = asyncio.ensure_future(limiter.acquire_wait("p/m"))
                while len(holder.waiters()) < 1:
                    await asyncio.sleep(0.001)
                second: list[Any] = []
                thread = threading.Thread(
                    target=lambda: second.append(behind.acquire_wait("p/m", 30))
                )
                thread.start()
                while len(holder.waiters()) < 2:
                    await asyncio.sleep(0.001)
                lease.release()  # on the loop's thread: the first task cannot run meanwhile
                granted = rows(database, "select holder, via from leases")
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                thread.join(30)
                assert granted == [(None, "queue")]  # the release granted the first waiter
                assert second and second[0].via == "queue"
                assert rows(database, "select token from leases") == [(second[0].token,)]
                second[0].release()

    asyncio.run(main())


def test_an_older_versions_ticket_is_woken_but_never_granted_by_a_release(
    database: Path | str,
) -> None:
    """Tickets queued by a collet-limiter before migration 0004 carry no lease token: a release
    must leave them queued (their waiter claims for itself) and still keep their place."""
    with Limiter(database, config=ONE) as limiter:
        lease = limiter.acquire("p/m")
        execute(  # what an older version writes
            database,
            "insert into waiters (token, provider, model, holder, pid, pid_start, host_id, "
            "hostname, owner, enqueued_at, expires_at, enqueued_ts, expires_ts, wake_addr) "
            "values ('old', 'p', 'm', 'older', 1, 0, 'x', 'h', 'o', '', '', 0, 1e12, null)",
        )
        lease.release()
        assert rows(database, "select count(*) from leases") == [(0,)]
        assert rows(database, "select holder from waiters") == [("older",)]
        with pytest.raises(AcquireTimeout):  # the older waiter keeps its place
            limiter.acquire_wait("p/m", timeout=0)


def test_the_backstop_looks_less_often_while_nothing_is_committed(tmp_path: Path) -> None:
    """A waiting process checks ``data_version`` every poll interval only while commits come:
    each check that finds none doubles the interval, up to the longest poll interval, and a
    commit brings it back (an idle waiter then costs about one check a second)."""
    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=make_config(), poll_interval=0.2, max_poll_interval=1.0)
    try:
        runtime = limiter._runtime
        watcher = runtime.watcher
        with runtime.connection() as conn:
            watcher.conn, watcher.version = conn, data_version(conn)
            watcher.looked = 1000.0  # the last look (monotonic seconds)
            seen = []
            for _ in range(4):  # nothing committed since: each check doubles the interval
                later = watcher.looked + watcher.backstop + 0.001
                assert not watcher._backstop(conn, later)
                seen.append(watcher.backstop)
            assert seen == [0.4, 0.8, 1.0, 1.0]
            assert not watcher._backstop(conn, watcher.looked + 0.5), "not due yet"
            assert watcher.backstop == 1.0
            limiter.acquire("zai/glm-5").release()  # a commit on another connection
            assert watcher._backstop(conn, watcher.looked + 1.0), "a commit: look"
            assert watcher.backstop == 0.2
    finally:
        limiter.close()


@pytest.mark.parametrize("through", ["driver", "core"])
def test_a_hot_transaction_that_raises_writes_nothing_and_leaves_the_connection_usable(
    tmp_path: Path, through: str
) -> None:
    """Claims, releases and discards run in the SQLite driver's own transaction; a statement
    inside may be the driver's or a Core one (SQLAlchemy then begins a transaction of its own
    on top). Either way an exception rolls everything back, and the next one commits."""
    from sqlalchemy import insert

    from collet_limiter._engine import hot_write_transaction
    from collet_limiter._schema import meta

    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=make_config())

    def write(conn: Any, key: str) -> None:
        if through == "driver":
            conn.connection.driver_connection.execute(
                "INSERT INTO meta (key, value) VALUES (?, '1')", (key,)
            )
        else:
            conn.execute(insert(meta).values(key=key, value="1"))

    def fail(conn: Any) -> None:
        with hot_write_transaction(conn):
            write(conn, "undone")
            raise RuntimeError("a failure inside the transaction")

    try:
        with limiter._runtime.connection() as conn:
            with pytest.raises(RuntimeError, match="inside the transaction"):
                fail(conn)
            assert not conn.in_transaction()
            assert not conn.connection.driver_connection.in_transaction
            with hot_write_transaction(conn):
                write(conn, "done")
            assert not conn.connection.driver_connection.in_transaction
        keys = rows(db, "SELECT key FROM meta WHERE key IN ('undone', 'done')")
        assert keys == [("done",)]
    finally:
        limiter.close()
