"""Faults under live holders: the file deleted or replaced, the disk full, the filesystem made
read-only, a stalled writer, a foreign lock, a second config. Real files, real processes, real
mounts (a tmpfs, an ext4 loop device), real signals.

Each fault must surface as a ``LimiterError`` subclass with a message that says what to do,
never as a sqlite3 or SQLAlchemy exception, and must lose nothing already stored. Tests that
need root or a kernel facility (mount, loop devices, chattr) skip with the reason when the
machine refuses it. docs/reliability.md lists the defects these tests found.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import (
    Acquired,
    AcquireTimeout,
    Config,
    DatabaseBusyError,
    DatabaseCorruptError,
    DatabaseUnavailableError,
    Limiter,
    LimiterError,
)

from .conftest import make_config
from .flocks import flock_waiters

if TYPE_CHECKING:
    from collections.abc import Iterator

TIMEOUT = 60
ONE_SLOT = make_config(models=[{"name": "m", "concurrency_limit": 1}])
MANY = make_config(
    collaboration={"max_agents": 100}, models=[{"name": "m", "concurrency_limit": 50}]
)


def rows(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the database as an operator would, closing the connection (mounts must unmount)."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return conn.execute(query, params).fetchall()


def rows_read_only(db: Path, query: str) -> list[tuple[Any, ...]]:
    """Read without ever writing (on a read-only filesystem)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(query).fetchall()


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


# A holder in its own process: logs to stderr, prints HELD, then obeys lines on stdin ("renew");
# releases and closes at end of input.
HOLDER = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
from collet_limiter import Limiter, LimiterError, load_config
limiter = Limiter(sys.argv[1], config=load_config(sys.argv[2]))
lease = limiter.acquire(sys.argv[3], holder="child")
print("HELD", lease.id, lease.token, flush=True)
for line in sys.stdin:
    if line.strip() == "renew":
        limiter.renew()
        print("RENEWED", flush=True)
try:
    lease.release()
    limiter.close()
    print("RELEASED", int(lease.lost), flush=True)
except LimiterError as exc:
    print("ERROR", type(exc).__name__, exc, flush=True)
"""


def tell(child: subprocess.Popen[str], command: str) -> list[str]:
    """Send a command line to a HOLDER child and read its answer."""
    assert child.stdin is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()
    return first_line(child, command.upper())


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test; killed (if still running) and reaped at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
        child.wait(TIMEOUT)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def start(children: list[subprocess.Popen[str]], code: str, *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    return child


def first_line(child: subprocess.Popen[str], prefix: str) -> list[str]:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith(prefix):
        child.kill()
        _, err = child.communicate(timeout=TIMEOUT)
        pytest.fail(f"expected {prefix!r}, got {line!r}; stderr: {err}")
    return line.split()


def finish(child: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = child.communicate("", timeout=TIMEOUT)
    return out, err


def no_driver_error(stderr: str) -> None:
    for driver in ("sqlite3.", "sqlalchemy.", "Traceback"):
        assert driver not in stderr, stderr


def wait_until(predicate: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- the file deleted or replaced ------------------------------------------------------------


def test_a_database_deleted_under_a_holder_is_recreated_and_the_holder_re_registers(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """rm limiter.db*: the next process starts a new file; the holder joins it at its next write.

    Until the holder's next write (its heartbeat, at most TTL/3 later) the new file does not know
    it: a newcomer is granted the slot, and once the holder re-registers, the model holds 2
    leases for a limit of 1 until one is released. Loud (the holder logs an error), not silent,
    but the limit is broken for that window: see docs/reliability.md.
    """
    db = tmp_path / "limiter.db"
    config = write_config(tmp_path / "c.toml", CONFIG_ONE_SLOT)  # TTL 60 s: no heartbeat here
    holder = start(children, HOLDER, str(db), str(config), "p/m")
    _, _, token = first_line(holder, "HELD")
    for path in tmp_path.glob("limiter.db*"):
        if path.suffix != ".lock":
            path.unlink()
    with Limiter(db, config=ONE_SLOT) as newcomer:
        outcome = newcomer.acquire_with_fallback("p/m")
        assert isinstance(outcome, Acquired), "the new file has room while the holder holds"
        tell(holder, "renew")  # what its heartbeat does within TTL/3
        assert rows(db, "SELECT count(*) FROM leases WHERE token = ?", (token,)) == [(1,)]
        assert rows(db, "SELECT count(*) FROM leases") == [(2,)]  # 2 holders, limit 1
        with pytest.raises(AcquireTimeout):
            _held1 = newcomer.acquire("p/m", timeout=0)  # no third: the holder counts again
        out, err = finish(holder)
        assert out.split()[:2] == ["RELEASED", "0"], out + err
        assert "was deleted or replaced while in use" in err
        no_driver_error(err)
        outcome.lease.release()
    assert rows(db, "SELECT count(*) FROM leases") == [(0,)]


CONFIG_ONE_SLOT = """
    [[models]]
    name = "m"
    concurrency_limit = 1
