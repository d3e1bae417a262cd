"""The Limiter's rules on a real database (SQLite file, PostgreSQL group), in one process
(fake clock where time matters)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pytest

from collet_limiter import (
    Acquired,
    AcquireTimeout,
    Config,
    ConfigError,
    InvalidKeyError,
    LimiterClosedError,
    ModelKey,
    QueueWait,
)

from .conftest import SMALL, make_config
from .namespaces import NEW_NET_NAMESPACE, NEW_PID_NAMESPACE, needs_namespaces, worker
from .sql import SQLITE_ONLY, execute, rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from collet_limiter import Limiter

    from .conftest import FakeClock

    Open = Callable[..., Limiter]

# On PostgreSQL a transaction's time is the server's clock plus how far the fake clock moved
# beyond this host's since the limiter's first transaction: two transactions' times differ from
# the fake clock's by the difference in how long each took from reading the server's clock to
# reading this host's (tens of microseconds; 0.5 s leaves room for a loaded machine and is far
# below the seconds the renewal test tells apart).
SERVER_CLOCK_SLACK = 0.5

GLM5, GLM47, FLASH, SONNET = (
    ModelKey("zai", "glm-5"),
    ModelKey("zai", "glm-4.7"),
    ModelKey("zai", "glm-4.7-flash"),
    ModelKey("claude", "sonnet"),
)


def test_acquire_grants_the_primary_and_release_frees_it(
    open_limiter: Open, small_config: Config
) -> None:
    limiter = open_limiter(small_config)
    with limiter.acquire(GLM5, holder="agent-7") as lease:
        assert (lease.key, lease.primary, lease.via, lease.holder) == (
            GLM5,
            GLM5,
            "primary",
            "agent-7",
        )
        assert [info.key for info in limiter.leases()] == [GLM5]
    assert lease.released and limiter.leases() == []


def test_strings_are_accepted_for_keys_and_chains(open_limiter: Open, small_config: Config) -> None:
    limiter = open_limiter(small_config)
    first = limiter.acquire("zai/glm-5")
    second = limiter.acquire_with_fallback("zai/glm-5", "x/chain-a, junk")
    assert isinstance(second, Acquired) and second.lease.key == ModelKey("x", "chain-a")
    first.release()


def test_a_full_primary_falls_back_in_order_chain_capability_cli(
    open_limiter: Open, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        **{**SMALL, "models": [*SMALL["models"], {"name": "chain-a", "concurrency_limit": 1}]}
    )
    limiter = open_limiter(config)
    chain = [ModelKey("x", "chain-a")]
    caplog.set_level(logging.DEBUG, logger="collet_limiter")
    leases = []
    for _ in range(4):
        result = limiter.acquire_with_fallback(GLM5, chain)
        assert isinstance(result, Acquired)
        leases.append(result.lease)
    granted = [(str(lease.key), lease.via) for lease in leases]
    assert granted == [
        ("zai/glm-5", "primary"),
        ("x/chain-a", "chain"),
        ("zai/glm-4.7", "capability"),  # one tier down; glm-4.7-flash is two
        ("claude/sonnet", "cli"),
    ]
    result = limiter.acquire_with_fallback(GLM5, chain)
    assert result == QueueWait(GLM5, "full (1/1 held)")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("DEBUG", "zai/glm-5: primary not available (full (1/1 held))") in messages
    assert any(
        level == "INFO" and "falling back to claude/sonnet via cli" in text
        for level, text in messages
    )
    assert any(
        level == "WARNING" and "all 5 candidates exhausted" in text for level, text in messages
    )


def test_a_full_global_cap_returns_queue_wait_at_once(open_limiter: Open) -> None:
    limiter = open_limiter(make_config(collaboration={"max_agents": 2}))
    _held1 = limiter.acquire("a/x")
    _held2 = limiter.acquire("b/y")
    result = limiter.acquire_with_fallback("c/z", ["d/w"])
    assert isinstance(result, QueueWait) and result.key == ModelKey("c", "z")
    assert result.reason == "global cap full (2/2 held)"


def test_a_lease_holds_its_global_slot_until_released(open_limiter: Open) -> None:
    limiter = open_limiter(make_config(collaboration={"max_agents": 1}))
    lease = limiter.acquire("a/x")
    assert isinstance(limiter.acquire_with_fallback("b/y"), QueueWait)
    lease.release()
    assert isinstance(limiter.acquire_with_fallback("b/y"), Acquired)


def test_acquire_wait_times_out_and_leaves_no_ticket(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    limiter = open_limiter(small_config)
    _held3 = limiter.acquire(GLM5)
    started = time.monotonic()
    with pytest.raises(AcquireTimeout, match="no permit for zai/glm-5 within 0.1s") as info:
        _held4 = limiter.acquire_wait(GLM5, timeout=0.1)
    assert time.monotonic() - started >= 0.1
    assert isinstance(info.value, TimeoutError) and info.value.key == GLM5
    assert rows(database, "select count(*) from waiters") == [(0,)]
    with pytest.raises(AcquireTimeout):
        _held5 = limiter.acquire_wait(GLM5, timeout=0)
    assert rows(database, "select count(*) from waiters") == [(0,)]


def test_acquire_wait_does_not_fall_back(open_limiter: Open, small_config: Config) -> None:
    limiter = open_limiter(small_config)
    _held6 = limiter.acquire(GLM5)
    with pytest.raises(AcquireTimeout):
        _held7 = limiter.acquire_wait(GLM5, timeout=0.05)


def release_once_queued(database: Path | str, lease: Any) -> threading.Thread:
    """Release ``lease`` from a thread once a ticket is queued: the waiter found it held."""

    def release() -> None:
        wait_for(lambda: rows(database, "select count(*) from waiters") == [(1,)])
        lease.release()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def test_a_waiter_gets_the_slot_when_it_is_released(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    limiter, other = open_limiter(small_config), open_limiter(small_config)
    held = other.acquire(GLM5)
    releaser = release_once_queued(database, held)
    lease = limiter.acquire_wait(GLM5, timeout=30)
    releaser.join(30)
    assert (lease.key, lease.via) == (GLM5, "queue")
    assert held.released


def test_acquire_queues_for_the_primary_when_every_candidate_is_full(
    open_limiter: Open, database: Path | str
) -> None:
    limiter = open_limiter(make_config(models=[{"name": "m", "concurrency_limit": 1}]))
    held, _other = limiter.acquire("p/m"), limiter.acquire("q/m")
    releaser = release_once_queued(database, held)
    lease = limiter.acquire("p/m", ["q/m"], timeout=30)
    releaser.join(30)
    assert (str(lease.key), lease.via) == ("p/m", "queue")


def test_waiters_are_served_in_ticket_order(open_limiter: Open, small_config: Config) -> None:
    limiter = open_limiter(small_config)
    held = limiter.acquire(GLM5)
    order: list[int] = []
    threads = []
    for index in range(4):

        def wait(index: int = index) -> None:
            with limiter.acquire_wait(GLM5, timeout=10):
                order.append(index)
                time.sleep(0.01)

        thread = threading.Thread(target=wait)
        thread.start()
        threads.append(thread)
        while len(limiter.waiters()) < index + 1:
            time.sleep(0.002)
    held.release()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3]


# A waiter that cannot be woken by push and is held still after each release leaves the window in
# which a fresh request could steal the slot if fairness did not stop it. The waiter is a real
# process in its own network namespace (``unshare --net``): the abstract Unix socket its ticket
# names cannot be reached from here, so only its poll of ``PRAGMA data_version`` can wake it. It
# is stopped (SIGSTOP) while the test makes its fresh requests, then continued, and must be
# granted by its next poll. SQLite only: the waiter is cut off from its datagram wake socket, and
# stopped while it holds no ``<db>.lock``, which PostgreSQL (LISTEN/NOTIFY, advisory locks) lacks.
WAITER_POLL = 0.5  # seconds; the waiter's poll_interval and max_poll_interval


def _toml(data: dict[str, Any]) -> str:
    """The TOML of a config given as ``make_config`` keywords (tables and arrays of tables)."""
    lines = []
    for section, value in data.items():
        tables = [value] if isinstance(value, dict) else value
        for table in tables:
            lines.append(f"[{section}]" if isinstance(value, dict) else f"[[{section}]]")
            lines += [f"{key} = {json.dumps(item)}" for key, item in table.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _stopped_waiter_elsewhere(
    db: Path, config: dict[str, Any], key: str
) -> Iterator[Callable[[], list[str]]]:
    """A waiter for ``key`` in another network namespace, queued and then stopped.

    Yields a function that continues it and returns its ``GOT`` line, split; checks that the
    grant came within a poll interval or two (the bound leaves room for a loaded machine).
    """
    (db.parent / "waiter.toml").write_text(_toml(config))
    args = ("wait", "--db", str(db), "--config", str(db.parent / "waiter.toml"), "--model", key)
    poll = str(WAITER_POLL)
    timing = ("--timeout", "60", "--poll", poll, "--max-poll", poll, "--hold-ms", "0")
    with worker(*args, *timing, prefix=NEW_NET_NAMESPACE) as waiter:
        assert waiter.stdout is not None
        assert waiter.stdout.readline() == "QUEUING\n"
        wait_for(lambda: rows(db, "select count(*) from waiters") == [(1,)])
        ((address,),) = rows(db, "select wake_addr from waiters")
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe,
            pytest.raises(ConnectionRefusedError),  # no such socket in this namespace
        ):
            probe.sendto(b"", b"\0" + str(address).encode())
        # Stop it only while it holds no writer lock (else the fresh requests would wait on it).
        with open(db.with_name(db.name + ".lock"), "rb") as lock:
            wait_for(lambda: _try_flock(lock.fileno()))
            waiter.send_signal(signal.SIGSTOP)
            wait_for(lambda: _state(waiter.pid) == "T")
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

        def resume() -> list[str]:
            continued = time.monotonic_ns()
            waiter.send_signal(signal.SIGCONT)
            assert waiter.stdout is not None
            line = waiter.stdout.readline().split()
            assert line[:1] == ["GOT"], line
            assert (int(line[1]) - continued) / 1e9 < WAITER_POLL + 2.0
            assert waiter.wait(60) == 0
            return line[2:]

        try:
            yield resume
        finally:
            waiter.send_signal(signal.SIGCONT)  # so that a failed test's waiter can be killed


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _state(pid: int) -> str:
    """The state letter of process ``pid`` in ``/proc/PID/stat`` (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@SQLITE_ONLY
@needs_namespaces
def test_a_waiter_is_not_overtaken_by_a_fresh_request_as_primary_or_fallback(
    open_limiter: Open, small_config: Config, db: Path
) -> None:
    fresh = open_limiter(small_config, clock=time.time)  # the waiter's process keeps real time
    _held8 = fresh.acquire(GLM5)
    held = fresh.acquire(GLM47)
    with _stopped_waiter_elsewhere(db, SMALL, str(GLM47)) as resume:
        held.release()
        _held9 = fresh.acquire(
            FLASH
        )  # so that glm-4.7's own fallback (flash, one tier down) is full too
        # The release granted the slot to the waiter from its ticket (one write per handoff):
        # it holds it before it has even run again.
        assert fresh.explain(GLM47).candidates[0].reason == "full (1/1 held)"
        as_primary = fresh.acquire_with_fallback(GLM47)
        assert (
            isinstance(as_primary, Acquired) and as_primary.lease.key == SONNET
        )  # the CLI, not glm-4.7
        as_fallback = fresh.acquire_with_fallback(GLM5, [GLM47])
        assert as_fallback == QueueWait(GLM5, "full (1/1 held)")
        assert resume() == [str(GLM47), "queue"]


@SQLITE_ONLY
@needs_namespaces
def test_the_last_global_slot_goes_to_the_oldest_waiter_whose_model_has_room(
    open_limiter: Open, db: Path
) -> None:
    data = {"collaboration": {"max_agents": 2}}
    fresh = open_limiter(make_config(**data), clock=time.time)
    first = fresh.acquire("p/a")
    _held10 = fresh.acquire("p/b")
    with _stopped_waiter_elsewhere(db, data, "p/c") as resume:
        first.release()
        result = fresh.acquire_with_fallback("p/d")
        assert isinstance(result, QueueWait)
        assert result.reason == "global cap full (2/2 held)"  # the waiter was granted it
        assert resume() == ["p/c", "queue"]


def test_an_expired_lease_is_reclaimed_when_room_is_needed_and_its_holder_learns_it_is_lost(
    open_limiter: Open, small_config: Config, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    holder, taker = open_limiter(small_config, lease_ttl=30), open_limiter(small_config)
    lease = holder.acquire(GLM5)
    assert isinstance(taker.acquire_with_fallback(GLM5, [GLM47]), Acquired)  # glm-4.7 via chain
    clock.advance(29)
    assert taker.acquire_with_fallback(GLM5).lease.key != GLM5  # type: ignore[union-attr]
    clock.advance(2)  # past the TTL: the lease is reclaimable
    result = taker.acquire_with_fallback(GLM5)
    assert isinstance(result, Acquired) and result.lease.key == GLM5
    caplog.set_level(logging.WARNING, logger="collet_limiter")
    assert holder.renew() == [lease]
    assert lease.lost and lease.released
    assert "was lost" in caplog.text
    lease.release()  # a no-op: it must not release the new holder's lease
    assert [info.key for info in taker.leases()].count(GLM5) == 1


def test_renewal_extends_every_lease_of_the_limiter(
    open_limiter: Open, clock: FakeClock, database: Path | str
) -> None:
    limiter = open_limiter(lease_ttl=10)
    a, b = limiter.acquire("p/a"), limiter.acquire("p/b")
    acquired_expiry = a.expires_at  # the acquisition's time + 10
    clock.advance(8)
    assert limiter.renew() == []
    # Renewed 8 s (fake) after acquisition: the TTL counts from then. Relative, because on
    # PostgreSQL lease times are the server's clock (plus the fake clock's advance), not clock.now.
    renewed_by = (a.expires_at - acquired_expiry).total_seconds()
    slack = SERVER_CLOCK_SLACK if isinstance(database, str) else None
    assert renewed_by == pytest.approx(8, abs=slack)
    if isinstance(database, Path):  # the limiter's clock is the fake one
        assert a.expires_at.timestamp() == pytest.approx(clock.now + 10)
    assert {info.expires_at for info in limiter.leases()} == {a.expires_at, b.expires_at}
    clock.advance(8)  # 16 s after acquisition, but renewed at 8
    other = open_limiter(make_config(models=[{"name": "a", "concurrency_limit": 1}]))
    assert isinstance(other.acquire_with_fallback("p/a"), QueueWait)


def test_release_is_idempotent(open_limiter: Open) -> None:
    limiter = open_limiter()
    lease = limiter.acquire("p/a")
    lease.release()
    lease.release()
    assert limiter.leases() == []


def test_a_stale_handle_cannot_release_someone_elses_lease(
    open_limiter: Open, database: Path | str
) -> None:
    limiter = open_limiter()
    lease = limiter.acquire("p/a")
    execute(database, "update leases set token = 'someone-else'")
    lease.release()
    assert lease.lost
    assert rows(database, "select count(*) from leases") == [(1,)]


def test_close_releases_this_limiters_leases_and_tickets_only(open_limiter: Open) -> None:
    mine, theirs = open_limiter(), open_limiter()
    theirs_lease = theirs.acquire("p/a")
    _held11 = mine.acquire("p/b")
    _held12 = mine.acquire("p/c")
    mine.close()
    assert [info.id for info in theirs.leases()] == [theirs_lease.id]
    with pytest.raises(LimiterClosedError):
        _held13 = mine.acquire("p/a")
    mine.close()  # idempotent


def test_close_wakes_a_blocked_waiter(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    limiter = open_limiter(small_config)
    _held14 = limiter.acquire(GLM5)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            _held15 = limiter.acquire_wait(GLM5)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    while not limiter.waiters():
        time.sleep(0.002)
    limiter.close()
    thread.join(5)
    assert errors and isinstance(errors[0], LimiterClosedError)
    assert rows(database, "select count(*) from waiters") == [(0,)]


def test_the_tables_show_who_holds_what_to_a_plain_client(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    limiter = open_limiter(small_config)
    _held16 = limiter.acquire(GLM5, holder="agent-7")
    assert rows(database, "SELECT provider, model, pid, holder FROM leases") == [
        ("zai", "glm-5", os.getpid(), "agent-7")
    ]
    ((acquired_at, expires_at),) = rows(database, "SELECT acquired_at, expires_at FROM leases")
    assert str(acquired_at).endswith("Z") and "T" in str(expires_at)
    assert rows(database, "SELECT value FROM meta WHERE key = 'max_agents'") == [("10",)]


@SQLITE_ONLY
def test_the_connection_pragmas_took_effect(open_sync_limiter: Open) -> None:
    """SQLite only: pragmas are SQLite's connection settings."""
    from collet_limiter._engine import pragmas

    limiter = open_sync_limiter(make_config(limiter={"busy_timeout_ms": 1234}))
    with limiter._runtime.engine.connect() as conn:
        assert pragmas(conn) == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 1234}


def test_models_are_seeded_from_config_and_added_on_demand(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    limiter = open_limiter(small_config)
    seeded = rows(
        database,
        "select provider, model, concurrency_limit, cost_tier, supports_tool_use, is_cli, position from models order by position",
    )
    assert seeded == [
        ("zai", "glm-5", 1, "premium", 1, 0, 0),
        ("zai", "glm-4.7", 1, "standard", 1, 0, 1),
        ("zai", "glm-4.7-flash", 1, "cheap", 1, 0, 2),
        ("claude", "sonnet", 1, "standard", 1, 1, 3),
    ]
    _held17 = limiter.acquire("other/glm-5")
    assert rows(
        database, "select concurrency_limit, position from models where provider = 'other'"
    ) == [(1, None)]
    assert limiter.resolve_limit("other/glm-5") == 1
    assert limiter.resolve_limit("new/qwen-turbo") == 8


def test_the_last_config_written_is_what_every_process_obeys(
    open_limiter: Open, small_config: Config, database: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    first = open_limiter(small_config)
    _held18 = first.acquire("other/thing")
    caplog.set_level(logging.WARNING, logger="collet_limiter")
    changed = dict(
        SMALL,
        models=[
            {"name": "glm-5", "concurrency_limit": 2},
            {"name": "thing", "concurrency_limit": 7},
        ],
    )
    open_limiter(make_config(**changed))
    assert "held another config; wrote <config built in code>" in caplog.text
    assert first.resolve_limit(GLM5) == 2  # the first limiter reads the new row
    assert first.resolve_limit("other/thing") == 7  # rows added on demand are recomputed
    assert rows(database, "select value from meta where key = 'max_agents'") == [("10",)]
    _held19 = first.acquire(GLM5)
    assert isinstance(first.acquire_with_fallback(GLM5), Acquired)


def test_reopening_with_the_same_config_writes_nothing(
    open_limiter: Open, small_config: Config, database: Path | str
) -> None:
    open_limiter(small_config)
    before = rows(database, "select value from meta where key = 'config_written_at'")
    open_limiter(small_config)
    assert rows(database, "select value from meta where key = 'config_written_at'") == before


def test_explain_lists_every_candidate_with_a_reason(
    open_limiter: Open, small_config: Config
) -> None:
    limiter = open_limiter(small_config)
    _held20 = limiter.acquire(GLM5)
    explanation = limiter.explain(GLM5)
    assert [(str(c.key), c.via, c.has_room) for c in explanation.candidates] == [
        ("zai/glm-5", "primary", False),
        ("zai/glm-4.7", "capability", True),
        ("zai/glm-4.7-flash", "capability", False),
        ("claude/sonnet", "cli", True),
    ]
    assert explanation.choice is not None and explanation.choice.key == GLM47
    assert explanation.candidates[0].reason == "full (1/1 held)"
    assert "premium or one below" in explanation.candidates[2].reason


def test_bad_arguments_are_clear_errors(open_limiter: Open) -> None:
    limiter = open_limiter()
    with pytest.raises(InvalidKeyError, match="invalid primary model 'glm-5'"):
        _held21 = limiter.acquire("glm-5")
    with pytest.raises(ConfigError, match="timeout must be >= 0"):
        _held22 = limiter.acquire("p/m", timeout=-1)
    with pytest.raises(ConfigError, match="lease_ttl must be > 0"):
        open_limiter(lease_ttl=0)
    with pytest.raises(ConfigError, match="in-memory SQLite"):
        open_limiter(path="sqlite://")


def test_reprs_show_live_state(open_limiter: Open, database: Path | str, api: str) -> None:
    limiter = open_limiter()
    lease = limiter.acquire("p/m", holder="me")
    prefix = "" if api == "sync" else "Async"
    # A PostgreSQL URL is shown as SQLAlchemy renders it: its query percent-encoded.
    assert unquote(repr(limiter)) == f"<{prefix}Limiter {database} holding 1, waiting 0>"
    assert repr(lease) == f"<{prefix}Lease {lease.id} p/m via primary holder='me' held>"
    lease.release()
    assert repr(lease).endswith("released>")


def test_a_fork_child_neither_releases_nor_renews_the_parents_lease(
    open_sync_limiter: Open,
) -> None:
    limiter = open_sync_limiter()
    lease = limiter.acquire("p/m")
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            lease.release()  # inherited: stays the parent's
            child_lease = limiter.acquire("p/other")
            child_lease.release()
            limiter.close()  # releases only what the child holds
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [info.id for info in limiter.leases()] == [lease.id]
    assert not lease.released


@needs_namespaces
def test_leases_report_whether_their_holder_is_alive(
    open_limiter: Open, database: Path | str
) -> None:
    """A holder in another PID namespace (a real one) cannot be checked from here: None."""
    limiter = open_limiter(clock=time.time)  # the worker's leases are stamped with real time
    _held23 = limiter.acquire("p/a")
    hold = ("hold", "--db", str(database), "--model", "p/b")
    with worker(*hold, prefix=NEW_PID_NAMESPACE) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("HELD")
        assert [(info.key.model, info.holder_alive) for info in limiter.leases()] == [
            ("a", True),
            ("b", None),
        ]


def test_a_release_wakes_a_waiter_at_once_without_waiting_for_its_poll(
    open_limiter: Open, small_config: Config
) -> None:
    """The waiter polls every 30 s; only the pushed wake-up can explain a grant within 5 s."""
    waiter = open_limiter(small_config, poll_interval=30, max_poll_interval=30)
    holder = open_limiter(small_config)
    held = holder.acquire(GLM5)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire_wait(GLM5, timeout=20)))
    thread.start()
    while not holder.waiters():
        time.sleep(0.002)
    released = time.monotonic()
    held.release()
    thread.join(20)
    assert got and got[0].via == "queue"  # type: ignore[attr-defined]
    assert time.monotonic() - released < 5


@SQLITE_ONLY
def test_a_deleted_database_file_is_recreated_with_the_leases_still_held(
    open_limiter: Open, small_config: Config, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting the file under live holders must not let a fresh process over-admit (SQLite
    only: it is about the database file)."""
    holder = open_limiter(small_config)
    lease = holder.acquire(GLM5, holder="survivor")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    caplog.set_level(logging.ERROR, logger="collet_limiter")
    holder.acquire("other/thing").release()  # the next write notices and moves to the new file
    assert "deleted or replaced while in use" in caplog.text
    assert rows(db, "select model, holder from leases") == [("glm-5", "survivor")]
    newcomer = open_limiter(small_config)
    assert newcomer.acquire_with_fallback(GLM5).lease.key != GLM5  # type: ignore[union-attr]
    lease.release()
    assert rows(db, "select count(*) from leases where holder = 'survivor'") == [(0,)]


def test_a_wake_pushed_before_its_thread_registered_still_wakes_it(db: Path) -> None:
    """A release can commit between the claim that queued a ticket and that thread's
    registration with the watcher; the pushed ticket is kept for it. The backstop poll is set
    to a minute, so only the push can wake the acquire below before its deadline.

    No public call stops a thread between its claim and its registration, so this test wraps
    the one private step it must (the runtime's ``register``); everything it checks is public.
    SQLite only: it watches the wake-up datagram in the Unix socket's queue.
    """
    from collet_limiter import Limiter as SyncLimiter

    config = make_config(
        collaboration={"max_agents": 10},
        models=[{"name": "x", "concurrency_limit": 1}, {"name": "y", "concurrency_limit": 1}],
        limiter={"poll_interval_ms": 60_000, "max_poll_interval_ms": 60_000},
    )
    with SyncLimiter(db, config=config) as other, SyncLimiter(db, config=config) as waiting:
        blocker, held = other.acquire("p/x"), other.acquire("p/y")
        # A first waiter keeps the watcher running, so the next one's arrival causes no look
        # of its own.
        first = threading.Thread(target=lambda: waiting.acquire_wait("p/x", timeout=120).release())
        first.start()
        wait_for(lambda: len(waiting.waiters()) == 1)
        ((address,),) = rows(db, "select wake_addr from waiters")
        register = waiting._runtime.register

        def release_then_register(request: Any) -> Any:
            held.release()  # pushes the new ticket before its thread is known to the watcher
            # The datagram is in the watcher's socket once release() returns; the watcher
            # has taken it when the socket's queue is empty again.
            wait_for(lambda: queued_bytes(str(address)) == 0)
            return register(request)

        waiting._runtime.register = release_then_register  # type: ignore[method-assign]
        started = time.monotonic()
        lease = waiting.acquire_wait("p/y", timeout=20)
        # Unwoken, the thread would sleep to its deadline and claim then: it must not.
        assert time.monotonic() - started < 10
        assert lease.key.model == "y"
        lease.release()
        blocker.release()
        first.join(timeout=60)
        assert not first.is_alive()


def queued_bytes(address: str) -> int:
    """The receive queue of the datagram socket bound to the abstract ``address``, as ``ss``
    reports it (bytes of the first datagram waiting; 0 when none waits)."""
    listing = subprocess.run(
        ["ss", "-x", "-a", "-H"], capture_output=True, text=True, check=True, timeout=30
    )
    for line in listing.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["u_dgr"] and fields[4] == f"@{address}":
            return int(fields[2])
    raise AssertionError(f"no socket bound to @{address}: {listing.stdout}")


def wait_for(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
