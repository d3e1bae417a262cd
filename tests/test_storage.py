"""Schema migrations, and database problems that must become clear errors, never driver errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from collet_limiter import (
    DatabaseCorruptError,
    DatabaseUnavailableError,
    Limiter,
    SchemaVersionError,
)
from collet_limiter._migrate import head_revision, migrations_dir
from collet_limiter._schema import SCHEMA_REVISION, metadata

from .sql import at_revision

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_reads_the_revision_the_scripts_end_at() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_the_migrated_schema_is_the_one_the_queries_use(db: Path) -> None:
    Limiter(db).close()
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_an_older_database_is_upgraded_in_place_keeping_its_rows(db: Path) -> None:
    at_revision(
        db,
        "0001_initial",
        "insert into waiters (token, provider, model, pid, pid_start, host_id, hostname, "
        "owner, enqueued_at, expires_at, enqueued_ts, expires_ts) values "
        "('t', 'p', 'm', 1, 0, 'h', 'h', 'o', 'x', 'x', 0, 9e18)",
    )
    Limiter(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            (SCHEMA_REVISION,)
        ]
        assert conn.execute("select token, wake_addr from waiters").fetchall() == [("t", None)]


def test_opening_an_up_to_date_database_does_not_import_alembic(db: Path) -> None:
    Limiter(db).close()
    code = (
        "import sys; from collet_limiter import Limiter; Limiter(sys.argv[1]).close(); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_a_database_from_a_newer_schema_is_a_clear_error(db: Path) -> None:
    Limiter(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = '0099_future'")
    with pytest.raises(
        SchemaVersionError, match="'0099_future', written by a newer collet-limiter"
    ):
        Limiter(db)
    with sqlite3.connect(db) as conn:  # nothing stored was touched
        assert conn.execute("select version_num from alembic_version").fetchall() == [
            ("0099_future",)
        ]


def test_a_file_that_is_not_a_database_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(
        DatabaseCorruptError, match="notes.db is not a usable collet-limiter database"
    ):
        Limiter(path)
    assert path.read_text().startswith("these are my notes")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="directory .*/missing does not exist"):
        Limiter(tmp_path / "missing" / "limiter.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DatabaseUnavailableError, match="not writable"):
        Limiter(locked / "limiter.db")


def test_a_database_path_that_is_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="is a directory"):
        Limiter(tmp_path)


def test_the_migrations_ship_inside_the_wheel(tmp_path: Path) -> None:
    """Build the wheel, open a new database from the unpacked wheel alone (no checkout)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("collet_limiter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "collet_limiter/migrations/env.py" in names
    assert "collet_limiter/migrations/versions/0001_initial.py" in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import sys; import collet_limiter, collet_limiter._migrate as m; "
        "from collet_limiter import Limiter; Limiter(sys.argv[1]).close(); "
        "print(collet_limiter.__file__); print(m.migrations_dir())"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.db")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, migrations = out.stdout.split()
    assert module_file.startswith(str(unpacked)) and migrations.startswith(str(unpacked))
    assert migrations_dir() != Path(migrations)
