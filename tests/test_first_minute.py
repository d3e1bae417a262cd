"""The first minute of a new user: looking before anything has run.

On a machine where no limiter has run there is no database (no file; on PostgreSQL no group
schema). ``status``, ``leases``, ``watch`` and ``explain`` still exit 0, show the config's models
with nothing in use, say "no database yet", and create nothing: no file, no directory, no lock
file, no schema. What they print is what they print once ``init`` has created the empty database,
but for that line and ``exists``. Anything else wrong with the database is still status 4.
The commands run as real processes; the library's ``Inspector(missing_ok=True)`` is checked too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter import (
    DatabaseUnavailableError,
    Inspector,
    Limiter,
    LimiterClosedError,
    load_config,
)
from collet_limiter._engine import resolve_target

from .cli_helpers import CONFIG, TIMEOUT, cli_command, run_cli, wait_until
from .sql import SQLITE_ONLY, execute, rows

if TYPE_CHECKING:
    from collections.abc import Iterator

MISSING = "no database yet at {db}: nothing has run; the first acquire (or 'collet-limiter init') creates it"
# Every reading command, text and JSON (watch has no JSON; once, as one plain line).
READING = [
    ["status"],
    ["status", "--json"],
    ["leases"],
    ["leases", "--json"],
    ["explain", "zai/glm-5", "--fallback", "claude/sonnet"],
    ["explain", "zai/glm-5", "--fallback", "claude/sonnet", "--json"],
    ["watch", "--count", "1"],
]
IDS = [" ".join(command) for command in READING]
PLAIN_LINE = (
    r"\d\d:\d\d:\d\d  zai/glm-5 0/1  zai/glm-4.7 0/2  claude/sonnet 0/1  global 0/3  waiting 0"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they want to be, so that rows compare whole."""
    monkeypatch.setenv("COLUMNS", "200")


def shown(database: Path | str) -> str:
    """How the commands name the database."""
    return str(database) if isinstance(database, Path) else resolve_target(database).display


def schemas(database: str) -> set[str]:
    """Every schema on the server, from information_schema (read with psycopg)."""
    return {
        str(row[0]) for row in rows(database, "SELECT schema_name FROM information_schema.schemata")
    }


def footprint(database: Path | str, tmp_path: Path) -> tuple[list[str], set[str]]:
    """Every path under tmp_path, and on PostgreSQL every schema on the server."""
    paths = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    return paths, (set() if isinstance(database, Path) else schemas(database))


def assert_nothing_created(
    database: Path | str, tmp_path: Path, before: tuple[list[str], set[str]]
) -> None:
    assert footprint(database, tmp_path) == before
    if isinstance(database, Path):
        assert not database.exists()
        assert not Path(f"{database}.lock").exists()
    else:
        group = resolve_target(database).schema
        assert group not in before[1]
        assert group not in schemas(database)


def reading(
    database: Path | str, config: Path, command: list[str]
) -> subprocess.CompletedProcess[str]:
    return run_cli("--db", str(database), "--config", str(config), *command)


# --- every reading command, before and after the database exists ---------------------------------


@pytest.mark.parametrize("command", READING, ids=IDS)
def test_reading_before_anything_ran_exits_0_shows_the_config_and_creates_nothing(
    database: Path | str, config: Path, tmp_path: Path, command: list[str]
) -> None:
    before = footprint(database, tmp_path)
    result = reading(database, config, command)
    assert (result.returncode, result.stderr) == (0, "")
    assert_nothing_created(database, tmp_path, before)

    if command[0] == "watch":
        assert re.fullmatch(PLAIN_LINE + r"  \(no database yet\)\n", result.stdout), result.stdout
    elif "--json" in command:
        assert json.loads(result.stdout)["exists"] is False
    else:
        first, rest = result.stdout.split("\n", 1)
        assert first == MISSING.format(db=shown(database))
        if command[0] == "status":
            assert "global cap 0/3 in use, 0 waiting" in rest
            assert re.search(r"zai/glm-5\s+0\s+1\s+0\s+premium\s+yes\s+api", rest)
            assert re.search(r"zai/glm-4.7\s+0\s+2\s+0\s+standard\s+yes\s+api", rest)
            assert re.search(r"claude/sonnet\s+0\s+1\s+0\s+standard\s+no\s+cli", rest)
        elif command[0] == "leases":
            assert "0 leases" in rest
        else:
            assert re.search(r"1\s+zai/glm-5\s+primary\s+yes\s+yes\s+room \(0/1 held\)", rest)
            assert "claude/sonnet   chain " in rest
            assert rest.rstrip().endswith("would take zai/glm-5 itself (room (0/1 held))")