"""


def test_a_database_replaced_beside_its_old_wal_keeps_each_lease_once(
    tmp_path: Path,
) -> None:
    """mv other.db limiter.db (its -wal left in place): the holder's lease must not be doubled.

    SQLite pairs the new main file with the old ``-wal``, which still holds the lease; the
    holder must not re-register it on top (before 4055aaf one holder counted twice).
    """
    db = tmp_path / "limiter.db"
    other = tmp_path / "other.db"
    Limiter(other, config=MANY).close()
    with Limiter(db, config=MANY) as limiter:
        lease = limiter.acquire("p/m")
        os.replace(other, db)
        limiter.renew()  # the heartbeat's next write notices the new file
        stored = rows(db, "SELECT id FROM leases WHERE token = ?", (lease.token,))
        assert len(stored) == 1, f"one lease stored as {len(stored)} rows: {stored}"
        lease.release()
        assert rows(db, "SELECT count(*) FROM leases") == [(0,)]


def test_a_database_replaced_by_a_file_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=MANY)
    _held2 = limiter.acquire("p/m")
    for path in tmp_path.glob("limiter.db-*"):
        path.unlink()
    notes = tmp_path / "notes"
    notes.write_text("these are my notes, not a database\n" * 100)
    os.replace(notes, db)
    message = f"^{db} is not a usable collet-limiter database \\(file is not a database\\)"
    with pytest.raises(DatabaseCorruptError, match=message):
        _held3 = limiter.acquire("p/m", timeout=0)
    with pytest.raises(DatabaseCorruptError, match=message):
        Limiter(db, config=MANY)
    with contextlib.suppress(LimiterError):
        limiter.close()
    assert db.read_text().startswith("these are my notes"), "the file was left as it was"


def test_closing_a_limiter_whose_database_was_deleted_gives_back_its_leases(
    tmp_path: Path,
) -> None:
    """close() gives back in the new file the leases it carried there (before 4055aaf it raised
    "closed": close marked the limiter closed, then its write noticed the new file and refused).
    """
    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=MANY)
    ours = [limiter.acquire("p/m"), limiter.acquire("p/m")]
    for path in tmp_path.glob("limiter.db*"):
        if path.suffix != ".lock":
            path.unlink()
    with Limiter(db, config=MANY) as newcomer:  # the next process creates a new file
        theirs = newcomer.acquire("p/m")
        limiter.renew()  # what its heartbeat does within TTL/3: it re-registers in the new file
        tokens = {lease.token for lease in (*ours, theirs)}
        assert set(rows(db, "SELECT token FROM leases")) == {(token,) for token in tokens}
        limiter.close()
        assert all(lease.released and not lease.lost for lease in ours)
        assert rows(db, "SELECT token FROM leases") == [(theirs.token,)], "only ours went"
        theirs.release()


def test_closing_a_limiter_whose_database_was_deleted_creates_no_new_one(
    tmp_path: Path,
) -> None:
    """With nothing at the path, our rows went with the deleted file: close() says nothing,
    writes nothing, and never creates a database just to close."""
    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=MANY)
    lease = limiter.acquire("p/m")
    for path in tmp_path.glob("limiter.db*"):
        if path.suffix != ".lock":
            path.unlink()
    limiter.close()
    assert lease.released
    assert sorted(path.name for path in tmp_path.glob("limiter.db*")) == ["limiter.db.lock"]


# --- the disk full ---------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(directory: Path, *options: str) -> Iterator[Path]:
    """A real mount at ``directory`` (root only); skips the test when the kernel refuses."""
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", *options, str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or result.returncode})")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; returns it (delete it to free space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    error = None
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        error = exc
    finally:
        os.close(fd)
    assert error is not None and error.errno == errno.ENOSPC, error
    return filler


def fill_leases(limiter: Limiter, held: list[Any]) -> None:
    """Acquire until a write fails; each lease needs room in the -wal file."""
    for _ in range(200):
        held.append(limiter.acquire("p/m", holder="x" * 2000, timeout=1))  # noqa: PERF401


def test_a_full_disk_is_a_clear_error_and_loses_no_lease(tmp_path: Path) -> None:
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=512k", "tmpfs") as small:
        db = small / "limiter.db"
        with Limiter(db, config=MANY) as limiter:
            held = [limiter.acquire("p/m") for _ in range(3)]
            filler = fill(small)
            with pytest.raises(DatabaseUnavailableError) as caught:
                fill_leases(limiter, held)
            assert (
                str(caught.value)
                == f"cannot write database {db}: the disk is full; free space and retry"
            )
            stored = rows(db, "SELECT count(*) FROM leases")
            assert stored == [(len(held),)]
            filler.unlink()
            limiter.acquire("p/m", timeout=1).release()
            for lease in held:
                lease.release()
        assert rows(db, "SELECT count(*) FROM leases") == [(0,)]


def test_a_release_that_failed_can_be_retried(tmp_path: Path) -> None:
    """A release that raised (here: a foreign write lock) must not leave the slot leaked.

    Before 4055aaf the lease was marked released before the delete, so a second release() did
    nothing, and the row lived on, renewed by the limiter's heartbeat with its other leases.
    """
    db = tmp_path / "limiter.db"
    config = make_config(
        models=[{"name": "m", "concurrency_limit": 5}], limiter={"busy_timeout_ms": 200}
    )
    with Limiter(db, config=config) as limiter:
        lease, other = limiter.acquire("p/m"), limiter.acquire("p/m")
        with foreign_write_lock(db), pytest.raises(DatabaseBusyError):
            lease.release()
        lease.release()  # retried once the lock is gone
        limiter.renew()
        assert rows(db, "SELECT count(*) FROM leases WHERE id = ?", (lease.id,)) == [(0,)]
        other.release()


def test_a_file_size_limit_is_a_clear_error_and_loses_no_lease(tmp_path: Path) -> None:
    """RLIMIT_FSIZE (no root needed): writes past it fail with EFBIG, SIGXFSZ ignored."""
    db = tmp_path / "limiter.db"
    code = textwrap.dedent(
        """
        import os, resource, signal, sys
        from collet_limiter import Limiter, LimiterError, load_config
        db = sys.argv[1]
        limiter = Limiter(db, config=load_config(sys.argv[2]))
        held = [limiter.acquire("p/m") for _ in range(3)]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = max(os.path.getsize(db), os.path.getsize(db + "-wal"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 1000, resource.RLIM_INFINITY))
        try:
            for _ in range(200):
                held.append(limiter.acquire("p/m", holder="x" * 3000, timeout=1))
        except LimiterError as exc:
            print(type(exc).__name__, len(held), exc, flush=True)
        """
    )
    config = write_config(
        tmp_path / "c.toml",
        '[collaboration]\nmax_agents = 300\n[[models]]\nname = "m"\nconcurrency_limit = 300\n',
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(db), str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    no_driver_error(result.stderr)
    name, count, message = result.stdout.strip().split(" ", 2)
    assert name == "DatabaseUnavailableError", result.stdout
    assert message.startswith(f"database {db}: the file system refused a read or write"), message
    assert "(disk I/O error)" in message and "ulimit -f" in message, message
    # Nothing stored was lost: the child exited without closing, so its leases are all there.
    assert rows(db, "SELECT count(*) FROM leases") == [(int(count),)]


# --- read-only -------------------------------------------------------------------------------


def test_a_filesystem_forced_read_only_under_holders_is_a_clear_error(tmp_path: Path) -> None:
    """ext4 on a loop device with errors=remount-ro; an fs error forces it read-only in use.

    (A plain ``mount -o remount,ro`` is refused while files are open for writing, so this is
    how a filesystem goes read-only under a running limiter: the kernel does it on an error.)
    """
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 for a loop device")
    image = tmp_path / "ext4.img"
    image.write_bytes(b"")
    os.truncate(image, 8 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    with mounted(tmp_path / "ext4", "-o", "loop,errors=remount-ro", str(image)) as volume:
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(volume)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"no {trigger}")
        db = volume / "limiter.db"
        limiter = Limiter(db, config=MANY)
        try:
            held = [limiter.acquire("p/m"), limiter.acquire("p/m")]
            trigger.write_text("collet-limiter test")
            wait_until(
                lambda: {"ro", "emergency_ro"} & set(_mount_options(volume)),
                "the kernel to make the filesystem read-only",
            )
            for call in (
                lambda: limiter.acquire("p/m", timeout=0),
                held[0].release,
                limiter.renew,
            ):
                with pytest.raises(DatabaseUnavailableError, match=f"database {db}"):
                    call()
            with pytest.raises(
                DatabaseUnavailableError,
                match=f"^cannot use database {db}: Read-only file system$",
            ):
                Limiter(db, config=MANY)
            assert rows_read_only(db, "SELECT count(*) FROM leases") == [(2,)]
        finally:
            with contextlib.suppress(LimiterError):
                limiter.close()


def _mount_options(path: Path) -> list[str]:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "OPTIONS", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out.strip().split(",")


def test_an_immutable_database_file_is_a_clear_error_for_new_processes(tmp_path: Path) -> None:
    """chattr +i (root ignores chmod, not the immutable flag): new opens fail clearly.

    A limiter already open keeps working: its writes go to the -wal file, which is not
    immutable, and SQLite quietly stops checkpointing into the main file (the -wal grows).
    """
    db = tmp_path / "limiter.db"
    limiter = Limiter(db, config=MANY)
    try:
        lease = limiter.acquire("p/m")
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False).returncode:
            pytest.skip("chattr +i is not supported here")
        try:
            with pytest.raises(
                DatabaseUnavailableError,
                match=f"^database {db} is read-only \\(attempt to write a readonly database\\); "
                "make the file and its directory writable$",
            ):
                Limiter(db, config=Config())
            limiter.acquire("p/m", timeout=0).release()
            lease.release()
        finally:
            subprocess.run(["chattr", "-i", str(db)], check=True)
    finally:
        limiter.close()
    assert rows(db, "SELECT count(*) FROM leases") == [(0,)]


def test_a_database_another_user_may_only_read_is_a_clear_error(tmp_path: Path) -> None:
    """chmod as a user it applies to: the file 0644 in a 0755 directory, opened by ``nobody``.

    (Root ignores permissions, so the child drops to uid 65534 after importing the package.)
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    db = shared / "limiter.db"
    code = textwrap.dedent(
        """
        import os, sys
        import sqlalchemy.dialects.sqlite.pysqlite  # imported while root may read them
        from collet_limiter import Limiter, LimiterError
        os.setgid(65534)
        os.setuid(65534)
        try:
            Limiter(sys.argv[1])
        except LimiterError as exc:
            print(type(exc).__name__, exc)
        """
    )
    with Limiter(db, config=MANY) as limiter:
        lease = limiter.acquire("p/m")
        db.chmod(0o644)
        result = subprocess.run(
            [sys.executable, "-c", code, str(db)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        no_driver_error(result.stderr)
        assert result.stdout.strip() == (
            f"DatabaseUnavailableError cannot use database {db}: Permission denied"
        ), result.stdout + result.stderr
        assert rows(db, "SELECT count(*) FROM leases") == [(1,)]
        lease.release()


# --- a stalled writer, a foreign lock --------------------------------------------------------


@contextlib.contextmanager
def foreign_write_lock(db: Path) -> Iterator[None]:
    """Another program (plain sqlite3, not a limiter) holds the database's write lock."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_foreign_write_lock_is_a_busy_error_after_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "limiter.db"
    config = make_config(limiter={"busy_timeout_ms": 300})
    with Limiter(db, config=config) as limiter:
        lease = limiter.acquire("p/m")
        with foreign_write_lock(db):
            started = time.monotonic()
            with pytest.raises(DatabaseBusyError) as caught:
                _held4 = limiter.acquire("p/m", timeout=0)
            # Bounded by the busy timeout (0.3 s) for the claim; generous for a loaded host.
            assert time.monotonic() - started < 10
        assert str(caught.value) == (
            f"database {db} stayed locked by another process beyond the busy timeout; raise "
            "[limiter] busy_timeout_ms or find the process holding a long transaction"
        )
        lease.release()


def test_a_stalled_writer_does_not_make_acquire_outlive_its_timeout(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """A process stopped inside its write (SIGSTOP, a debugger) holds the writer lock.

    ``acquire(timeout=1)`` must end within its timeout or the busy timeout, not hang for as long
    as the other process stalls: the writer lock (``flock`` on ``<db>.lock``) is waited for at
    most ``busy_timeout_ms`` (it had no bound before 4055aaf).
    """
    db = tmp_path / "limiter.db"
    Limiter(db).close()
    stalled = start(
        children,
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1] + '.lock', os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('LOCKED', flush=True)\n"
        "time.sleep(600)\n",
        str(db),
    )
    first_line(stalled, "LOCKED")
    stalled.send_signal(signal.SIGSTOP)
    code = textwrap.dedent(
        """
        import sys, time
        from collet_limiter import Limiter, LimiterError, load_config
        limiter = Limiter(sys.argv[1], config=load_config(sys.argv[2]))
        started = time.monotonic()
        try:
            _held5 = limiter.acquire("p/m", timeout=1)
            print("GRANTED")
        except LimiterError as exc:
            print(type(exc).__name__, exc)
        """
    )
    config = write_config(tmp_path / "c.toml", "[limiter]\nbusy_timeout_ms = 500\n")
    try:
        result = subprocess.run(
            [sys.executable, "-c", code, str(db), str(config)],
            capture_output=True,
            text=True,
            timeout=10,  # start-up, then 1 s of timeout or 0.5 s of busy timeout: ample
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("acquire(timeout=1) still waiting after 10 s behind a stalled writer")
    assert result.stdout.strip() == (
        f"DatabaseBusyError database {db}: another process held its writer lock ({db}.lock) "
        "for more than the busy timeout of 500 ms; it may be stopped or stuck (check `fuser` on "
        "the lock file), or raise [limiter] busy_timeout_ms"
    ), result.stdout + result.stderr


# --- races -----------------------------------------------------------------------------------


def test_a_renewal_racing_a_release_does_not_call_the_released_lease_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat took its list of leases just before the holder released one.

    Found by the soak (a "lease N was lost" warning right after a clean release; fixed in
    4055aaf). The interleaving is forced through the writer lock (``<db>.lock``), held here as
    another process would hold it: the release waits for it first, then the renewal lists the
    lease (still held) and queues behind the release, which deletes the row before the renewal
    writes.
    """
    db = tmp_path / "limiter.db"
    with Limiter(db, config=MANY) as limiter:
        lease = limiter.acquire("p/m")
        lock_path = Path(f"{db}.lock")
        lock = os.open(lock_path, os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            release = threading.Thread(target=lease.release)
            release.start()
            wait_until(
                lambda: flock_waiters(lock_path) == [os.getpid()],
                "the release to wait for the writer lock",
            )
            renewed: list[list[Any]] = []
            renewal = threading.Thread(target=lambda: renewed.append(limiter.renew()))
            renewal.start()
            wait_until(lambda: _blocked_inside_renew(renewal), "the renewal to wait its turn")
        finally:
            os.close(lock)  # lets the release write, then the renewal
        release.join(TIMEOUT)
        renewal.join(TIMEOUT)
        assert not release.is_alive() and not renewal.is_alive()
        assert rows(db, "SELECT count(*) FROM leases") == [(0,)]
        assert lease.released
        assert renewed == [[]], "the renewal reported the released lease lost"
        assert not lease.lost, "a lease released cleanly was reported lost"
        assert not [r for r in caplog.records if "was lost" in r.getMessage()]


def _blocked_inside_renew(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in ``Limiter.renew`` below its first line (it has listed the leases
    it renews: the list is its first step) and waits there in something renew called."""
    frame = sys._current_frames().get(thread.ident or -1)
    depth = 0
    while frame is not None:
        if frame.f_code is Limiter.renew.__code__:
            return depth > 0
        frame, depth = frame.f_back, depth + 1
    return False


# --- a second config -------------------------------------------------------------------------


def test_a_second_process_with_another_config_rewrites_the_limits_and_warns(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    db = tmp_path / "limiter.db"
    two = make_config(models=[{"name": "m", "concurrency_limit": 2}])
    with Limiter(db, config=two) as limiter:
        first, second = limiter.acquire("p/m"), limiter.acquire("p/m")
        config = write_config(
            tmp_path / "other.toml", '[[models]]\nname = "m"\nconcurrency_limit = 1\n'
        )
        other = start(children, HOLDER, str(db), str(config), "q/other")
        first_line(other, "HELD")
        _, err = finish(other)
        assert "the database held another config; wrote" in err and "other.toml" in err, err
        no_driver_error(err)
        assert rows(db, "SELECT concurrency_limit FROM models WHERE model = 'm'") == [(1,)]
        assert rows(db, "SELECT count(*) FROM leases WHERE model = 'm'") == [(2,)]  # kept
        first.release()
        with pytest.raises(AcquireTimeout):  # 1 held, the new limit is 1
            _held6 = limiter.acquire("p/m", timeout=0)
        second.release()
        limiter.acquire("p/m", timeout=0).release()
