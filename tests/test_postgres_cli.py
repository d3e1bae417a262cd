"""The command line on PostgreSQL: doctor's server report, a missing group, passwords, bad servers.

The behavioural tests of every command run on both backends in the other test_cli_* files; these
are about what only a server has: a URL with a password, a server that cannot be reached, the
group's schema, the server's clock and LISTEN/NOTIFY.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import TYPE_CHECKING, Any

import pytest

from collet_limiter._doctor import CLOCK_NOTE_MS, clock_verdict
from collet_limiter._schema import SCHEMA_REVISION

from .cli_helpers import CONFIG, run_cli
from .conftest import fresh_group
from .pgserver import PASSWORD, PASSWORD_USER
from .sql import rows

if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from .pgserver import PgServer

WRONG_PASSWORD = "wr0ng-Pa55word-x"
# Every command that opens the database, with the arguments it needs ("watch" once, plainly).
READING = [["status"], ["leases"], ["explain", "zai/glm-5"], ["watch", "--count", "1"], ["reap"]]
JSON = [["status", "--json"], ["leases", "--json"], ["explain", "zai/glm-5", "--json"]]
WRITING = [["init"], ["run", "-m", "zai/glm-5", "--", "true"], ["reap", "--json"]]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def new_group(server: PgServer) -> str:
    """A new group's name on ``server`` (nothing is created)."""
    match = re.search(r"schema=(\w+)", fresh_group(server))
    assert match is not None
    return match.group(1)


def schemas(server: PgServer) -> set[str]:
    return {str(row[0]) for row in rows(server.url(), "SELECT nspname FROM pg_namespace")}


def free_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("collet-limiter: ")
    return lines[0]


# --- passwords ------------------------------------------------------------------------------------


def test_a_password_in_the_url_appears_in_no_output_of_any_command(
    pg_server: PgServer, config: Path
) -> None:
    """-v, so the limiter's log lines are checked too; the URL is also given by the env."""
    url = pg_server.password_url(new_group(pg_server))
    outputs: list[str] = []
    for command in [*WRITING, *READING, *JSON, ["doctor"], ["doctor", "--json"]]:
        result = run_cli("--db", url, "--config", str(config), "-v", *command)
        assert result.returncode == 0, (command, result.stderr)
        outputs += [result.stdout, result.stderr]
    env_result = run_cli("status", "--json", env={**os.environ, "COLLET_LIMITER_DB": url})
    assert env_result.returncode == 0, env_result.stderr
    assert json.loads(env_result.stdout)["db"].startswith(
        f"postgresql+psycopg://{PASSWORD_USER}:***@"
    )
    outputs += [env_result.stdout, env_result.stderr]
    for text in outputs:
        assert PASSWORD not in text
    assert any(f"{PASSWORD_USER}:***@" in text for text in outputs)


@pytest.mark.parametrize("command", [*READING, *WRITING, ["doctor"], ["doctor", "--json"]])
def test_a_wrong_password_is_one_line_naming_the_server_and_never_shows_the_password(
    pg_server: PgServer, config: Path, command: list[str]
) -> None:
    group = new_group(pg_server)
    url = pg_server.password_url(group).replace(PASSWORD, WRONG_PASSWORD)
    result = run_cli("--db", url, "--config", str(config), "-v", *command)
    for text in (result.stdout, result.stderr):
        assert WRONG_PASSWORD not in text and PASSWORD not in text
    if command[0] == "doctor":  # a finding, reported like any other problem
        assert (result.returncode, result.stderr) == (1, "")
        said = result.stdout
    else:
        assert (result.returncode, result.stdout) == (4, "")
        said = assert_one_clean_line(result.stderr)
    assert f"127.0.0.1:{pg_server.port}" in said
    assert "password authentication failed" in said
    assert group not in schemas(pg_server)


@pytest.mark.parametrize("command", [*READING, *WRITING, ["doctor"]])
def test_an_unreachable_server_is_one_line_naming_it_without_a_traceback(
    config: Path, command: list[str]
) -> None:
    # A Limiter retries for the busy timeout: 1 s instead of the default 10 is as conclusive.
    config.write_text(CONFIG + "\n[limiter]\nbusy_timeout_ms = 1000\n")
    port = free_port()
    url = f"postgresql+psycopg://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
    # -q: a Limiter (init, run) retries for the busy timeout and logs a warning as it starts to;
    # the error is then the one line left. Without -q every line still starts with our prefix.
    result = run_cli("--db", url, "--config", str(config), "-q", *command, timeout=60)
    for text in (result.stdout, result.stderr):
        assert PASSWORD not in text
    if command[0] == "doctor":
        assert (result.returncode, result.stderr) == (1, "")
        assert f"server       127.0.0.1:{port}: not reachable" in result.stdout
        assert f"problem: cannot connect to database server 127.0.0.1:{port}" in result.stdout
        return
    assert (result.returncode, result.stdout) == (4, "")
    line = assert_one_clean_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "refused" in line.lower()


