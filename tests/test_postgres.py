"""What only the PostgreSQL backend has: the server's clock, hosts, restarts, and its URLs.

The behavioural suite runs on both backends through the ``database`` fixture; the tests here
are about what a database server adds: clocks that disagree between hosts, holders on other
hosts (real processes in other PID namespaces), a server restart or a dropped connection in the
middle of the work, an unreachable server, and a password in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import textwrap
import threading
import time
from typing import TYPE_CHECKING

import pytest

from collet_limiter import (
    AsyncLimiter,
    Config,
    ConfigError,
    DatabaseUnavailableError,
    Limiter,
    LimiterError,
    ModelKey,
)

from .conftest import fresh_group, make_config
from .namespaces import NEW_PID_NAMESPACE, forked_child, needs_namespaces, reap_worker, start_worker
from .observer import observe_files, parse
from .pgserver import PASSWORD, PgServer
from .sql import execute, rows

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator
    from pathlib import Path

TIMEOUT = 120
KEY = ModelKey("p", "m")
ONE_MODEL = {
    "collaboration": {"max_agents": 50},
    "models": [{"name": "m", "concurrency_limit": 2}],
    "providers": [{"name": "p", "models": ["m"]}],
}
CONFIG_TOML = """
[collaboration]
max_agents = 50

[[models]]
name = "m"
concurrency_limit = 2

[[providers]]
name = "p"
models = ["m"]
"""


@pytest.fixture
def group(pg_server: PgServer) -> str:
    return fresh_group(pg_server)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(CONFIG_TOML))
    return path


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[PgServer]:
    """A server of this test's own, for tests that stop it (the session's must keep running)."""
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


def server_time(url: str) -> float:
    ((now,),) = rows(url, "SELECT extract(epoch FROM clock_timestamp())::float8")
    return float(now)  # type: ignore[arg-type]


# --- the server's clock ------------------------------------------------------------------------


def test_limiters_with_clocks_hours_apart_agree_on_every_expiry(group: str) -> None:
    """Lease times come from the server: a host 5 hours ahead and one 3 hours behind write the
    same times, and neither expires the other's lease early nor keeps it alive."""
    config = make_config(**ONE_MODEL)
    ahead = Limiter(group, config=config, clock=lambda: time.time() + 5 * 3600, lease_ttl=30)
    behind = Limiter(group, config=config, clock=lambda: time.time() - 3 * 3600, lease_ttl=30)
    with ahead, behind:
        before = server_time(group)
        first, second = ahead.acquire(KEY), behind.acquire(KEY)
        after = server_time(group)
        for lease in (first, second):
            assert before - 0.5 <= lease.acquired_at.timestamp() <= after + 0.5
            assert lease.expires_at.timestamp() - lease.acquired_at.timestamp() == pytest.approx(
                30, abs=0.01
            )
        stored = rows(group, "SELECT acquired_ts, expires_ts FROM leases ORDER BY id")
        assert len(stored) == 2
        for acquired, expires in stored:
            assert before <= float(acquired) <= after  # type: ignore[arg-type]
            assert float(expires) - float(acquired) == pytest.approx(30, abs=1e-6)  # type: ignore[arg-type]
        # The host ahead would see the other's lease as expired by its own clock, the one behind
        # its own as valid for hours: both reap, and both leases stay.
        assert ahead.reap() == [] and behind.reap() == []
        assert ahead.renew() == [] and behind.renew() == []
        assert len(ahead.leases()) == 2
        first.release()
        second.release()


def test_a_lease_expires_by_the_servers_clock_whatever_the_holders_clock(group: str) -> None:
    """A holder whose clock is far behind still loses an unrenewed lease after the TTL of
    server time (its own clock would keep it alive for an hour)."""
    config = make_config(**ONE_MODEL)
    with (
        Limiter(group, config=config, clock=lambda: time.time() - 3600, lease_ttl=1) as slow,
        Limiter(group, config=config, lease_ttl=1) as other,
    ):
        held = slow.acquire(KEY, holder="behind")
        execute(group, "UPDATE leases SET expires_ts = expires_ts - 2")  # as if not renewed
        reaped = other.reap()
        assert [(r.key, r.reason) for r in reaped] == [(KEY, "expired")]
        assert rows(group, "SELECT count(*) FROM leases") == [(0,)]
        held.release()  # reclaimed already: nothing to give back, nothing raised
        assert held.lost


