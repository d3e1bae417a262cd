"""The command line in a real terminal: tmux runs it in a pane, sends keys, and reads the screen.

Each test has its own tmux server (its own socket under tmp_path, no user config), killed at the
end. A command's exit status is written to a file by the pane's shell, since the pane goes away
when its command ends. Each test runs on SQLite and on PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from .cli_helpers import CONFIG, cli_command, holding, lease_holders, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Terminal:
    """One tmux session running one shell command in a 150x45 pane."""

    def __init__(self, socket: Path, status_file: Path) -> None:
        self.socket = socket
        self.status_file = status_file

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def start(self, argv: list[str]) -> None:
        # The pane inherits COLUMNS=80 and LINES=24 from somewhere in the harness; rich would
        # believe them over the pane's real size.
        shell = f"unset COLUMNS LINES; {shlex.join(argv)}; echo $? > {shlex.quote(str(self.status_file))}; sleep 60"
        self.tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "45", shell)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        try:
            wait_until(lambda: text in self.screen(), timeout=timeout, what=f"{text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen shows:\n{self.screen()}") from None

    def exit_status(self, timeout: float = 30) -> int:
        wait_until(
            lambda: self.status_file.exists() and self.status_file.read_text().strip() != "",
            timeout=timeout,
            what="the command to exit",
        )
        return int(self.status_file.read_text())


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path / "tmux.sock", tmp_path / "status")
    yield term
    subprocess.run(
        ["tmux", "-S", str(term.socket), "kill-server"],
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_watch_shows_a_lease_live_and_quits_cleanly(
    terminal: Terminal, database: Path | str, config: Path, key: str
) -> None:
    with holding(database, "zai/glm-5", config=config, holder="held-for-tmux"):
        terminal.start(
            cli_command(
                "--db", str(database), "--config", str(config), "watch", "--interval", "0.2"
            )
        )
        terminal.wait_for_text("held-for-tmux")
        screen = terminal.screen()
        assert "zai/glm-5" in screen and "global cap 1/3 in use" in screen
        assert "q or Ctrl-C quits" in screen
        terminal.keys(key)
        assert terminal.exit_status() == 0
    screen = terminal.screen()
    assert "held-for-tmux" not in screen  # the alternate screen is gone: the terminal is restored
    assert "Traceback" not in screen


def test_watch_follows_leases_as_they_come_and_go(
    terminal: Terminal, database: Path | str, config: Path
) -> None:
    with holding(database, "zai/glm-5", config=config, holder="first-holder"):
        terminal.start(
            cli_command("--db", str(database), "--config", str(config), "watch", "-n", "0.2")
        )
        terminal.wait_for_text("first-holder")
    wait_until(lambda: lease_holders(database) == [], what="the holder to release")
    wait_until(lambda: "first-holder" not in terminal.screen(), what="the view to drop the lease")
    assert "0 leases" in terminal.screen()
    terminal.keys("q")
    assert terminal.exit_status() == 0


# A command that counts the SIGINTs it gets within a second of the first one.
COUNTS_SIGINT = textwrap.dedent(
    """
    import signal, sys, time
    got = []
    signal.signal(signal.SIGINT, lambda *_: got.append(time.monotonic()))
    print("child waiting for Ctrl-C", flush=True)
    while not got or time.monotonic() - got[0] < 1.0:
        time.sleep(0.02)
    open(sys.argv[1], "w").write(str(len(got)))
    """
)


def test_ctrl_c_in_a_terminal_reaches_the_command_once(
    terminal: Terminal, database: Path | str, config: Path, tmp_path: Path
) -> None:
    """The terminal sends Ctrl-C to the whole foreground group: run must not send it again."""
    count = tmp_path / "sigints"
    terminal.start(
        cli_command(
            "--db",
            str(database),
            "--config",
            str(config),
            "run",
            "-m",
            "zai/glm-5",
            "--",
            sys.executable,
            "-c",
            COUNTS_SIGINT,
            str(count),
        )
    )
    terminal.wait_for_text("child waiting for Ctrl-C")
    terminal.keys("C-c")
    assert terminal.exit_status() == 0
    assert count.read_text() == "1"
    assert lease_holders(database) == []
