"""Who may touch the database's files: owner-only by default, a group on request, no traps."""

from __future__ import annotations

import grp
import os
import stat
from typing import TYPE_CHECKING

import pytest

from collet_limiter import ConfigError, DatabaseUnavailableError, Limiter

from .conftest import make_config

if TYPE_CHECKING:
    from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_its_lock_wal_and_shm_files_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "limiter.db"
    with Limiter(db) as limiter:
        limiter.acquire("p/m").release()
        files = [
            db,
            tmp_path / "limiter.db.lock",
            tmp_path / "limiter.db-wal",
            tmp_path / "limiter.db-shm",
        ]
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


def test_owner_only_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Limiter(tmp_path / "limiter.db").close()
    finally:
        os.umask(old)
    assert mode(tmp_path / "limiter.db") == 0o600


def test_a_group_shares_the_files_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = grp.getgrgid(os.getgid() if os.getgid() != 0 else grp.getgrnam("users").gr_gid)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "shared"))
    with Limiter(config=make_config(limiter={"group": group.gr_name})) as limiter:
        limiter.acquire("p/m").release()
        db = tmp_path / "shared/collet-limiter/limiter.db"
        assert mode(db) == 0o660 and db.stat().st_gid == group.gr_gid
        assert mode(db.with_name("limiter.db.lock")) == 0o660
        assert mode(db.parent) == 0o2770 and db.parent.stat().st_gid == group.gr_gid


def test_an_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such group"):
        Limiter(tmp_path / "x.db", config=make_config(limiter={"group": "no-such-group-here"}))


def test_a_directory_anyone_can_write_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(DatabaseUnavailableError, match="writable by every user"):
        Limiter(open_dir / "limiter.db")
    assert not (open_dir / "limiter.db").exists()


def test_a_shared_sticky_directory_like_tmp_is_accepted(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    Limiter(sticky / "limiter.db").close()
