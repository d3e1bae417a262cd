"""Other users on the host: files they plant beside the database, datagrams they forge, and
watching hundreds of holders.

Root ignores file permissions, so the tests that run as root check the ownership rule itself:
the planted files are readable and writable by everyone, and still refused. Other users are
real: files are given to ``nobody`` (uid 65534) with ``chown`` and senders are processes that
``setuid`` to it.
"""

from __future__ import annotations

import ast
import contextlib
import grp
import hashlib
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collet_limiter import DatabaseUnavailableError, Limiter
from collet_limiter._files import Sharing
from collet_limiter._identity import process_start
from collet_limiter._wake import (
    MAX_WATCHED,
    PidWatch,
    WakeSocket,
    WriterLock,
    notify,
    watch_limit,
)

from .conftest import make_config

if TYPE_CHECKING:
    from collections.abc import Iterator

NOBODY = 65534  # nobody, whose primary group is nogroup (65534)
DAEMON = 1  # daemon: another user, in no group of nobody's
TIMEOUT = 30  # seconds for anything a test waits on; never reached when all is well

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")

ROOT = Path(__file__).resolve().parents[1]

# The refusals, as docs/reliability.md lists them (a test below checks it does).
FOREIGN = (
    "refusing database <db>: <file> belongs to nobody (uid 65534), not to you, and whoever owns "
    "a file of the database can stall or steer every limiter using it; have that file removed "
    "(only its owner or root can remove it from a sticky directory such as /tmp) or choose "
    "another --db path"
)
FOREIGN_IN_GROUP = (
    "refusing database <db>: <file> belongs to nobody (uid 65534) with gid 0, not to a member "
    "of [limiter] group 'nogroup' with that group, and whoever owns a file of the database can "
    "stall or steer every limiter using it; have that file removed (only its owner or root can "
    "remove it from a sticky directory such as /tmp) or choose another --db path"
)
LINKED_LOCK = (
    "refusing database <db>: its lock file <db>.lock is a symbolic link, which someone may have "
    "planted to make you lock another file; remove the link or choose another --db path"
)


def render(message: str, db: Path, file: Path | None = None) -> str:
    if file is not None:
        message = message.replace("<file>", str(file))
    return message.replace("<db>", str(db))


