"""Every user error is one line on stderr, no traceback, and the documented exit status.

Each case runs the real program in its own process, as a user would meet the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .cli_helpers import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def bad_toml(tmp: Path) -> str:
    path = tmp / "bad.toml"
    path.write_text("[collaboration\nmax_agents = 3\n")
    return str(path)


def bad_value(tmp: Path) -> str:
    path = tmp / "zero.toml"
    path.write_text("[collaboration]\nmax_agents = 0\n")
    return str(path)


def not_a_database(tmp: Path) -> str:
    path = tmp / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 20)
    return str(path)


def bad_agent(tmp: Path) -> str:
    path = tmp / "agent.md"
    path.write_text("---\nproviders: zai/glm-5, not-a-key\n---\n")
    return str(path)


# A password in a database URL, which no message may show.
SECRET = "pg-pa55word"

# (id, arguments built from tmp_path, extra environment, exit status, what stderr says)
CASES = [
    ("bad-key", lambda t: ["run", "--model", "glm-5", "--", "true"], {}, 2, "'glm-5' is not PROVIDER/MODEL"),
    ("bad-key-explain", lambda t: ["explain", "zai/"], {}, 2, "'zai/' is not PROVIDER/MODEL"),
    ("bad-fallback", lambda t: ["run", "-m", "a/b", "--fallback", "c/d,e", "--", "true"], {}, 2, "'e' is not PROVIDER/MODEL"),
    ("unknown-command", lambda t: ["stauts"], {}, 2, "No such command 'stauts'"),
    ("unknown-option", lambda t: ["status", "--jsn"], {}, 2, "--jsn"),
    ("missing-model", lambda t: ["run", "--", "true"], {}, 2, "Missing option '--model'"),
    ("missing-command", lambda t: ["run", "-m", "a/b"], {}, 2, "Missing argument 'COMMAND...'"),
    ("negative-timeout", lambda t: ["run", "-m", "a/b", "--timeout", "-1", "--", "true"], {}, 2, "'--timeout'"),
    ("missing-config", lambda t: ["--config", str(t / "nope.toml"), "status"], {}, 3, "nope.toml: config file not found"),
    ("missing-config-env", lambda t: ["run", "-m", "a/b", "--", "true"], {"COLLET_LIMITER_CONFIG": "/nonexistent/c.toml"}, 3, "/nonexistent/c.toml: config file not found"),
    ("invalid-toml", lambda t: ["--config", bad_toml(t), "run", "-m", "a/b", "--", "true"], {}, 3, "bad.toml: invalid TOML"),
    ("invalid-value", lambda t: ["--config", bad_value(t), "status"], {}, 3, "zero.toml: collaboration.max_agents"),
    ("bad-env-cap", lambda t: ["run", "-m", "a/b", "--", "true"], {"COLLET_COLLAB_MAX_AGENTS": "lots"}, 3, "COLLET_COLLAB_MAX_AGENTS='lots'"),
    ("missing-agent", lambda t: ["run", "-m", "a/b", "--agent", str(t / "none.md"), "--", "true"], {}, 3, "none.md: agent file not found"),
    ("bad-agent-entry", lambda t: ["explain", "a/b", "--agent", bad_agent(t)], {}, 3, "'not-a-key' is not 'provider/model'"),
    ("db-missing-dir-run", lambda t: ["--db", str(t / "no" / "dir" / "l.db"), "run", "-m", "a/b", "--", "true"], {}, 4, "directory"),
    ("db-missing-dir-init", lambda t: ["--db", str(t / "no" / "dir" / "l.db"), "init"], {}, 4, "does not exist"),
    ("db-missing-reap", lambda t: ["--db", str(t / "never.db"), "reap"], {}, 4, "never.db yet"),
    ("db-missing-dir-status", lambda t: ["--db", str(t / "no" / "l.db"), "status"], {}, 4, "/no/l.db, and its directory"),
    ("db-not-a-database-run", lambda t: ["--db", not_a_database(t), "run", "-m", "a/b", "--", "true"], {}, 4, "is not a usable collet-limiter database"),
    ("db-not-a-database-status", lambda t: ["--db", not_a_database(t), "status"], {}, 4, "is not a usable collet-limiter database"),
    ("db-is-a-directory", lambda t: ["--db", str(t), "leases"], {}, 4, "not a regular file"),
    ("db-env-in-missing-dir", lambda t: ["run", "-m", "a/b", "--", "true"], {"COLLET_LIMITER_DB": "/nonexistent/dir/l.db"}, 4, "/nonexistent/dir does not exist"),
    # PostgreSQL URLs (no server needed; a wrong password and more: tests/test_postgres_cli.py).
    ("pg-psycopg2-url", lambda t: ["--db", f"postgresql+psycopg2://u:{SECRET}@h/db", "status"], {}, 3, "write the URL as postgresql+psycopg://"),
    ("pg-bad-group-name", lambda t: ["--db", f"postgresql+psycopg://u:{SECRET}@h/db?schema=Bad-Name", "doctor"], {}, 3, "'Bad-Name' is not a valid limiter group name"),
    ("pg-unreachable-env", lambda t: ["leases"], {"COLLET_LIMITER_DB": f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db"}, 4, "cannot connect to database server 127.0.0.1:1"),
    ("pg-unreachable-explain", lambda t: ["--db", f"postgresql://u:{SECRET}@127.0.0.1:1/db", "explain", "a/b"], {}, 4, "cannot connect to database server 127.0.0.1:1"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_user_error_is_one_line_and_a_documented_status(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, Callable[[Path], list[str]], dict[str, str], int, str],
) -> None:
    _, arguments, env, status, says = case
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli(*arguments(tmp_path))
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("collet-limiter: ")
    assert says in lines[0]
    assert SECRET not in result.stderr
