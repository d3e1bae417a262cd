"""Real processes sharing one database: limits, crash recovery, FIFO, concurrent creation.

Every child is reaped by the ``spawn`` fixture and every wait carries a timeout.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collet_limiter import Acquired, Limiter, ModelKey, load_config
from collet_limiter._schema import SCHEMA_REVISION

from .namespaces import (
    NEW_PID_NAMESPACE,
    forked_child,
    needs_namespaces,
    pid_namespace,
    reap_worker,
    start_worker,
)
from .observer import observe, observe_files, parse
from .sql import execute, rows

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator, Sequence

WORKER = str(Path(__file__).with_name("workers.py"))
TIMEOUT = 60

Spawn = "Callable[..., subprocess.Popen[str]]"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start worker processes (under ``prefix``, such as ``unshare``); kill and reap any still
    running at the end."""
    children: list[subprocess.Popen[str]] = []

    def start(*args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
        child = start_worker(*args, prefix=prefix)
        children.append(child)
        return child

    yield start
    for child in children:
        reap_worker(child)


def expect_line(child: subprocess.Popen[str], prefix: str) -> str:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith(prefix), (
        f"expected {prefix!r}, got {line!r}; stderr: {child.stderr.read() if child.poll() is not None and child.stderr else ''}"
    )
    return line


CONFIG = """
[collaboration]
max_agents = 4

[[models]]
name = "glm-5"
concurrency_limit = 2

[[models]]
name = "glm-4.7"
concurrency_limit = 1

[[models]]
name = "glm-4.7-flash"
concurrency_limit = 2

[[providers]]
name = "zai"
models = ["glm-5", "glm-4.7", "glm-4.7-flash"]
"""

LIMITS = {"zai/glm-5": 2, "zai/glm-4.7": 1, "zai/glm-4.7-flash": 2}
FLASH = ModelKey("zai", "glm-4.7-flash")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def table(db: Path, query: str) -> list[tuple[object, ...]]:
    """Rows of a SQLite file (for the test about creating one); the rest use ``sql.rows``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def test_the_observer_catches_overlapping_holders() -> None:
    """The observer is not a tautology: overlapping intervals are counted."""
    events = parse(["1 + a/b", "2 + a/b", "3 - a/b", "4 - a/b", "5 + a/b", "6 - a/b", "6 + a/b"])
    result = observe(events)
    assert result.peak["a/b"] == 2 and result.peak_total == 2 and result.enters == 4


def run_churn(
    spawn: Callable[..., subprocess.Popen[str]],
    database: Path | str,
    config: Path,
    tmp_path: Path,
    *,
    processes: int,
    count: int,
    async_every: int = 0,
) -> list[Path]:
    """Churn in ``processes`` processes; every ``async_every``-th one uses AsyncLimiter (3 tasks)."""
    files = [tmp_path / f"events-{index}.txt" for index in range(processes)]
    children = []
    for index, path in enumerate(files):
        tasks = "3" if async_every and index % async_every == 0 else "0"
        args = ["--db", str(database), "--config", str(config), "--events", str(path)]
        args += ["--models", ",".join(LIMITS), "--count", str(count), "--seed", str(index)]
        # On PostgreSQL a write transaction takes milliseconds on a loaded 2-core machine, and
        # the holds must be long beside it for holders to overlap up to the global cap.
        hold = "20" if isinstance(database, Path) else "80"
        children.append(spawn("churn", *args, "--hold-ms", hold, "--async-tasks", tasks))
    for child in children:
        _, err = child.communicate(timeout=TIMEOUT * 2)
        assert child.returncode == 0, err
    return files


def test_sixteen_processes_never_exceed_a_limit_or_the_global_cap(
    spawn: Callable[..., subprocess.Popen[str]],
    database: Path | str,
    config_file: Path,
    tmp_path: Path,
) -> None:
    files = run_churn(spawn, database, config_file, tmp_path, processes=16, count=40)
    seen = observe_files(files)
    assert seen.enters == seen.exits == 16 * 40
    for key, limit in LIMITS.items():
        assert 1 <= seen.peak[key] <= limit, (key, seen.peak)
    assert seen.peak_total <= 4
    assert seen.peak_total == 4, "the test should drive the global cap to its limit"
    assert seen.via["primary"] > 0 and seen.via["queue"] > 0
    assert rows(database, "select count(*) from leases") == [(0,)]
    assert rows(database, "select count(*) from waiters") == [(0,)]


def test_sync_and_async_processes_share_the_limits(
    spawn: Callable[..., subprocess.Popen[str]],
    database: Path | str,
    config_file: Path,
    tmp_path: Path,
) -> None:
    files = run_churn(spawn, database, config_file, tmp_path, processes=8, count=30, async_every=2)
    seen = observe_files(files)
    assert seen.enters == seen.exits == 8 * 30
    for key, limit in LIMITS.items():
        assert 1 <= seen.peak[key] <= limit, (key, seen.peak)
    assert seen.peak_total <= 4
    assert rows(database, "select count(*) from leases") == [(0,)]
    assert rows(database, "select count(*) from waiters") == [(0,)]


@pytest.mark.parametrize(
    ("poll", "max_poll"),
    [("0.002", "0.2"), ("30", "30")],
    ids=["polling", "pidfd-only"],
)
def test_a_killed_holders_slot_goes_to_the_blocked_waiter(
    spawn: Callable[..., subprocess.Popen[str]],
    database: Path | str,
    config_file: Path,
    poll: str,
    max_poll: str,
) -> None:
    """With 30 s polls, only the watch on the holder's process can explain a grant in seconds."""
    holder = spawn(
        "hold", "--db", str(database), "--config", str(config_file), "--model", "zai/glm-4.7"
    )
    expect_line(holder, "HELD")
    waiter = spawn(
        "wait",
        "--db",
        str(database),
        "--config",
        str(config_file),
        "--model",
        "zai/glm-4.7",
        "--timeout",
        "60",
        "--poll",
        poll,
        "--max-poll",
        max_poll,
    )
    expect_line(waiter, "QUEUING")
    deadline = time.monotonic() + TIMEOUT
    while rows(database, "select count(*) from waiters") != [(1,)]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed_at = time.monotonic_ns()
    holder.send_signal(signal.SIGKILL)
    holder.wait(TIMEOUT)
    got = expect_line(waiter, "GOT").split()
    waited = (int(got[1]) - killed_at) / 1e9
    # The lease TTL is 60 s: only the proof of death can explain a grant this soon. The bound
    # leaves room for a loaded machine.
    assert waited < 2.5, waited
    assert got[2:] == ["zai/glm-4.7", "queue"]
    assert waiter.wait(TIMEOUT) == 0


def test_same_pid_with_another_start_time_counts_as_dead(
    spawn: Callable[..., subprocess.Popen[str]], database: Path | str, config_file: Path
) -> None:
    holder = spawn(
        "hold", "--db", str(database), "--config", str(config_file), "--model", "zai/glm-4.7"
    )
    expect_line(holder, "HELD")
    with Limiter(database, config=load_config(config_file)) as limiter:
        # While its start time matches, the live holder keeps the slot: the claim (which reaps
        # what is provably dead before falling back) must go to the fallback.
        outcome = limiter.acquire_with_fallback("zai/glm-4.7")
        assert isinstance(outcome, Acquired), outcome
        assert (outcome.lease.key, outcome.lease.via) == (FLASH, "capability")
        outcome.lease.release()
        assert rows(database, "select holder, model from leases") == [("holder", "glm-4.7")]
        # The PID now "belongs" to a process started later.
        execute(database, "update leases set pid_start = pid_start + 1 where holder = 'holder'")
        lease = limiter.acquire_wait("zai/glm-4.7", timeout=10)
        assert lease.key == ModelKey("zai", "glm-4.7")
        assert holder.poll() is None, "the holder is alive: only its start time differs"


@needs_namespaces
def test_a_holder_in_another_pid_namespace_is_reclaimed_only_by_expiry(
    spawn: Callable[..., subprocess.Popen[str]], database: Path | str, config_file: Path
) -> None:
    """A real second PID namespace (``unshare --pid``) is another host identity: its PIDs mean
    nothing here, so its dead holder's slot waits for the lease to expire, while a holder in
    this namespace is proven dead at once."""
    hold = ["hold", "--db", str(database), "--config", str(config_file), "--model", "zai/glm-4.7"]
    with Limiter(database, config=load_config(config_file), max_poll_interval=0.05) as limiter:
        here = spawn(*hold, "--ttl", "60")
        expect_line(here, "HELD")
        (lease,) = limiter.leases()
        assert (lease.pid, lease.holder_alive) == (here.pid, True)
        here.kill()
        here.wait(TIMEOUT)
        limiter.acquire_wait("zai/glm-4.7", timeout=TIMEOUT).release()
        assert datetime.now(UTC) < lease.expires_at, "reclaimed by proof of death, not expiry"

        launcher = spawn(*hold, "--ttl", "2", prefix=NEW_PID_NAMESPACE)
        expect_line(launcher, "HELD")
        elsewhere = forked_child(launcher)
        (lease,) = limiter.leases()
        boot, namespace = lease.host_id.split(":", 1)
        assert namespace == pid_namespace(elsewhere) != pid_namespace(os.getpid())
        assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert (lease.pid, lease.holder_alive) == (1, None)  # its PID 1, unknowable here
        os.kill(elsewhere, signal.SIGKILL)
        launcher.wait(TIMEOUT)
        (lease,) = limiter.leases()  # no heartbeat renews it any more: this expiry is final
        granted = limiter.acquire_wait("zai/glm-4.7", timeout=TIMEOUT)
        assert datetime.now(UTC) >= lease.expires_at, "reclaimed before its lease expired"
        assert granted.via == "queue"
        granted.release()


def test_waiters_in_other_processes_are_served_in_arrival_order(
    spawn: Callable[..., subprocess.Popen[str]], database: Path | str, config_file: Path
) -> None:
    holder = spawn(
        "hold", "--db", str(database), "--config", str(config_file), "--model", "zai/glm-4.7"
    )
    expect_line(holder, "HELD")
    waiters = []
    for index in range(5):
        waiter = spawn(
            "wait",
            "--db",
            str(database),
            "--config",
            str(config_file),
            "--model",
            "zai/glm-4.7",
            "--timeout",
            "60",
            "--label",
            f"w{index}",
            "--hold-ms",
            "30",
        )
        expect_line(waiter, "QUEUING")
        deadline = time.monotonic() + TIMEOUT
        while rows(database, "select count(*) from waiters") != [(index + 1,)]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        waiters.append(waiter)
    assert [row[0] for row in rows(database, "select holder from waiters order by id")] == [
        f"w{i}" for i in range(5)
    ]
    assert holder.stdin is not None
    holder.stdin.close()  # the holder releases and exits
    granted = [int(expect_line(waiter, "GOT").split()[1]) for waiter in waiters]
    assert granted == sorted(granted)
    for waiter in waiters:
        assert waiter.wait(TIMEOUT) == 0


def test_a_killed_waiters_ticket_does_not_block_the_queue(
    spawn: Callable[..., subprocess.Popen[str]], database: Path | str, config_file: Path
) -> None:
    config = load_config(config_file)
    with Limiter(database, config=config) as limiter:
        held = limiter.acquire("zai/glm-4.7")
        waiter = spawn(
            "wait", "--db", str(database), "--config", str(config_file), "--model", "zai/glm-4.7"
        )
        expect_line(waiter, "QUEUING")
        deadline = time.monotonic() + TIMEOUT
        while not limiter.waiters():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        waiter.kill()
        waiter.wait(TIMEOUT)
        held.release()
        result = limiter.acquire_with_fallback("zai/glm-4.7")
        assert isinstance(result, Acquired) and result.lease.key == ModelKey("zai", "glm-4.7")
        assert limiter.waiters() == []


def test_twenty_processes_opening_a_new_file_at_once_make_one_schema(
    spawn: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    """About a new SQLite file (journal mode, file mode); test_postgres has the server's twin."""
    db, go = tmp_path / "fresh.db", tmp_path / "go"
    children = [spawn("open", "--db", str(db), "--go", str(go)) for _ in range(20)]
    for child in children:
        expect_line(child, "READY")
    go.touch()
    for child in children:
        out, err = child.communicate(timeout=TIMEOUT)
        assert child.returncode == 0 and "OPENED" in out, err
        assert "Traceback" not in err
    assert table(db, "select version_num from alembic_version") == [(SCHEMA_REVISION,)]
    assert table(db, "select count(*) from leases") == [(0,)]
    assert table(db, "pragma journal_mode") == [("wal",)]
    assert os.stat(db).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "count", [60, pytest.param(200, marks=pytest.mark.slow)], ids=["ci", "full"]
)
def test_sixteen_processes_giving_up_at_random_never_leak_nor_double_grant(
    spawn: Callable[..., subprocess.Popen[str]],
    database: Path | str,
    config_file: Path,
    tmp_path: Path,
    count: int,
) -> None:
    """16 processes x 200 acquires (60 in CI) of one model (limit 2); a third give up after a
    random 0-20 ms: a timeout in the 8 sync processes, a cancelled task in the 8 async ones
    (2 tasks each). A release grants the next waiter its lease in its own transaction, so a
    waiter may give up just as it is granted: the lease must then be given on, never leaked
    nor granted twice. The observer merges every process's own records."""
    files = [tmp_path / f"events-{index}.txt" for index in range(16)]
    children = []
    for index, path in enumerate(files):
        args = ["--db", str(database), "--config", str(config_file), "--events", str(path)]
        args += ["--model", "zai/glm-5", "--count", str(count), "--seed", str(index)]
        hold = "2" if isinstance(database, Path) else "20"  # see run_churn
        args += ["--hold-ms", hold, "--async-tasks", "2" if index % 2 else "0"]
        children.append(spawn("interrupted", *args))
    for child in children:
        _, err = child.communicate(timeout=TIMEOUT * 4)
        assert child.returncode == 0, err
    seen = observe_files(files)
    gave_up = sum(path.read_text().count(" t ") for path in files)
    assert seen.enters == seen.exits == 16 * count - gave_up
    assert gave_up > 0 and seen.via["queue"] > 0, "the run should give up and queue"
    assert seen.peak["zai/glm-5"] == 2  # reached, never exceeded
    assert rows(database, "select count(*) from leases") == [(0,)]
    assert rows(database, "select count(*) from waiters") == [(0,)]