# --- hosts ---------------------------------------------------------------------------------------


def _hold(
    url: str, config: Path, *, ttl: float, skew: float, prefix: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], int]:
    child = start_worker(
        "hold", "--db", url, "--config", str(config), "--model", str(KEY), "--ttl", str(ttl),
        "--clock-skew", str(skew), prefix=prefix,
    )  # fmt: skip
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("HELD"), (line, child.stderr.read() if child.stderr else "")
    return child, int(line.split()[1])


@needs_namespaces
def test_hosts_with_skewed_clocks_never_over_admit_and_dead_holders_return_within_the_ttl(
    group: str, config_file: Path, tmp_path: Path
) -> None:
    """Processes presenting other host identities (their own PID namespaces) with clocks hours
    off share one model of limit 2. A holder on another host is SIGKILLed and one on this host
    is SIGSTOPped: both slots come back by TTL (no PID can prove the first dead, and the second
    is alive), and an observer that does not trust the limiter sees no over-admission."""
    ttl = 2.0
    hold_file = tmp_path / "holders.txt"
    elsewhere, _ = _hold(group, config_file, ttl=ttl, skew=3 * 3600, prefix=NEW_PID_NAMESPACE)
    stopped, stopped_id = _hold(group, config_file, ttl=ttl, skew=-2 * 3600)
    held_at = time.monotonic_ns()
    hosts = {host for (host,) in rows(group, "SELECT host_id FROM leases")}
    assert len(hosts) == 2, "the holders should present two host identities"
    churners = []
    files = [tmp_path / f"events-{index}.txt" for index in range(6)]
    try:
        for index, path in enumerate(files):
            skew = (0, 0, 3600, -3600, 7 * 3600, -5 * 3600)[index]
            prefix = NEW_PID_NAMESPACE if index >= 2 else ()
            args = ["--db", group, "--config", str(config_file), "--events", str(path)]
            args += ["--models", str(KEY), "--count", "8", "--seed", str(index)]
            # Holds long beside a transaction under load, so that the two slots are seen full.
            args += ["--hold-ms", "30", "--ttl", str(ttl), "--clock-skew", str(skew)]
            churners.append(start_worker("churn", *args, prefix=prefix))
        # Every churner queues behind the two holders (who renew) before they go.
        deadline = time.monotonic() + TIMEOUT
        while rows(group, "SELECT count(*) FROM waiters") != [(6,)]:
            assert time.monotonic() < deadline, "the churners did not queue"
            time.sleep(0.01)
        os.kill(forked_child(elsewhere), signal.SIGKILL)
        os.kill(stopped.pid, signal.SIGSTOP)
        gone_at = time.monotonic_ns()
        hold_file.write_text(
            f"{held_at} + {KEY} primary\n{held_at} + {KEY} primary\n"
            f"{gone_at} - {KEY} primary\n{gone_at} - {KEY} primary\n"
        )
        for child in churners:
            _, err = child.communicate(timeout=TIMEOUT)
            assert child.returncode == 0, err
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
        for child in (elsewhere, stopped, *churners):
            reap_worker(child)
    events = parse(hold_file.read_text().splitlines())
    first_grant = min(ns for path in files for ns, delta, _, _ in parse(path.read_text().splitlines()) if delta > 0)  # fmt: skip
    seen = observe_files([*files, hold_file])
    assert seen.enters == seen.exits == 6 * 8 + 2 and len(events) == 4
    assert seen.peak[str(KEY)] == 2, seen.peak
    # The two slots came back once their leases expired: no sooner than a TTL after they were
    # last renewed, and within a TTL plus a sweep after the holders went.
    waited = (first_grant - gone_at) / 1e9
    assert waited <= ttl + 1.5, f"slots came back {waited:.2f} s after the holders went"
    assert rows(group, f"SELECT count(*) FROM leases WHERE id = {stopped_id}") == [(0,)]
    assert rows(group, "SELECT count(*) FROM leases") == [(0,)]


