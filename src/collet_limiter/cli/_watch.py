"""``collet-limiter watch``: a live view that can stay open for hours.

One Inspector (one connection pool) serves every refresh, and each frame is built afresh and
replaces the last, so nothing accumulates. The terminal is put in cbreak mode to read ``q``
without Enter (Ctrl-C still raises SIGINT), and restored on the way out however the loop ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import TYPE_CHECKING

import click

from ._tables import live_view, make_console, plain_snapshot

if TYPE_CHECKING:
    from collections.abc import Iterator

    from collet_limiter import Inspector

QUIT_KEYS = frozenset(b"qQ")


class Keyboard:
    """Reads single keys from a terminal on stdin; on anything else it only sleeps."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait_for_quit(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True as soon as q is pressed."""
        if self.fd is None:
            time.sleep(timeout)
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return False
            data = os.read(self.fd, 64)
            if not data:  # end of input: nothing more will ever be pressed
                self.fd = None
                time.sleep(max(0.0, deadline - time.monotonic()))
                return False
            if QUIT_KEYS.intersection(data):
                return True
        return False


@contextlib.contextmanager
def keyboard() -> Iterator[Keyboard]:
    """Single-key input from stdin while the block runs, when stdin is a terminal."""
    stream = sys.stdin
    if stream is None or not stream.isatty():
        yield Keyboard(None)
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; ISIG stays, so Ctrl-C works
        yield Keyboard(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch(inspector: Inspector, *, interval: float, count: int | None) -> int:
    """Refresh every ``interval`` seconds until q, Ctrl-C or ``count`` refreshes; exit status."""
    console = make_console()
    try:
        if not console.is_terminal:
            return _plain(inspector, interval=interval, count=count)
        from rich.live import Live

        footer = f"every {interval:g}s · q or Ctrl-C quits"
        with (
            keyboard() as keys,
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            shown = 0
            while True:
                live.update(live_view(inspector, footer=footer), refresh=True)
                shown += 1
                if (count is not None and shown >= count) or keys.wait_for_quit(interval):
                    return 0
    except KeyboardInterrupt:
        return 0


def _plain(inspector: Inspector, *, interval: float, count: int | None) -> int:
    shown = 0
    while True:
        click.echo(plain_snapshot(inspector))
        shown += 1
        if count is not None and shown >= count:
            return 0
        time.sleep(interval)
