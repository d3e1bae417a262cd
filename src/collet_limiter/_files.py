"""The database's files on disk: who may read and write them, and where they may live.

Every process that can write the database is trusted (see docs/reliability.md), so the files are
created owner-only by default: the directory 0700, the database and its lock file 0600 (SQLite
gives the ``-wal`` and ``-shm`` files the database's mode). With ``[limiter] group`` set, they
are shared with that group instead: the directory 2770 (setgid, so new files inherit the group),
the files 0660. A directory that every user may write without the sticky bit is refused, since
anyone could swap the database for their own.

Every file of the database (the database, its ``-wal`` and ``-shm``, and ``<db>.lock``) must
belong to the user opening it, or, with ``[limiter] group``, to a member of that group and carry
the group's gid. Whoever owns one of them can stall or steer every limiter on the database: in a
sticky shared directory such as ``/tmp`` another user can create ``limiter.db.lock`` or
``limiter.db-wal`` before us and hold a lock on it or feed SQLite a log of their own. Such a file
is refused before SQLite opens anything, and left as it is. (What is not closed: SQLite itself
creates the ``-wal`` and ``-shm`` when it opens the database and deletes them when its last
connection closes; a file planted in the moment between our check and that open is not seen.
A private directory, the default, has no such moment.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

from ._errors import (
    ConfigError,
    DatabaseCorruptError,
    DatabaseUnavailableError,
    translate_driver_errors,
)

# Filesystems on which SQLite's WAL mode (shared memory, POSIX locks) is unsafe.
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smbfs", "smb3", "sshfs", "fuse.sshfs", "9p", "afs", "ceph",
        "glusterfs", "fuse.glusterfs", "lustre", "davfs", "fuse.s3fs", "gcsfuse", "fuse.gcsfuse",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sharing:
    """Owner-only files, or files shared with one Unix group."""

    group: str | None = None

    @property
    def file_mode(self) -> int:
        """The mode of the database and lock files."""
        return 0o660 if self.group else 0o600

    @property
    def dir_mode(self) -> int:
        """The mode of a directory we create for them."""
        return 0o2770 if self.group else 0o700

    def gid(self) -> int:
        """The group's id; -1 (leave it) for owner-only files."""
        if not self.group:
            return -1
        import grp

        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ConfigError(
                f"[limiter] group = {self.group!r}: no such group on this host; create it "
                "(groupadd) and add the users who share the database, or remove the setting",
                key="limiter.group",
            ) from None


def database_files(path: Path) -> tuple[Path, Path, Path, Path]:
    """The files of the database at ``path``: itself, SQLite's ``-wal`` and ``-shm``, the lock."""
    return (
        path,
        path.with_name(path.name + "-wal"),
        path.with_name(path.name + "-shm"),
        path.with_name(path.name + ".lock"),
    )


def user_name(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid with no account."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


@functools.lru_cache(maxsize=256)
def group_member(uid: int, gid: int) -> bool:
    """Whether the user ``uid`` belongs to the group ``gid`` (as primary or listed member).

    Cached: the account databases may be remote (NSS, LDAP), and this is asked per sender of a
    wake-up. A change of membership is seen by processes started after it.
    """
    import grp

    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        return False
    if account.pw_gid == gid:
        return True
    try:
        return account.pw_name in grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def trusted_owner(uid: int, gid: int, sharing: Sharing) -> bool:
    """Whether a file owned by ``uid``:``gid`` may be a file of our database."""
    if uid == os.geteuid():
        return True
    if not sharing.group:
        return False
    shared = sharing.gid()
    return gid == shared and group_member(uid, shared)


def check_owner(db: Path, file: Path, info: os.stat_result, sharing: Sharing) -> None:
    """Refuse ``file`` (one of ``db``'s files, described by ``info``) if another user owns it."""
    if trusted_owner(info.st_uid, info.st_gid, sharing):
        return
    if sharing.group:
        whose = (
            f"{file} belongs to {user_name(info.st_uid)} with gid {info.st_gid}, not to a "
            f"member of [limiter] group {sharing.group!r} with that group"
        )
    else:
        whose = f"{file} belongs to {user_name(info.st_uid)}, not to you"
    raise DatabaseUnavailableError(
        f"refusing database {db}: {whose}, and whoever owns a file of the database can stall or "
        "steer every limiter using it; have that file removed (only its owner or root can "
        "remove it from a sticky directory such as /tmp) or choose another --db path",
        path=str(db),
        file=str(file),
        owner=info.st_uid,
        reason="file owned by another user",
    )


def linked_lock(db: Path, path: Path) -> DatabaseUnavailableError:
    """The error for a lock file ``path`` that is a symbolic link."""
    return DatabaseUnavailableError(
        f"refusing database {db}: its lock file {path} is a symbolic link, which someone may "
        "have planted to make you lock another file; remove the link or choose another --db path",
        path=str(db),
        file=str(path),
        reason="lock file is a symbolic link",
    )


def check_files(path: Path, sharing: Sharing) -> None:
    """Refuse the database if any of its files that exist belongs to another user.

    A symbolic link is judged by its own owner and by its target's: a link someone else planted
    is refused even when it points at one of our files. The lock file may not be a link at all
    (``open_lock_file`` refuses one too, but by then SQLite may have made the ``-wal``).
    """
    files = database_files(path)
    for file in files:
        try:
            info = file.lstat()
        except FileNotFoundError:
            continue
        check_owner(path, file, info, sharing)
        if stat.S_ISLNK(info.st_mode) and file == files[-1]:
            raise linked_lock(path, file)
        if stat.S_ISLNK(info.st_mode):
            with contextlib.suppress(FileNotFoundError):  # dangling: SQLite reports it
                check_owner(path, file, file.stat(), sharing)


def open_lock_file(db: Path, path: Path, sharing: Sharing) -> int:
    """Open ``db``'s lock file ``path`` for ``flock``; refuse a link, a non-file, a foreign owner.

    ``O_NOFOLLOW`` because a link planted as the lock file would make us create, lock, or keep
    open a file of someone else's choosing; the owner is checked on the open descriptor, so the
    file cannot be swapped between the check and the use.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise linked_lock(db, path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DatabaseUnavailableError(
                f"refusing database {db}: its lock file {path} is not a regular file; remove it "
                "or choose another --db path",
                path=str(db),
                file=str(path),
                reason="lock file is not a regular file",
            )
        check_owner(db, path, info, sharing)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_file(path: Path, sharing: Sharing) -> bool:
    """Create ``path`` with the sharing's mode and group; False when it already existed.

    The mode is set explicitly, so the umask cannot loosen or tighten it. ``O_EXCL`` makes
    exactly one of many processes starting at once the creator, and never follows a link (an
    existing link is an existing file). A file that existed is not checked here: its opener
    checks it (``check_files``, ``open_lock_file``).
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, sharing.file_mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, sharing.file_mode)
        if sharing.group:
            os.fchown(fd, -1, sharing.gid())
    finally:
        os.close(fd)
    return True


