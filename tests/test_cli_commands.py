"""The reading and housekeeping commands: status, leases, explain, reap, init, doctor, help.

Most run in-process through the same entry point as the console script (fast); the logger the
command line configures is restored after each test. The behavioural ones run on SQLite and on
PostgreSQL (the ``database`` fixture); those about SQLite files (missing files, permissions,
the journal mode, the filesystem) on SQLite only. doctor's PostgreSQL report is tested in
tests/test_postgres_cli.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from collet_limiter import AcquireTimeout, Limiter, load_config
from collet_limiter._engine import resolve_target
from collet_limiter._schema import SCHEMA_REVISION
from collet_limiter.cli import _main
from collet_limiter.cli._app import cli as click_group

from .cli_helpers import (
    CONFIG,
    ROOT,
    TIMEOUT,
    cli_command,
    query,
    run_cli,
    wait_until,
    waiter_count,
)
from .namespaces import run_with_mount_table

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

COMMANDS = list(click_group.commands)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def limiter(database: Path | str, config: Path) -> Iterator[Limiter]:
    """A Limiter in this process on the test database, to hold leases the commands then see."""
    with Limiter(database, config=load_config(config)) as opened:
        yield opened


def shown(database: Path | str) -> str:
    """How the commands name the database: its path, or its URL with the password hidden."""
    return resolve_target(database).display


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they want to be (rich folds cells to fit 80 columns otherwise)."""
    monkeypatch.setenv("COLUMNS", "200")


# --- help, version, and the docs -----------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_help(
    cli: Callable[..., tuple[int, str, str]], command: str, flag: str
) -> None:
    status, out, err = cli(command, flag)
    assert (status, err) == (0, "")
    assert out.startswith(f"Usage: collet-limiter {command} [OPTIONS]")
    assert (click_group.commands[command].help or "").strip()
    assert "--db PATH" in out and "-h, --help" in out


def test_no_command_prints_the_list_of_commands(cli: Callable[..., tuple[int, str, str]]) -> None:
    status, out, _ = cli()
    assert status == 0
    listed = re.findall(r"^  (\w+)  ", out.split("Commands:", 1)[1], flags=re.MULTILINE)
    assert listed == COMMANDS


def test_version(cli: Callable[..., tuple[int, str, str]]) -> None:
    assert cli("--version") == (0, "collet-limiter 0.1.0\n", "")


def readme_cli_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_in_the_readme_and_the_cli_guide(command: str) -> None:
    assert f"`collet-limiter {command}" in readme_cli_section()
    assert re.search(
        rf"^## `collet-limiter {command}\b", (ROOT / "docs/cli.md").read_text(), re.MULTILINE
    )


def test_the_readme_documents_every_exit_status() -> None:
    section = readme_cli_section()
    codes = {value for name, value in vars(_main).items() if name.startswith("EXIT_")}
    for code in codes - {_main.EXIT_SIGNAL_BASE}:
        assert re.search(rf"^\| {code} \|", section, re.MULTILINE), code
    assert "| 128+N |" in section


def test_the_readme_quick_start_runs_the_demo() -> None:
    text = (ROOT / "README.md").read_text()
    assert (
        ".venv/bin/collet-limiter demo" in text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    )


# doctor's PostgreSQL fields, which docs/cli.md (not edited with this change) does not list yet;
# the rows to add are proposed with the change. Empty this set once the guide has them.
NOT_YET_IN_THE_GUIDE: set[str] = set()


