"""``collet-limiter run`` as a user runs it: a real process gating a real command.

Every test runs on SQLite and on PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from .cli_helpers import (
    CONFIG,
    TIMEOUT,
    cli_command,
    holding,
    lease_holders,
    query,
    run_cli,
    wait_until,
    waiter_count,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def run_args(database: Path | str, config: Path, *args: str) -> list[str]:
    return ["--db", str(database), "--config", str(config), "run", *args]


@pytest.mark.parametrize("status", [0, 1, 3, 42, 255])
def test_run_exits_with_the_commands_exit_status(
    database: Path | str, config: Path, status: int
) -> None:
    result = run_cli(
        *run_args(database, config, "--model", "zai/glm-5", "--", "sh", "-c", f"exit {status}")
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert lease_holders(database) == []


def test_the_status_is_collected_even_when_sigchld_was_ignored_by_the_parent(
    database: Path | str, config: Path
) -> None:
    """An ignored SIGCHLD survives exec; left so, the kernel would reap the command itself."""
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'collet_limiter', *sys.argv[1:]])\n"
    )
    argv = run_args(database, config, "-m", "zai/glm-5", "--", "sh", "-c", "sleep 0.2; exit 5")
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (5, "")


def test_a_command_killed_by_a_signal_gives_128_plus_the_signal(
    database: Path | str, config: Path
) -> None:
    result = run_cli(
        *run_args(database, config, "-m", "zai/glm-5", "--", "sh", "-c", "kill -KILL $$")
    )
    assert result.returncode == 128 + signal.SIGKILL
    assert lease_holders(database) == []


def test_the_commands_output_passes_through_untouched(database: Path | str, config: Path) -> None:
    payload = "line one\n\ttabbed \x1b[1mbold\x1b[0m\nno newline at the end"
    result = run_cli(
        *run_args(database, config, "-m", "zai/glm-5", "--", "printf", "%s", payload),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, payload, "")


def test_the_command_gets_stdin_and_runs_without_a_shell(
    database: Path | str, config: Path
) -> None:
    result = run_cli(
        *run_args(
            database,
            config,
            "-m",
            "zai/glm-5",
            "--",
            "python3",
            "-c",
            "import sys; print(sys.argv[1:], sys.stdin.read())",
            "$HOME",
            "a b",
            "*",
        ),
        stdin="from stdin",
    )
    assert result.stdout == "['$HOME', 'a b', '*'] from stdin\n", result.stderr


ENV_SCRIPT = "import os; print(*(os.environ.get('COLLET_LIMITER_' + n) for n in ('PROVIDER', 'MODEL', 'KEY', 'VIA', 'PRIMARY')))"


def test_the_command_learns_which_model_it_was_granted(database: Path | str, config: Path) -> None:
    granted = run_cli(
        *run_args(database, config, "-m", "zai/glm-5", "--", "python3", "-c", ENV_SCRIPT)
    )
    assert granted.stdout.split() == ["zai", "glm-5", "zai/glm-5", "primary", "zai/glm-5"]
    with holding(database, "zai/glm-5", config=config):
        chain = run_cli(
            *run_args(
                database,
                config,
                "-m",
                "zai/glm-5",
                "--fallback",
                "claude/sonnet",
                "--",
                "python3",
                "-c",
                ENV_SCRIPT,
            )
        )
        capability = run_cli(
            *run_args(database, config, "-m", "zai/glm-5", "--", "python3", "-c", ENV_SCRIPT)
        )
    assert chain.stdout.split() == ["claude", "sonnet", "claude/sonnet", "chain", "zai/glm-5"]
    assert capability.stdout.split() == ["zai", "glm-4.7", "zai/glm-4.7", "capability", "zai/glm-5"]


def test_an_agent_files_chain_is_used(database: Path | str, config: Path, tmp_path: Path) -> None:
    agent = tmp_path / "coder.md"
    agent.write_text("---\nname: coder\nproviders: claude/sonnet\n---\nYou write code.\n")
    with holding(database, "zai/glm-5", config=config):
        result = run_cli(
            *run_args(
                database,
                config,
                "-m",
                "zai/glm-5",
                "--agent",
                str(agent),
                "--",
                "python3",
                "-c",
                ENV_SCRIPT,
            )
        )
    assert result.stdout.split()[2:4] == ["claude/sonnet", "chain"], result.stderr


def test_a_timeout_runs_nothing_and_exits_75(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with holding(database, "local/solo", config=config):
        result = run_cli(
            *run_args(
                database, config, "-m", "local/solo", "--timeout", "0.3", "--", "touch", str(marker)
            )
        )
        assert waiter_count(database) == 0
    assert result.returncode == 75
    assert not marker.exists()
    assert result.stdout == ""
    assert "no permit for local/solo within 0.3s" in result.stderr
    assert "nothing was run" in result.stderr


def test_timeout_exit_code_changes_the_status_like_flock_e(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    with holding(database, "local/solo", config=config):
        result = run_cli(
            *run_args(
                database,
                config,
                "-q",
                "-m",
                "local/solo",
                "--timeout",
                "0",
                "--timeout-exit-code",
                "9",
                "--",
                "true",
            )
        )
    assert (result.returncode, result.stderr.count("\n")) == (9, 1)


def test_a_queued_run_starts_when_the_holder_finishes(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    with holding(database, "local/solo", config=config) as holder:
        waiter = subprocess.Popen(
            cli_command(
                *run_args(database, config, "-m", "local/solo", "--", "python3", "-c", ENV_SCRIPT)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: waiter_count(database) == 1, what="the second run to queue")
        holder.terminate()
        out, err = waiter.communicate(timeout=TIMEOUT)
    assert waiter.returncode == 0, err
    assert out.split()[2:4] == ["local/solo", "queue"]
    assert "queueing for the primary" in err


# A command that handles one signal (argv[3]) by recording it and who sent it, then exits 7.
CHILD_TRAPS = textwrap.dedent(
    """
    import os, signal, sys, time
    def stop(signum, frame):
        open(sys.argv[1], "w").write(f"{signum} {os.getppid()}")
        sys.exit(7)
    signal.signal(int(sys.argv[3]), stop)
    open(sys.argv[2], "w").write("ready")
    time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_run_reaches_the_child_and_the_lease_goes_after_it(
    database: Path | str, config: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    got, ready = tmp_path / "got", tmp_path / "ready"
    run = subprocess.Popen(
        cli_command(
            *run_args(
                database, config, "-m", "zai/glm-5", "--holder", "trapper", "--",
                sys.executable, "-c", CHILD_TRAPS, str(got), str(ready), str(int(signum)),
            )
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(ready.exists, what="the child to start")
        assert lease_holders(database) == ["trapper"]
        run.send_signal(signum)
        _, err = run.communicate(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(TIMEOUT)
    assert got.read_text() == f"{int(signum)} {run.pid}"  # from run, to its child
    assert run.returncode == 7, err  # the child's own status, after it handled the signal
    assert lease_holders(database) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_queued_gives_the_ticket_back_and_runs_nothing(
    database: Path | str, config: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    marker = tmp_path / "ran"
    with holding(database, "local/solo", config=config):
        waiter = subprocess.Popen(
            cli_command(
                *run_args(database, config, "-m", "local/solo", "--", "touch", str(marker))
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: waiter_count(database) == 1, what="the run to queue")
        waiter.send_signal(signum)
        _, err = waiter.communicate(timeout=TIMEOUT)
        assert waiter_count(database) == 0
    assert waiter.returncode == 128 + signum
    assert f"{signum.name} while waiting for a permit for local/solo; nothing was run" in err
    assert not marker.exists()
    assert query(database, "SELECT count(*) FROM leases") == [(0,)]


def test_a_missing_command_is_127_and_an_unrunnable_one_126(
    database: Path | str, config: Path, tmp_path: Path
) -> None:
    missing = run_cli(*run_args(database, config, "-m", "zai/glm-5", "--", "no-such-command-xyz"))
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    denied = run_cli(*run_args(database, config, "-m", "zai/glm-5", "--", str(not_executable)))
    assert (missing.returncode, missing.stderr) == (
        127,
        "collet-limiter: no-such-command-xyz: command not found\n",
    )
    assert denied.returncode == 126
    assert denied.stderr.startswith("collet-limiter: ") and "permission denied" in denied.stderr
    assert lease_holders(database) == []


def test_run_loads_neither_rich_nor_anything_it_does_not_need(
    database: Path | str, config: Path
) -> None:
    """Not rich (tables), nor alembic once the database exists: `run -- true` must start fast."""
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    code = (
        "import sys\n"
        "from collet_limiter.cli._main import run_main\n"
        f"status = run_main({run_args(database, config, '-m', 'zai/glm-5', '--', 'true')!r})\n"
        "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'alembic'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.stdout == "0 []\n", result.stderr


def test_importing_the_library_does_not_load_the_cli_framework() -> None:
    code = "import sys, collet_limiter; print(sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich'}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert result.stdout == "[]\n"


@pytest.mark.parametrize("command", ["run", "status"])
def test_the_command_line_collects_garbage_again_once_its_imports_are_done(
    database: Path | str, config: Path, command: str
) -> None:
    """The collector is off while the command line imports (start-up), then on, the imports'
    objects frozen, whatever the command: `run` may hold its permit for hours."""
    assert run_cli("--db", str(database), "--config", str(config), "init").returncode == 0
    argv = (
        run_args(database, config, "-m", "zai/glm-5", "--", "true")
        if command == "run"
        else ["--db", str(database), "--config", str(config), "status"]
    )
    code = (
        "import atexit, gc, sys\n"
        "from collet_limiter.cli import main\n"
        "atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count() > 0, "
        "file=sys.stderr))\n"
        f"main({argv!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert (result.returncode, result.stderr) == (0, "True True\n")
