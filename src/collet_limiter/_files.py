"""The database's files on disk: who may read and write them, and where they may live.

Every process that can write the database is trusted (see docs/reliability.md), so the files are
created owner-only by default: the directory 0700, the database and its lock file 0600 (SQLite
gives the ``-wal`` and ``-shm`` files the database's mode). With ``[limiter] group`` set, they
are shared with that group instead: the directory 2770 (setgid, so new files inherit the group),
the files 0660. A directory that every user may write without the sticky bit is refused, since
anyone could swap the database for their own; a database owned by another user is used with a
warning, since that user decides everyone's limits.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

log: Final = logging.getLogger("collet_limiter")

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


def create_file(path: Path, sharing: Sharing) -> bool:
    """Create ``path`` with the sharing's mode and group; False when it already existed.

    The mode is set explicitly, so the umask cannot loosen or tighten it. ``O_EXCL`` makes
    exactly one of many processes starting at once the creator.
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
    """Refuse a directory anyone can swap files in; warn about a database someone else owns."""
    directory = path.parent
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise DatabaseUnavailableError(
            f"refusing database {path}: its directory {directory} is writable by every user "
            "(and not sticky), so anyone could replace the database; use a private directory",
            path=str(path),
            reason="world-writable directory",
        )
    with contextlib.suppress(FileNotFoundError):
        owner = path.stat().st_uid
        if owner != os.geteuid():
            log.warning(
                "database %s belongs to uid %d, not to you: whoever can write it decides the "
                "limits of every process that uses it",
                path,
                owner,
            )


def prepare_database(path: Path, *, create_dir: bool, sharing: Sharing) -> None:
    """Make sure the database file exists, with the sharing's permissions when we create it.

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