# --- restarts, dropped connections, unreachable servers ----------------------------------------


def test_a_server_restart_keeps_held_leases_and_queued_waiters_in_place(
    own_server: PgServer,
) -> None:
    """pg_ctl restart -m fast while a lease is held and a waiter waits: the holder keeps its
    lease (its heartbeat reconnects), the waiter keeps its ticket and is served on release."""
    url = own_server.url("g")
    config = make_config(**ONE_MODEL)
    with (
        Limiter(url, config=config, poll_interval=0.01) as holder,
        Limiter(url, config=config, poll_interval=0.01) as waiting,
    ):
        held = [holder.acquire(KEY), holder.acquire(KEY)]
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(waiting.acquire_wait(KEY, timeout=60)))
        thread.start()
        wait_for_one_ticket(url)
        (ticket,) = rows(url, "SELECT id FROM waiters")
        own_server.restart()
        assert holder.renew() == [], "the heartbeat reconnects and finds both leases"
        assert rows(url, "SELECT id FROM waiters") == [ticket]
        assert thread.is_alive()
        held[0].release()
        thread.join(30)
        assert got and getattr(got[0], "via", None) == "queue"
        got[0].release()  # type: ignore[attr-defined]
        held[1].release()
    assert rows(url, "SELECT count(*) FROM leases") == [(0,)]


def test_a_dropped_connection_is_reopened_without_the_caller_noticing(group: str) -> None:
    """The server ends every limiter session (as an administrator or a failover would):
    the next acquire and release work."""
    with Limiter(group, config=make_config(**ONE_MODEL)) as limiter:
        lease = limiter.acquire(KEY)
        execute(
            group,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'collet-limiter' AND pid <> pg_backend_pid()",
        )
        second = limiter.acquire(KEY)
        lease.release()
        second.release()
        assert limiter.leases() == []


@pytest.mark.parametrize(
    "cycles", [10, pytest.param(100, marks=pytest.mark.slow)], ids=["ci", "slow"]
)
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_restart_in_the_middle_of_sixteen_processes_over_admits_nothing(
    own_server: PgServer, config_file: Path, tmp_path: Path, api: str, cycles: int
) -> None:
    """16 processes churn on one model (limit 2) while the server restarts twice: every process
    finishes, and the observer sees at most 2 holders at any moment."""
    url = own_server.url("g")
    Limiter(url, config=make_config(**ONE_MODEL)).close()  # the schema, before the crowd
    files = [tmp_path / f"events-{index}.txt" for index in range(16)]
    tasks = "2" if api == "async" else "0"
    children = [
        start_worker(
            "churn",
            "--db",
            url,
            "--config",
            str(config_file),
            "--events",
            str(path),
            "--models",
            str(KEY),
            "--count",
            str(cycles),
            "--seed",
            str(index),
            "--hold-ms",
            "30",
            "--async-tasks",
            tasks,
        )
        for index, path in enumerate(files)
    ]
    try:
        for _ in range(2):
            deadline = time.monotonic() + 30
            while sum(p.exists() and p.stat().st_size > 0 for p in files) < 8:
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.01)
            own_server.restart()
        for child in children:
            _, err = child.communicate(timeout=TIMEOUT)
            assert child.returncode == 0, err
    finally:
        for child in children:
            reap_worker(child)
    seen = observe_files(files)
    assert seen.enters == seen.exits == 16 * cycles
    assert seen.peak[str(KEY)] == 2, seen.peak
    assert rows(url, "SELECT count(*) FROM leases") == [(0,)]
    assert rows(url, "SELECT count(*) FROM waiters") == [(0,)]


def test_a_server_that_stays_away_gives_database_unavailable_naming_the_host(
    own_server: PgServer,
) -> None:
    url = own_server.url("g")
    config = make_config(**ONE_MODEL, limiter={"busy_timeout_ms": 1000})
    with Limiter(url, config=config) as limiter:
        lease = limiter.acquire(KEY)
        own_server.stop()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as caught:
            limiter.acquire(KEY)
        assert 1.0 <= time.monotonic() - started < 10
        assert str(own_server.sockets) in str(caught.value)
        assert "psycopg" not in type(caught.value).__module__
        with pytest.raises(DatabaseUnavailableError):
            lease.release()


