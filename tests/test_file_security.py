"""Other users on the host: files they plant beside the database, datagrams they forge, and
watching hundreds of holders.

Root ignores file permissions, so the tests that run as root check the ownership rule itself:
the planted files are readable and writable by everyone, and still refused. Other users are
real: files are given to ``nobody`` (uid 65534) with ``chown`` and senders are processes that
``setuid`` to it.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collet_limiter import DatabaseUnavailableError, Limiter
from collet_limiter._files import Sharing
from collet_limiter._wake import (
    WriterLock,
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
        limiter.acquire("p/m", timeout=0)
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