def _make_directory(directory: Path, sharing: Sharing) -> None:
    directory.mkdir(mode=sharing.dir_mode, parents=True, exist_ok=True)
    os.chmod(directory, sharing.dir_mode)
    if sharing.group:
        os.chown(directory, -1, sharing.gid())


def check_location(path: Path) -> None:
    """Refuse a directory anyone can swap files in."""
    directory = path.parent
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise DatabaseUnavailableError(
            f"refusing database {path}: its directory {directory} is writable by every user "
            "(and not sticky), so anyone could replace the database; use a private directory",
            path=str(path),
            reason="world-writable directory",
        )


def prepare_database(path: Path, *, create_dir: bool, sharing: Sharing) -> None:
    """Make sure the database file exists, with the sharing's permissions when we create it.

    Refuses, before SQLite opens anything, a database any of whose files belongs to another
    user (``check_files``).

    ``create_dir`` makes the parent directory when missing; it is set for the default path only,
    since a missing directory in a path the user chose is more likely a typo.
    """
    with translate_driver_errors(str(path)):
        parent = path.parent
        if not parent.is_dir():
            if not create_dir:
                raise DatabaseUnavailableError(
                    f"cannot create database {path}: directory {parent} does not exist; "
                    "create it or choose another --db path",
                    path=str(path),
                    reason="missing directory",
                )
            _make_directory(parent, sharing)
        check_location(path)
        check_files(path, sharing)
        if path.exists():
            if path.is_dir():
                raise DatabaseUnavailableError(
                    f"cannot use database {path}: it is a directory",
                    path=str(path),
                    reason="is a directory",
                )
            check_contents(path)
            return
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DatabaseUnavailableError(
                f"cannot create database {path}: directory {parent} is not writable",
                path=str(path),
                reason="directory not writable",
            )
        create_file(path, sharing)


SQLITE_HEADER: Final = b"SQLite format 3\x00"


def check_contents(path: Path) -> None:
    """Refuse a file that is not a collet-limiter database, before writing a byte to it.

    Opening would otherwise switch another program's SQLite file to WAL mode and add our tables
    to it. An empty file is fine (we, or a process starting at the same moment, just created
    it), and so is a database whose schema transaction has not committed yet: readers see it
    empty until it does.
    """
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if not header:
        return
    if header != SQLITE_HEADER:
        raise DatabaseCorruptError(
            f"{path} is not a usable collet-limiter database (file is not a database); point "
            "--db or COLLET_LIMITER_DB at another file, or move this one away",
            path=str(path),
            reason="not a SQLite file",
        )
    uri = f"file:{quote(str(path))}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    if tables and not {"alembic_version", "leases"} <= tables:
        foreign = ", ".join(sorted(tables)[:5])
        raise DatabaseCorruptError(
            f"{path} is not a usable collet-limiter database: it holds another program's tables "
            f"({foreign}); choose another --db path (it was left as it was)",
            path=str(path),
            reason="another program's database",
        )


def filesystem_type(path: Path) -> str | None:
    """The filesystem type holding ``path`` from ``/proc/self/mounts``; None when unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        prefix = mount_point.rstrip("/") + "/"
        if (target == mount_point or target.startswith(prefix)) and len(mount_point) > len(best):
            best, best_type = mount_point, parts[2]
    return best_type


def is_network_filesystem(path: Path) -> bool:
    """Whether ``path`` is on a network filesystem, where WAL mode is unsafe."""
    fs_type = filesystem_type(path if path.exists() else path.parent)
    return fs_type is not None and fs_type.lower() in NETWORK_FILESYSTEMS