def documented_fields(command: str) -> set[str]:
    """The JSON field names docs/cli.md lists for a command (its backquoted `name` cells)."""
    guide = (ROOT / "docs/cli.md").read_text()
    section = guide.split(f"## `collet-limiter {command}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))


# --- status ---------------------------------------------------------------------------------------


def test_status_json_has_the_documented_fields(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, config: Path, limiter: Limiter
) -> None:
    with limiter.acquire("zai/glm-5", holder="me"):
        status, out, err = cli("--db", str(database), "status", "--json")
    assert (status, err) == (0, "")
    data = json.loads(out)
    assert set(data) == {"db", "exists", "max_agents", "in_use", "waiting", "models"}
    assert (data["db"], data["exists"], data["max_agents"], data["in_use"], data["waiting"]) == (
        shown(database),
        True,
        3,
        1,
        0,
    )
    models = {model["key"]: model for model in data["models"]}
    assert list(models) == ["zai/glm-5", "zai/glm-4.7", "claude/sonnet"]
    assert models["zai/glm-5"] == {
        "key": "zai/glm-5",
        "provider": "zai",
        "model": "glm-5",
        "limit": 1,
        "in_use": 1,
        "waiting": 0,
        "cost_tier": "premium",
        "supports_tool_use": True,
        "is_cli": False,
        "configured": True,
        "effective_limit": 1,
        "cooldown_until": None,
        "cooldown_kind": None,
        "cooldown_reason": None,
        "cooldown_left_secs": 0,
    }
    assert models["claude/sonnet"]["is_cli"] is True
    assert documented_fields("status") >= set(data) | set(models["zai/glm-5"])


def test_status_for_people_is_a_table(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter, wide: None
) -> None:
    with limiter.acquire("zai/glm-5"):
        status, out, _ = cli(
            "status", "--db", str(database)
        )  # global options work after the command
    assert status == 0
    assert "global cap 1/3 in use, 0 waiting" in out
    assert re.search(r"zai/glm-5\s+1\s+1\s+0\s+premium\s+yes\s+api", out)
    assert re.search(r"claude/sonnet\s+0\s+1\s+0\s+standard\s+no\s+cli", out)


def test_reading_does_not_write_another_config_to_the_database(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter
) -> None:
    """status without the agents' config must not reset their limits to the built-in defaults."""
    before = (
        query(database, "SELECT * FROM models ORDER BY provider, model"),
        query(database, "SELECT * FROM meta ORDER BY key"),
    )
    for command in ("status", "leases", "explain zai/glm-5", "watch --count 1", "reap", "doctor"):
        status, _, err = cli("--db", str(database), *command.split())
        assert status == 0, (command, err)
    after = (
        query(database, "SELECT * FROM models ORDER BY provider, model"),
        query(database, "SELECT * FROM meta ORDER BY key"),
    )
    assert after == before


# A missing SQLite file; the missing PostgreSQL group is in tests/test_postgres_cli.py. status,
# leases, watch and explain answer from the config instead: tests/test_first_minute.py.
@pytest.mark.parametrize("command", ["reap", "reap --json"])
def test_reaping_a_database_that_does_not_exist_is_an_error_and_creates_nothing(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "nothing-here.db"
    status, out, err = cli("--db", str(missing), *command.split())
    assert (status, out) == (4, "")
    assert err.startswith(
        f"collet-limiter: no database at {missing} yet: 'collet-limiter init' creates it"
    )
    assert os.listdir(tmp_path) == []


# --- leases ---------------------------------------------------------------------------------------


def test_leases_json_shows_holder_fallback_age_expiry_and_the_queue(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, config: Path, limiter: Limiter
) -> None:
    first = limiter.acquire("zai/glm-5", holder="first")
    second = limiter.acquire("zai/glm-5", holder="second")  # glm-5 is full: a capability fallback
    solo = limiter.acquire("local/solo", holder="solo")
    with Limiter(database, config=load_config(config)) as other:
        waiter = threading.Thread(
            target=lambda: other.acquire("local/solo", timeout=20, holder="queued").release()
        )
        waiter.start()
        try:
            wait_until(lambda: waiter_count(database) == 1, what="the waiter to queue")
            status, out, _ = cli("--db", str(database), "leases", "--json")
        finally:
            solo.release()
            waiter.join(TIMEOUT)
    first.release()
    second.release()
    assert status == 0
    data = json.loads(out)
    assert set(data) == {"db", "exists", "leases", "waiters"}
    assert (data["db"], data["exists"]) == (shown(database), True)
    by_holder = {lease["holder"]: lease for lease in data["leases"]}
    assert set(by_holder) == {"first", "second", "solo"}
    fallback = by_holder["second"]
    assert set(fallback) == {
        "id",
        "key",
        "primary",
        "via",
        "holder",
        "pid",
        "host",
        "acquired_at",
        "expires_at",
        "age_secs",
        "expires_in_secs",
        "holder_alive",
    }
    assert (fallback["key"], fallback["primary"], fallback["via"]) == (
        "zai/glm-4.7",
        "zai/glm-5",
        "capability",
    )
    assert (fallback["pid"], fallback["holder_alive"]) == (os.getpid(), True)
    assert 0 <= fallback["age_secs"] < 30 and 30 < fallback["expires_in_secs"] <= 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fallback["acquired_at"])
    [queued] = data["waiters"]
    assert set(queued) == {"id", "key", "holder", "pid", "host", "enqueued_at", "waited_secs"}
    assert (queued["key"], queued["holder"]) == ("local/solo", "queued")
    assert documented_fields("leases") >= set(data) | set(fallback) | set(queued)


def test_leases_for_people_say_what_fell_back_from_what(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter, wide: None
) -> None:
    with (
        limiter.acquire("zai/glm-5", holder="first"),
        limiter.acquire("zai/glm-5", ["claude/sonnet"], holder="second"),
    ):
        status, out, _ = cli("--db", str(database), "leases")
    assert status == 0
    assert "2 leases" in out
    assert re.search(rf"claude/sonnet\s+chain from zai/glm-5\s+second\s+{os.getpid()}\s", out)
    assert re.search(r"zai/glm-5\s+primary\s+first\s", out)


# --- explain --------------------------------------------------------------------------------------


def test_explain_lists_the_candidates_in_order_with_reasons(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter, wide: None
) -> None:
    with limiter.acquire("zai/glm-5"):
        status, out, _ = cli(
            "--db", str(database), "explain", "zai/glm-5", "--fallback", "claude/sonnet", "--json"
        )
        _, text, _ = cli("--db", str(database), "explain", "zai/glm-5")
    assert status == 0
    data = json.loads(out)
    assert set(data) == {"db", "exists", "primary", "chain", "global", "choice", "candidates"}
    assert data["exists"] is True
    assert (data["primary"], data["chain"], data["choice"]) == (
        "zai/glm-5",
        ["claude/sonnet"],
        {"key": "claude/sonnet", "via": "chain"},
    )
    assert [(c["key"], c["via"], c["eligible"], c["has_room"]) for c in data["candidates"]] == [
        ("zai/glm-5", "primary", True, False),
        ("claude/sonnet", "chain", True, True),
        ("zai/glm-4.7", "capability", True, True),
    ]
    assert data["candidates"][0]["reason"] == "full (1/1 held)"
    assert set(data["candidates"][0]) == {"key", "via", "eligible", "has_room", "reason"}
    assert documented_fields("explain") >= set(data) | set(data["candidates"][0])
    assert (
        "would fall back to zai/glm-4.7 via capability "
        "(one tier down (premium -> standard); room (0/2 held))" in text
    )
    assert re.search(
        r"3\s+claude/sonnet\s+cli\s+no\s+no\s+no tool use, which zai/glm-5 needs", text
    )


def test_explain_says_when_a_request_would_queue(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter
) -> None:
    with limiter.acquire("local/solo"):
        status, out, _ = cli("--db", str(database), "explain", "local/solo", "--json")
        _, text, _ = cli("--db", str(database), "explain", "local/solo")
    assert (status, json.loads(out)["choice"]) == (0, None)
    assert text.rstrip().endswith("would queue for local/solo (full (1/1 held))")


# --- reap -----------------------------------------------------------------------------------------


def leave_a_dead_holder(db: Path | str, config: Path) -> int:
    """A process that takes a lease and dies without releasing it; its pid."""
    code = (
        "import os, sys; from collet_limiter import Limiter, load_config\n"
        "lease = Limiter(sys.argv[1], config=load_config(sys.argv[2])).acquire('zai/glm-5', holder='doomed')\n"
        "print(os.getpid(), flush=True); os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    return int(done.stdout)


def test_reap_removes_a_dead_holders_lease_and_says_so(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, config: Path
) -> None:
    pid = leave_a_dead_holder(database, config)
    status, out, _ = cli("--db", str(database), "reap")
    assert status == 0
    assert re.fullmatch(
        rf"removed lease 1 on zai/glm-5 \(pid {pid} on [^,]+, holder 'doomed'\): holder dead\n", out
    )
    assert query(database, "SELECT count(*) FROM leases") == [(0,)]
    assert cli("--db", str(database), "reap") == (
        0,
        "nothing to reap: every lease and ticket is live\n",
        "",
    )


def test_reap_json(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, config: Path
) -> None:
    pid = leave_a_dead_holder(database, config)
    status, out, _ = cli("--db", str(database), "reap", "--json")
    data = json.loads(out)
    assert (status, data["db"]) == (0, shown(database))
    assert data["reaped"] == [
        {
            "kind": "lease",
            "id": 1,
            "key": "zai/glm-5",
            "pid": pid,
            "host": data["reaped"][0]["host"],
            "holder": "doomed",
            "reason": "holder dead",
        }
    ]
    assert documented_fields("reap") >= set(data) | set(data["reaped"][0])


# --- init and doctor ------------------------------------------------------------------------------


# The file's mode and journal mode; PostgreSQL's init and doctor: tests/test_postgres_cli.py.
def test_init_creates_the_database_and_doctor_finds_it_healthy(
    cli: Callable[..., tuple[int, str, str]], db: Path, config: Path
) -> None:
    status, out, _ = cli("--db", str(db), "--config", str(config), "init", "--json")
    created = json.loads(out)
    assert (status, created["created"], created["ok"], created["problems"]) == (0, True, True, [])
    assert (created["schema_revision"], created["journal_mode"], created["file_mode"]) == (
        SCHEMA_REVISION,
        "wal",
        "0600",
    )
    assert (created["config_source"], created["config_differs"], created["max_agents"]) == (
        str(config),
        False,
        3,
    )
    assert (
        json.loads(cli("--db", str(db), "--config", str(config), "init", "--json")[1])["created"]
        is False
    )
    status, out, _ = cli("--db", str(db), "--config", str(config), "doctor", "--json")
    checked = json.loads(out)
    assert status == 0 and checked["ok"] is True and checked["network_filesystem"] is False
    assert checked["backend"] == "sqlite"
    assert documented_fields("doctor") >= set(checked) - NOT_YET_IN_THE_GUIDE


def test_doctor_says_when_the_database_holds_another_config(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, config: Path
) -> None:
    assert cli("--db", str(database), "--config", str(config), "init")[0] == 0
    status, out, _ = cli("--db", str(database), "doctor")  # built-in defaults, not those written
    assert status == 0  # a note, not a problem
    assert re.search(
        rf"database's\s+{re.escape(str(config))}, written .*: differs from the config in use", out
    )
    assert "note: the database holds another config" in out
    assert out.rstrip().endswith("ok: no problems found")


# Problems of SQLite files; PostgreSQL's (a missing group, an unreachable server) are in
# tests/test_postgres_cli.py.
@pytest.mark.parametrize(
    ("prepare", "problem"),
    [
        (lambda db: None, "the database does not exist yet: 'collet-limiter init' creates it"),
        (lambda db: db.write_text("not a database"), "the file is not a SQLite database"),
        (
            lambda db: (db.touch(), db.chmod(0o666)),
            "the database file is writable by every user (mode 0666)",
        ),
    ],
    ids=["missing", "not-a-database", "world-writable"],
)
def test_doctor_reports_problems_and_exits_1(
    cli: Callable[..., tuple[int, str, str]],
    db: Path,
    prepare: Callable[[Path], object],
    problem: str,
) -> None:
    prepare(db)
    status, out, err = cli("--db", str(db), "doctor")
    assert (status, err) == (1, "")
    assert f"problem: {problem}" in out
    assert out.rstrip().endswith("found")


def test_doctor_reports_a_network_filesystem(
    cli: Callable[..., tuple[int, str, str]], db: Path, config: Path, tmp_path: Path
) -> None:
    """No NFS server here: the real command runs in a private mount namespace where a mount
    table naming ``nfs4`` for the database's directory is bind-mounted over its own
    ``/proc/PID/mounts``, which is what it reads. The kernel serves it; nothing is replaced."""
    assert cli("--db", str(db), "--config", str(config), "init")[0] == 0
    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {db.parent} nfs4 rw,relatime 0 0\n")
    result = run_with_mount_table(
        mounts, *cli_command("--db", str(db), "--config", str(config), "doctor")
    )
    assert result.returncode == 1, result.stderr
    assert "filesystem   nfs4 (network: WAL is unsafe)" in result.stdout
    assert (
        "problem: it is on a network filesystem (nfs4): SQLite's WAL mode needs a local one"
        in result.stdout
    )


def test_watch_prints_a_status_line_per_refresh_when_not_in_a_terminal(
    cli: Callable[..., tuple[int, str, str]], database: Path | str, limiter: Limiter
) -> None:
    with limiter.acquire("zai/glm-5"):
        status, out, _ = cli("--db", str(database), "watch", "--interval", "0.1", "--count", "3")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(
            r"\d\d:\d\d:\d\d  zai/glm-5 1/1  zai/glm-4.7 0/2  claude/sonnet 0/1  global 1/3  waiting 0",
            line,
        ), line


def test_verbose_logs_the_limiters_decisions_to_stderr(
    database: Path | str, config: Path, limiter: Limiter
) -> None:
    with limiter.acquire("zai/glm-5"):
        result = run_cli(
            "--db", str(database), "--config", str(config), "-v", "run", "-m", "zai/glm-5",
            "--", "true",
        )  # fmt: skip
    assert result.returncode == 0
    assert (
        "collet-limiter: info: zai/glm-5: falling back to zai/glm-4.7 via capability"
        in result.stderr
    )
    assert result.stdout == ""


def test_a_timeout_error_from_the_library_maps_to_75() -> None:
    assert _main.exit_code_for(AcquireTimeout("no permit")) == 75