def test_opening_an_unreachable_server_fails_after_the_busy_timeout_naming_it() -> None:
    url = "postgresql+psycopg://agents@127.0.0.1:1/limits"
    config = make_config(limiter={"busy_timeout_ms": 300})
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1 unreachable") as caught:
        Limiter(url, config=config)
    assert 0.3 <= time.monotonic() - started < 5
    assert "Connection refused" in str(caught.value)


# --- URLs and passwords ------------------------------------------------------------------------


def test_a_password_in_the_url_appears_in_no_message_log_or_repr(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="collet_limiter")
    good = pg_server.password_url("pw_group")
    with Limiter(good, config=make_config(**ONE_MODEL)) as limiter:
        lease = limiter.acquire(KEY)
        texts = [repr(limiter), repr(lease), limiter.db, str(limiter.status())]
        lease.release()
    wrong = good.replace(PASSWORD, "not-" + PASSWORD)
    with pytest.raises(LimiterError) as caught:
        Limiter(wrong, config=Config())
    texts += [str(caught.value), repr(caught.value), str(caught.value.__cause__ or "")]
    with pytest.raises(ConfigError) as bad_schema:
        Limiter(good.replace("schema=pw_group", "schema=Bad-Name"), config=Config())
    texts.append(str(bad_schema.value))
    texts += [record.getMessage() for record in caplog.records]
    assert "password authentication failed" in str(caught.value)
    for text in texts:
        assert PASSWORD not in text, text
        assert "not-" + PASSWORD not in text


def test_groups_in_one_database_are_independent(pg_server: PgServer) -> None:
    config = make_config(**ONE_MODEL)
    first, second = fresh_group(pg_server), fresh_group(pg_server)
    with Limiter(first, config=config) as a, Limiter(second, config=config) as b:
        held = [a.acquire(KEY), a.acquire(KEY)]
        assert a.status().models[0].in_use == 2
        assert b.status().models[0].in_use == 0
        other = b.acquire(KEY)  # the other group's limit is its own
        assert other.via == "primary"
        for lease in (*held, other):
            lease.release()


def test_many_processes_creating_one_group_at_once_make_one_schema(
    pg_server: PgServer, tmp_path: Path, config_file: Path
) -> None:
    url = fresh_group(pg_server)
    go = tmp_path / "go"
    children = [
        start_worker("open", "--db", url, "--config", str(config_file), "--go", str(go))
        for _ in range(6)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().startswith("READY")
        go.touch()
        for child in children:
            out, err = child.communicate(timeout=TIMEOUT)
            assert child.returncode == 0 and "OPENED" in out, err
    finally:
        for child in children:
            reap_worker(child)
    assert len(rows(url, "SELECT version_num FROM alembic_version")) == 1


def test_the_async_face_works_on_the_server_off_its_event_loop(group: str) -> None:
    """Every server round trip of an AsyncLimiter runs off the loop: a loop whose other task
    ticks every millisecond keeps ticking while acquires and releases go on."""

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        async with AsyncLimiter(group, config=make_config(**ONE_MODEL)) as limiter:
            for _ in range(20):
                async with limiter.acquire(KEY) as lease:
                    assert lease.via == "primary"
            status = await limiter.status()
        stop.set()
        await ticker
        assert status.models[0].in_use == 0
        return ticks

    assert asyncio.run(main()) > 0


def test_a_postgresql_url_with_another_driver_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"postgresql\+psycopg://"):
        Limiter("postgresql+asyncpg://u@h/db", config=Config())


def wait_for_one_ticket(url: str) -> None:
    """Until exactly one waiter is queued in the group ``url`` names."""
    deadline = time.monotonic() + 30
    while rows(url, "SELECT count(*) FROM waiters") != [(1,)]:
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.005)