@pytest.mark.parametrize("command", READING, ids=IDS)
def test_before_anything_ran_it_prints_what_an_empty_database_gives_but_for_saying_so(
    database: Path | str, config: Path, command: list[str]
) -> None:
    """Every field, every model and every verdict as after ``init``, but ``exists`` and the line
    saying there is no database yet."""
    missing = reading(database, config, command)
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    created = reading(database, config, command)
    assert (missing.returncode, created.returncode) == (0, 0)
    if command[0] == "watch":
        assert re.fullmatch(PLAIN_LINE + r"\n", created.stdout), created.stdout
        assert missing.stdout[8:] == created.stdout[8:-1] + "  (no database yet)\n"  # no time
    elif "--json" in command:
        before, after = json.loads(missing.stdout), json.loads(created.stdout)
        assert (before.pop("exists"), after.pop("exists")) == (False, True)
        assert before == after
        assert list(before) == list(after)
    else:
        first, rest = missing.stdout.split("\n", 1)
        assert first.startswith("no database yet at ")
        assert rest == created.stdout


def test_status_json_before_anything_ran_lists_the_configured_models_none_in_use(
    database: Path | str, config: Path
) -> None:
    result = reading(database, config, ["status", "--json"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["db"], data["exists"], data["max_agents"], data["in_use"], data["waiting"]) == (
        shown(database),
        False,
        3,
        0,
        0,
    )
    models = [
        (m["key"], m["limit"], m["in_use"], m["waiting"], m["configured"]) for m in data["models"]
    ]
    assert models == [
        ("zai/glm-5", 1, 0, 0, True),
        ("zai/glm-4.7", 2, 0, 0, True),
        ("claude/sonnet", 1, 0, 0, True),
    ]
    leases = json.loads(reading(database, config, ["leases", "--json"]).stdout)
    assert leases == {"db": shown(database), "exists": False, "leases": [], "waiters": []}


def test_explain_before_anything_ran_gives_every_eligible_candidate_room(
    database: Path | str, config: Path
) -> None:
    """A key the config does not list is judged as it would be added: by its tier's default."""
    result = reading(
        database, config, ["explain", "zai/glm-5", "--fallback", "other/thing", "--json"]
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["exists"], data["global"], data["choice"]) == (
        False,
        "global cap 0/3",
        {"key": "zai/glm-5", "via": "primary"},
    )
    assert [(c["key"], c["via"], c["eligible"], c["has_room"]) for c in data["candidates"]] == [
        ("zai/glm-5", "primary", True, True),
        ("other/thing", "chain", True, True),
        ("zai/glm-4.7", "capability", True, True),
        ("claude/sonnet", "cli", False, False),  # no tool use: not eligible, whatever the room
    ]
    assert data["candidates"][1]["reason"].startswith("fallback chain entry 1; room (0/")


# --- the default path ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", READING, ids=IDS)
def test_on_the_default_path_nothing_is_created_not_even_the_directory(
    tmp_path: Path, config: Path, command: list[str]
) -> None:
    state = tmp_path / "state"  # XDG_STATE_HOME (conftest): the default is under it
    default = state / "collet-limiter" / "limiter.db"
    result = run_cli("--config", str(config), *command)
    assert (result.returncode, result.stderr) == (0, "")
    if "--json" in command:
        data = json.loads(result.stdout)
        assert (data["db"], data["exists"]) == (str(default), False)
    elif command[0] != "watch":
        assert result.stdout.startswith(MISSING.format(db=default) + "\n")
    assert not state.exists()
    assert sorted(os.listdir(tmp_path)) == ["config.toml"]


# --- still errors ---------------------------------------------------------------------------------

STILL_ERRORS = [
    ["status"],
    ["leases", "--json"],
    ["explain", "zai/glm-5"],
    ["watch", "--count", "1"],
]


@SQLITE_ONLY
@pytest.mark.parametrize("command", STILL_ERRORS, ids=[" ".join(c) for c in STILL_ERRORS])
@pytest.mark.parametrize(
    ("prepare", "says"),
    [
        (lambda db: db.write_text("not a database"), "is not a usable collet-limiter database"),
        (
            lambda db: execute(db, "CREATE TABLE notes (body TEXT)"),
            "holds no collet-limiter schema",
        ),
        (lambda db: db.mkdir(), "it is not a regular file"),
    ],
    ids=["text-file", "another-programs-database", "directory"],
)
def test_a_path_that_is_not_a_limiter_database_is_still_status_4(
    database: Path, config: Path, command: list[str], prepare: Any, says: str
) -> None:
    prepare(database)
    result = reading(database, config, command)
    assert (result.returncode, result.stdout) == (4, "")
    [line] = result.stderr.splitlines()
    assert line.startswith("collet-limiter: ")
    assert says in line


@pytest.mark.parametrize("command", STILL_ERRORS, ids=[" ".join(c) for c in STILL_ERRORS])
def test_a_newer_schema_is_still_status_4(
    database: Path | str, config: Path, command: list[str]
) -> None:
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    execute(database, "UPDATE alembic_version SET version_num = '0099_future'")
    result = reading(database, config, command)
    assert (result.returncode, result.stdout) == (4, "")
    assert "'0099_future', written by a newer collet-limiter" in result.stderr


def test_an_explicit_path_in_a_missing_directory_is_still_status_4(
    tmp_path: Path, config: Path
) -> None:
    """Only the default path's directory is made by the first acquire: here it would fail too."""
    path = tmp_path / "typo" / "limiter.db"
    result = reading(path, config, ["status"])
    assert (result.returncode, result.stdout) == (4, "")
    assert f"no database at {path}, and its directory {path.parent} does not exist" in result.stderr
    assert not path.parent.exists()


@SQLITE_ONLY
@pytest.mark.parametrize("make", ["empty-file", "no-tables"])
def test_a_sqlite_file_without_tables_reads_as_not_created_yet_and_is_left_alone(
    database: Path, config: Path, tmp_path: Path, make: str
) -> None:
    """What the first Limiter's file looks like before its schema commits (one transaction)."""
    if make == "empty-file":
        database.touch()
    else:
        execute(database, "PRAGMA user_version = 0")  # a valid SQLite file: header, no table
    content = database.read_bytes()
    before = footprint(database, tmp_path)
    result = reading(database, config, ["status", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["exists"] is False
    assert (footprint(database, tmp_path), database.read_bytes()) == (before, content)


# --- watch picks the database up ----------------------------------------------------------------


@pytest.fixture
def watching(database: Path | str, config: Path) -> Iterator[subprocess.Popen[str]]:
    """A real ``watch`` printing a plain line every 0.1 s; stopped and reaped at the end."""
    child = subprocess.Popen(
        cli_command("--db", str(database), "--config", str(config), "watch", "-n", "0.1"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield child
    finally:
        child.terminate()
        child.communicate(timeout=TIMEOUT)


def test_watch_shows_the_database_once_the_first_acquire_creates_it(
    database: Path | str, config: Path, watching: subprocess.Popen[str]
) -> None:
    assert watching.stdout is not None
    first = watching.stdout.readline()
    assert re.fullmatch(PLAIN_LINE + r"  \(no database yet\)\n", first), first
    with Limiter(database, config=load_config(config)) as limiter, limiter.acquire("zai/glm-5"):
        deadline = time.monotonic() + 30
        while "(no database yet)" in (line := watching.stdout.readline()):
            assert time.monotonic() < deadline, "watch never saw the database"
        # From then on it reads the database: no error, and the lease shows up.
        while "zai/glm-5 1/1  " not in line:
            assert "cannot read" not in line and "no database yet" not in line, line
            assert time.monotonic() < deadline, "watch never showed the lease"
            line = watching.stdout.readline()
    assert watching.poll() is None  # still running: no error ended it


# --- the library: Inspector(missing_ok=True) -------------------------------------------------------


def test_an_inspector_with_missing_ok_answers_from_the_config_and_creates_nothing(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    loaded = load_config(config)
    before = footprint(database, tmp_path)
    with Inspector(database, config=loaded, missing_ok=True) as inspector:
        assert inspector.exists is False
        assert "(no database yet)" in repr(inspector)
        missing = (
            inspector.status(),
            inspector.leases(),
            inspector.waiters(),
            inspector.explain("zai/glm-5", ["claude/sonnet"]),
        )
        assert inspector.reap() == []  # nothing to remove, and no lock file made for it
        assert_nothing_created(database, tmp_path, before)
        assert [(m.key.as_str(), m.in_use) for m in missing[0].models] == [
            ("zai/glm-5", 0),
            ("zai/glm-4.7", 0),
            ("claude/sonnet", 0),
        ]

        Limiter(database, config=loaded).close()  # the first acquire's Limiter creates it
        found = (
            inspector.status(),
            inspector.leases(),
            inspector.waiters(),
            inspector.explain("zai/glm-5", ["claude/sonnet"]),
        )
        assert inspector.exists is True
        assert "no database yet" not in repr(inspector)
    assert missing == found


def test_without_missing_ok_an_inspector_still_refuses_a_database_not_created_yet(
    database: Path | str, tmp_path: Path
) -> None:
    before = footprint(database, tmp_path)
    with pytest.raises(DatabaseUnavailableError, match="'collet-limiter init' creates it") as info:
        Inspector(database)
    assert info.value.reason == "missing"
    assert_nothing_created(database, tmp_path, before)


def test_a_closed_inspector_refuses_to_read_even_before_the_database_exists(
    database: Path | str,
) -> None:
    inspector = Inspector(database, missing_ok=True)
    inspector.close()
    with pytest.raises(LimiterClosedError):
        inspector.status()
    with pytest.raises(LimiterClosedError):
        inspector.reap()


class Looker(threading.Thread):
    """Reads ``status`` in a loop until stopped, keeping each read's ``exists`` and any error."""

    def __init__(self, path: Path, config: Any) -> None:
        super().__init__()
        self.path, self.config = path, config
        self.stop = threading.Event()
        self.seen: list[bool] = []
        self.errors: list[Exception] = []

    def run(self) -> None:
        with Inspector(self.path, config=self.config, missing_ok=True) as inspector:
            while not self.stop.is_set():
                try:
                    inspector.status()
                except Exception as exc:  # collected, asserted by the test
                    self.errors.append(exc)
                self.seen.append(inspector.exists)


@SQLITE_ONLY
def test_looking_while_the_first_limiter_creates_the_database_is_never_an_error(
    database: Path, config: Path
) -> None:
    """The file exists a moment before its schema commits: that moment reads as not yet."""
    loaded = load_config(config)
    for attempt in range(10):
        looker = Looker(database.with_name(f"race-{attempt}.db"), loaded)
        looker.start()
        try:
            wait_until(lambda: bool(looker.seen), what="a first look")  # noqa: B023 - this round's
            Limiter(looker.path, config=loaded).close()
            wait_until(lambda: looker.seen[-1], what="the database to be seen")  # noqa: B023
        finally:
            looker.stop.set()
            looker.join(TIMEOUT)
        assert looker.errors == []
        assert looker.seen[0] is False