def shared_tmp(tmp_path: Path) -> Path:
    """A directory like /tmp: every user may create files in it, and only delete their own."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Owner and content digest of each file in ``directory``."""
    return {
        path.name: (path.lstat().st_uid, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def plant(path: Path, data: bytes = b"", *, uid: int = NOBODY, gid: int = NOBODY) -> None:
    """A file another user made: open to everyone, so only its owner can make it refused."""
    path.write_bytes(data)
    path.chmod(0o666)
    os.chown(path, uid, gid)


# --- files another user made -----------------------------------------------------------------


@ROOT_ONLY
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", ".lock"])
def test_a_file_of_the_database_that_another_user_owns_is_refused_and_left_as_it_was(
    tmp_path: Path, suffix: str
) -> None:
    db = shared_tmp(tmp_path) / "limiter.db"
    with Limiter(db) as limiter:
        limiter.acquire("p/m").release()
    foreign = db.with_name(db.name + suffix)
    if suffix:
        plant(foreign, os.urandom(4096) if suffix == "-wal" else b"")
    else:
        os.chown(db, NOBODY, NOBODY)
    before = snapshot(db.parent)
    with pytest.raises(DatabaseUnavailableError) as caught:
        Limiter(db).close()
    assert str(caught.value) == render(FOREIGN, db, foreign)
    assert (caught.value.file, caught.value.owner) == (str(foreign), NOBODY)  # type: ignore[attr-defined]
    assert snapshot(db.parent) == before


HOLD_AS_NOBODY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
os.fchmod(fd, 0o666)
os.fchown(fd, 65534, 65534)
os.setgid(65534)
os.setuid(65534)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", os.getuid(), flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_nobody(path: Path) -> Iterator[None]:
    """A process of ``nobody`` holds ``flock`` on ``path``, its own file, until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_AS_NOBODY, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["held", str(NOBODY)]
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=TIMEOUT)
        assert child.stdout is not None
        child.stdout.close()


@ROOT_ONLY
def test_a_lock_file_another_user_holds_is_refused_at_once_instead_of_stalling_every_write(
    tmp_path: Path,
) -> None:
    """Without the check, the acquire waits out the busy timeout behind the other user's lock
    and fails with DatabaseBusyError; with it, the limiter refuses to open."""
    db = shared_tmp(tmp_path) / "limiter.db"
    lock = db.with_name("limiter.db.lock")
    config = make_config(limiter={"busy_timeout_ms": 1000})
    with (
        held_by_nobody(lock),
        pytest.raises(DatabaseUnavailableError) as caught,
        Limiter(db, config=config) as limiter,
    ):
        _held1 = limiter.acquire("p/m", timeout=0)
    assert str(caught.value) == render(FOREIGN, db, lock)
    assert not db.exists()  # refused before anything was created


def test_a_symbolic_link_planted_as_the_lock_file_is_refused(tmp_path: Path) -> None:
    """Even one of our own: a link would make the limiter lock (or keep open) another file."""
    db = tmp_path / "limiter.db"
    Limiter(db).close()
    target = tmp_path / "elsewhere"
    target.write_text("not a lock file\n")
    lock = db.with_name("limiter.db.lock")
    lock.unlink()
    lock.symlink_to(target)
    before = snapshot(tmp_path)
    with pytest.raises(DatabaseUnavailableError) as caught:
        Limiter(db).close()
    assert str(caught.value) == render(LINKED_LOCK, db)
    assert snapshot(tmp_path) == before
    assert lock.is_symlink()


def test_the_writer_lock_opens_its_file_without_following_a_link(tmp_path: Path) -> None:
    """The check on open (``O_NOFOLLOW``), for a link planted after the database was checked."""
    db = tmp_path / "limiter.db"
    target = tmp_path / "elsewhere"
    target.write_text("not a lock file\n")
    db.with_name("limiter.db.lock").symlink_to(target)
    with pytest.raises(DatabaseUnavailableError) as caught:
        WriterLock(db, Sharing())
    assert str(caught.value) == render(LINKED_LOCK, db)
    assert target.read_text() == "not a lock file\n"


@ROOT_ONLY
def test_files_of_another_member_of_the_shared_group_with_its_gid_are_used(tmp_path: Path) -> None:
    shared = make_config(limiter={"group": "nogroup"})
    db = tmp_path / "limiter.db"
    Limiter(db, config=shared).close()
    nogroup = grp.getgrnam("nogroup").gr_gid
    for name in ("limiter.db", "limiter.db.lock"):
        os.chown(tmp_path / name, NOBODY, nogroup)
    with Limiter(db, config=shared) as limiter:
        limiter.acquire("p/m").release()


@ROOT_ONLY
def test_with_a_shared_group_a_file_without_the_groups_gid_is_refused(tmp_path: Path) -> None:
    shared = make_config(limiter={"group": "nogroup"})
    db = tmp_path / "limiter.db"
    Limiter(db, config=shared).close()
    lock = db.with_name("limiter.db.lock")
    os.chown(lock, NOBODY, 0)
    with pytest.raises(DatabaseUnavailableError) as caught:
        Limiter(db, config=shared).close()
    assert str(caught.value) == render(FOREIGN_IN_GROUP, db, lock)


def test_reliability_md_lists_each_refusal() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    for message in (FOREIGN, FOREIGN_IN_GROUP, LINKED_LOCK):
        shown = message.replace("<file>", "<db>.lock").replace("nobody (uid 65534)", "<user>")
        assert shown in doc, f"docs/reliability.md does not list: {shown}"


# --- wake-ups from other users ---------------------------------------------------------------

SEND_AS = """
import os, socket, struct, sys
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[1]))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(struct.pack("!q", int(sys.argv[4])), b"\\0" + sys.argv[3].encode())
"""


def send_as(uid: int, gid: int, address: str, ticket: int) -> None:
    """A process of user ``uid`` (group ``gid``) sends ``ticket`` to the wake socket."""
    subprocess.run(
        [sys.executable, "-c", SEND_AS, str(uid), str(gid), address, str(ticket)],
        check=True,
        timeout=TIMEOUT,
    )


def drain_until(wake: WakeSocket, ticket: int) -> set[int]:
    """Every ticket drained until ``ticket`` arrives (datagrams are queued in send order)."""
    received: set[int] = set()
    with selectors.DefaultSelector() as selector:
        selector.register(wake.fileno(), selectors.EVENT_READ)
        deadline = time.monotonic() + TIMEOUT
        while ticket not in received:
            assert selector.select(deadline - time.monotonic()), f"ticket {ticket} never came"
            received |= wake.drain()
    return received


@ROOT_ONLY
def test_a_wake_up_forged_by_another_user_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="collet_limiter")
    wake = WakeSocket()
    try:
        assert wake.address is not None
        send_as(NOBODY, NOBODY, wake.address, 666)  # sent, and queued, before ours
        notify([(wake.address, 7)])
        assert drain_until(wake, 7) == {7}
        assert wake.rejected == 1
        assert f"wake socket {wake.address}: dropped a datagram from pid" in caplog.text
        assert f"uid {NOBODY} gid {NOBODY} (not this user)" in caplog.text
    finally:
        wake.close()


@ROOT_ONLY
def test_with_a_shared_group_only_wake_ups_from_the_group_are_taken() -> None:
    wake = WakeSocket(sharing=Sharing("nogroup"))
    try:
        assert wake.address is not None
        send_as(DAEMON, DAEMON, wake.address, 13)  # another user, outside the group
        send_as(NOBODY, NOBODY, wake.address, 5)  # a member of nogroup
        assert drain_until(wake, 5) == {5}
        assert wake.rejected == 1
    finally:
        wake.close()


# --- watching many holders -------------------------------------------------------------------

SLEEPERS = 80  # more than the 64 watched before 2026-12


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """80 real processes of this host, each reaped at the end."""
    children = [subprocess.Popen(["sleep", "600"]) for _ in range(SLEEPERS)]
    try:
        yield children
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=TIMEOUT)


def holders_of(children: list[subprocess.Popen[bytes]]) -> list[tuple[int, float]]:
    holders = []
    for child in children:
        start = process_start(child.pid)
        assert start is not None
        holders.append((child.pid, start))
    return holders


def readable(fds: list[int], count: int) -> set[int]:
    """Wait until ``count`` of the pidfds ``fds`` are readable (their processes exited)."""
    with selectors.DefaultSelector() as selector:
        for fd in fds:
            selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + TIMEOUT
        ready: set[int] = set()
        while len(ready) < count:
            events = selector.select(deadline - time.monotonic())
            assert events, f"only {len(ready)} of {count} exits seen"
            ready |= {key.fd for key, _ in events}
        return ready


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3+)")
def test_more_than_64_holders_are_all_watched_and_each_exit_is_seen(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    holders = holders_of(sleepers)
    watch = PidWatch()
    try:
        assert watch.max_watched >= SLEEPERS, "raise the soft open-files limit (ulimit -n)"
        assert not watch.update(holders)
        assert (len(watch.fds()), watch.complete) == (SLEEPERS, True)
        gone = holders[-3:]  # the last ones, beyond the old cap of 64
        for child in sleepers[-3:]:
            child.send_signal(signal.SIGKILL)
        exited = readable(watch.fds(), 3)
        assert exited == {watch._fds[holder] for holder in gone}
        watch.exited(exited)
        watch.update(holders[:-3])
        assert (len(watch.fds()), watch.complete) == (SLEEPERS - 3, True)
    finally:
        watch.close()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3+)")
def test_a_watch_at_its_cap_says_it_is_incomplete(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    """So that its limiter keeps sweeping for the holders it does not watch."""
    watch = PidWatch(max_watched=64)
    try:
        watch.update(holders_of(sleepers))
        assert (len(watch.fds()), watch.complete) == (64, False)
    finally:
        watch.close()


def test_the_watch_cap_is_a_quarter_of_the_open_files_limit_and_at_least_64() -> None:
    assert [watch_limit(n) for n in (16, 256, 1024, 20_000)] == [64, 64, 256, 5_000]
    assert watch_limit(10**9) == watch_limit(resource.RLIM_INFINITY) == MAX_WATCHED
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert PidWatch().max_watched == watch_limit(soft)


def test_nothing_in_the_wake_module_uses_select_select() -> None:
    """select.select cannot take a descriptor above 1023, and hundreds of pidfds reach there."""
    tree = ast.parse((ROOT / "src" / "collet_limiter" / "_wake.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "select" not in imported


def test_wake_datagrams_are_received_with_their_senders_credentials() -> None:
    """Runs as any user: our own datagrams pass, and the socket asks for credentials."""
    wake = WakeSocket()
    try:
        assert wake.address is not None and wake._sock is not None
        assert wake._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
        notify([(wake.address, 42)])
        assert drain_until(wake, 42) == {42}
        assert wake.rejected == 0
    finally:
        wake.close()