def wait_until_listening(group: str) -> None:
    """Until the one queued waiter's channel (its ticket's wake address) is being listened on."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = rows(group, "SELECT wake_addr FROM waiters")
        listening = rows(group, "SELECT query FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        if found and any(str(found[0][0]) in str(q) for (q,) in listening):
            return
        time.sleep(0.005)
    pytest.fail("the waiter's channel was never listened on")


def test_a_waiters_channel_is_listened_on(group: str) -> None:
    """A waiter's ticket carries its limiter's LISTEN channel, and the channel is listened on."""
    config = make_config(**ONE_MODEL)
    with Limiter(group, config=config) as holder, Limiter(group, config=config) as waiting:
        held = [holder.acquire(KEY), holder.acquire(KEY)]
        thread = threading.Thread(target=lambda: waiting.acquire_wait(KEY, timeout=30).release())
        thread.start()
        wait_until_listening(group)
        held[0].release()
        thread.join(30)
        assert not thread.is_alive()
        held[1].release()


class CuttableProxy:
    """A TCP proxy on loopback to the server that the test can cut off and restore: the holder
    behind it loses the server while everyone else keeps it."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self.lock:
                self.links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def cut(self) -> None:
        """Drop every link and refuse new ones."""
        self.up.clear()
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_holder_cut_off_from_the_server_longer_than_the_ttl_is_told_its_lease_was_lost(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    schema = f"cut_{os.getpid()}_{time.monotonic_ns()}"
    direct = pg_server.url(schema)
    proxy = CuttableProxy(pg_server.port)
    behind = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/postgres?schema={schema}"
    config = make_config(**ONE_MODEL, limiter={"busy_timeout_ms": 300})
    caplog.set_level(logging.WARNING, logger="collet_limiter")
    try:
        with (
            Limiter(behind, config=config, lease_ttl=1.0) as holder,
            Limiter(direct, config=config, lease_ttl=1.0) as other,
        ):
            leases = [holder.acquire(KEY, holder="cut"), holder.acquire(KEY, holder="cut")]
            proxy.cut()
            # The other host gets a slot once the holder's leases expire unrenewed ...
            taken = other.acquire_wait(KEY, timeout=30)
            assert taken.via == "queue"
            # ... and reclaims the second once that one has expired too.
            deadline = time.monotonic() + 30
            while rows(direct, "SELECT count(*) FROM leases WHERE holder = 'cut'") != [(0,)]:
                assert time.monotonic() < deadline, "the cut-off holder's leases never expired"
                other.reap()
                time.sleep(0.05)
            proxy.restore()
            deadline = time.monotonic() + 30
            while not all(lease.lost for lease in leases):
                assert time.monotonic() < deadline, "the holder was never told"
                time.sleep(0.02)
            assert any("was lost" in r.getMessage() for r in caplog.records)
            for lease in leases:
                lease.release()  # nothing left to give back, and no error
            assert [lease.holder for lease in other.leases()] == [None]
            taken.release()
    finally:
        proxy.close()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_release_wakes_the_waiter_by_notify_alone(group: str, api: str) -> None:
    """With every poll 30 s apart, only the NOTIFY sent by the releasing transaction can hand
    the slot over within seconds."""
    config = make_config(**ONE_MODEL)
    slow = {"poll_interval": 30.0, "max_poll_interval": 30.0}
    with Limiter(group, config=config) as holder:
        held = [holder.acquire(KEY), holder.acquire(KEY)]
        got: list[float] = []

        def wait_sync() -> None:
            with Limiter(group, config=config, **slow) as waiting:
                lease = waiting.acquire_wait(KEY, timeout=60)
                got.append(time.monotonic())
                lease.release()

        async def wait_async() -> None:
            async with AsyncLimiter(group, config=config, **slow) as waiting:
                lease = await waiting.acquire_wait(KEY, timeout=60)
                got.append(time.monotonic())
                await lease.release()

        thread = threading.Thread(
            target=wait_sync if api == "sync" else lambda: asyncio.run(wait_async())
        )
        thread.start()
        wait_until_listening(group)
        released = time.monotonic()
        held[0].release()
        thread.join(60)
        assert got, "the waiter was not served"
        assert got[0] - released < 5, f"served {got[0] - released:.1f} s after the release"
        held[1].release()


def test_a_forked_child_leaves_its_parents_listen_connection_alone(group: str) -> None:
    """A child forked while its parent waits drops the parent's connections without closing
    them (closing would tell the server to end the parent's LISTEN session): the parent's
    waiter is still woken by NOTIFY alone."""
    config = make_config(**ONE_MODEL)
    slow = {"poll_interval": 30.0, "max_poll_interval": 30.0}
    with Limiter(group, config=config) as holder, Limiter(group, config=config, **slow) as waiting:
        held = [holder.acquire(KEY), holder.acquire(KEY)]
        got: list[float] = []

        def wait() -> None:
            lease = waiting.acquire_wait(KEY, timeout=60)
            got.append(time.monotonic())
            lease.release()

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until_listening(group)
        child = os.fork()
        if child == 0:  # the at-fork hook has already rebuilt both limiters for the child
            waiting.close()
            holder.close()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        released = time.monotonic()
        held[0].release()
        thread.join(60)
        assert got and got[0] - released < 5, "the parent's waiter lost its LISTEN session"
        held[1].release()


def test_a_claim_retried_after_a_lost_commit_takes_up_what_it_wrote(group: str) -> None:
    """A connection that drops during COMMIT leaves the client unsure whether the claim was
    written; the retry (told by the runtime) must find that lease or ticket, never write a
    second one. Run here by replaying a committed claim as a retry."""
    from collet_limiter._core import RETRY_KEY

    config = make_config(**ONE_MODEL)
    with Limiter(group, config=config) as limiter:
        runtime = limiter._runtime
        core = runtime.core

        def replay(request: object) -> object:
            def retried(conn: object) -> object:
                conn.info[RETRY_KEY] = 1  # type: ignore[attr-defined]
                return core.claim(conn, request)  # type: ignore[arg-type]

            return runtime.write(retried)

        def fresh() -> object:
            return core.request(KEY, None, fallback=False, enqueue=True, label="retry")

        granted = fresh()
        first = runtime.write(lambda conn: core.claim(conn, granted))
        again = replay(granted)
        assert again.lease == first.lease  # type: ignore[attr-defined]
        assert rows(group, "SELECT count(*) FROM leases") == [(1,)]

        runtime.write(lambda conn: core.claim(conn, fresh()))  # the model is full now
        queued = fresh()
        first = runtime.write(lambda conn: core.claim(conn, queued))
        assert first.lease is None and first.ticket is not None  # type: ignore[attr-defined]
        again = replay(queued)
        assert (again.lease, again.ticket) == (None, first.ticket)  # type: ignore[attr-defined]
        assert rows(group, "SELECT count(*) FROM waiters") == [(1,)]
        runtime.write(core.release_owner)


def test_listen_off_makes_waiters_poll_without_a_channel(group: str) -> None:
    """``?listen=off`` (for a pooler in transaction mode, where LISTEN cannot work): tickets
    carry no channel, nothing LISTENs, and a waiter is served by polling."""
    config = make_config(**ONE_MODEL)
    quiet = group + "&listen=off"
    with (
        Limiter(group, config=config) as holder,
        Limiter(quiet, config=config, poll_interval=0.02) as waiting,
    ):
        held = [holder.acquire(KEY), holder.acquire(KEY)]
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(waiting.acquire_wait(KEY, timeout=30)))
        thread.start()
        wait_for_one_ticket(group)
        assert rows(group, "SELECT wake_addr FROM waiters") == [(None,)]
        held[0].release()
        thread.join(30)
        assert got and getattr(got[0], "via", None) == "queue"
        channel = f"collet_{waiting._core.owner}"
        listening = rows(group, "SELECT query FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        assert not [query for (query,) in listening if channel in str(query)]
        got[0].release()  # type: ignore[attr-defined]
        held[1].release()
    with pytest.raises(ConfigError, match="listen='maybe' must be on or off"):
        Limiter(group + "&listen=maybe", config=config)