# --- a group that does not exist ------------------------------------------------------------------


# status, leases, watch and explain answer from the config instead: tests/test_first_minute.py.
@pytest.mark.parametrize("command", [["reap"], ["reap", "--json"]])
def test_reaping_a_group_that_does_not_exist_says_so_and_creates_nothing(
    pg_server: PgServer, command: list[str]
) -> None:
    group = new_group(pg_server)
    result = run_cli("--db", pg_server.url(group), *command)
    assert (result.returncode, result.stdout) == (4, "")
    line = assert_one_clean_line(result.stderr)
    assert f"no limiter group '{group}' on " in line
    assert "'collet-limiter init' creates it" in line
    assert group not in schemas(pg_server)


# --- init and doctor ------------------------------------------------------------------------------


def test_init_creates_the_group_and_doctor_reports_the_server(
    pg_server: PgServer, config: Path
) -> None:
    group = new_group(pg_server)
    url = pg_server.url(group)
    status, out = _json(run_cli("--db", url, "--config", str(config), "init", "--json"))
    assert (status, out["created"], out["ok"], out["exists"]) == (0, True, True, True)
    assert group in schemas(pg_server)
    assert (
        _json(run_cli("--db", url, "--config", str(config), "init", "--json"))[1]["created"]
        is False
    )

    status, found = _json(run_cli("--db", url, "--config", str(config), "doctor", "--json"))
    version = rows(pg_server.url(), "SHOW server_version")[0][0]
    assert status == 0, found["problems"]
    assert (found["backend"], found["schema"], found["server_version"]) == (
        "postgresql",
        group,
        version,
    )
    assert (found["schema_revision"], found["expected_revision"]) == (SCHEMA_REVISION,) * 2
    assert found["server"] == f"{pg_server.sockets}:{pg_server.port}"
    assert abs(found["clock_offset_ms"]) < CLOCK_NOTE_MS  # one host: the same clock
    assert found["listen_notify"] is True
    # Three models: local/solo has no row until someone asks for it.
    assert (found["max_agents"], found["models"], found["leases"]) == (3, 3, 0)
    assert found["config_differs"] is False
    # No SQLite file checks on a server.
    assert [found[key] for key in ("journal_mode", "file_mode", "filesystem", "size")] == [None] * 4
    assert found["network_filesystem"] is False

    text = run_cli("--db", url, "--config", str(config), "doctor")
    assert text.returncode == 0, text.stdout
    assert (
        f"  server       {pg_server.sockets}:{pg_server.port}, PostgreSQL {version}\n"
        in text.stdout
    )
    assert f"  group        schema {group}: {SCHEMA_REVISION} (current)\n" in text.stdout
    assert re.search(r"^  clock        the server's is .* this host's$", text.stdout, re.MULTILINE)
    assert "  LISTEN       works\n" in text.stdout
    assert "journal mode" not in text.stdout and "filesystem" not in text.stdout
    assert text.stdout.rstrip().endswith("ok: no problems found")


def test_doctor_on_a_group_that_does_not_exist_reports_it_and_creates_nothing(
    pg_server: PgServer,
) -> None:
    group = new_group(pg_server)
    status, found = _json(run_cli("--db", pg_server.url(group), "doctor", "--json"))
    assert (status, found["exists"], found["schema_revision"]) == (1, False, None)
    assert found["listen_notify"] is True and found["server_version"]
    assert found["problems"] == [
        (
            f"the limiter group (schema '{group}') does not exist yet: 'collet-limiter init' "
            "creates it (so does the first acquire)"
        )
    ]
    assert group not in schemas(pg_server)


def _json(result: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, Any]]:
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize(
    ("offset_ms", "ttl", "verdict"),
    [
        (0.0, 60, None),
        (-999.0, 60, None),
        (1500.0, 60, "note"),
        (-14_999.0, 60, "note"),
        (15_001.0, 60, "problem"),
        (-2_600.0, 10, "problem"),
    ],
)
def test_a_clock_difference_is_a_note_past_a_second_and_a_problem_past_a_quarter_ttl(
    offset_ms: float, ttl: float, verdict: str | None
) -> None:
    found = clock_verdict(offset_ms, ttl)
    assert (found and found[0]) == verdict
    if found is not None:
        side = "ahead of" if offset_ms > 0 else "behind"
        assert found[1].startswith(
            f"the server's clock is {abs(offset_ms):.0f} ms {side} this host's"
        )
