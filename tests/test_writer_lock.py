"""The cross-process writer lock (``flock`` on ``<db>.lock``), against real other processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from collet_limiter._files import Sharing
from collet_limiter._wake import WriterLock

from .cli_helpers import wait_until
from .flocks import flock_waiters

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# A process that takes the lock, says so, and keeps it until its stdin closes.
HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""

# Exit 0 if the lock could be taken at once, 1 if another open file holds it.
PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""


@contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the lock until the block ends (or it is told to let go)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        let_go(child)


def let_go(child: subprocess.Popen[str]) -> None:
    for stream in (child.stdin, child.stdout):
        if stream is not None and not stream.closed:
            stream.close()
    child.wait(timeout=30)


def handed_over(lock: WriterLock, holder: subprocess.Popen[str]) -> bool:
    """Whether ``lock.acquire``, started while ``holder`` has the lock, gets it when it lets go."""
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(lock.acquire(30)))
    waiter.start()
    # Queued in flock behind the other process (the kernel says so): it had its chance to take
    # the lock, and must not have returned.
    wait_until(
        lambda: flock_waiters(lock.path) == [os.getpid()], what="the acquire to queue in flock"
    )
    assert not outcome
    let_go(holder)
    waiter.join(timeout=30)
    return outcome == [True]


def free_for_others(path: Path) -> bool:
    """Whether another process could take the lock right now."""
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], check=False).returncode == 0


def test_a_contended_acquire_times_out_and_leaves_nothing_held(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "limiter.db", Sharing())
    try:
        with held_elsewhere(lock.path):
            started = time.monotonic()
            assert not lock.acquire(0.3)
            assert time.monotonic() - started >= 0.3
        # The helper thread is still queued in flock; when it gets the lock nobody wants it,
        # and it must give it straight back.
        wait_until(lambda: free_for_others(lock.path), what="the unwanted grant to be given back")
    finally:
        lock.close()


def test_a_waiting_acquire_gets_the_lock_when_the_holder_lets_go(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "limiter.db", Sharing())
    try:
        with held_elsewhere(lock.path) as holder:
            assert handed_over(lock, holder)
        assert not free_for_others(lock.path)
        assert not lock.try_acquire()  # held already: a second taker in this process waits
        lock.release()
        assert free_for_others(lock.path)
        assert lock.acquire(1)  # uncontended: taken by the caller itself
        assert not free_for_others(lock.path)
        lock.release()
    finally:
        lock.close()


def test_closing_while_the_helper_waits_releases_everything(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "limiter.db", Sharing())
    with held_elsewhere(lock.path):
        assert not lock.acquire(0.1)
        lock.close()
    wait_until(lambda: free_for_others(lock.path), what="the closed lock's helper to let go")


def test_a_forked_child_closing_its_copy_keeps_the_parents_lock(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "limiter.db", Sharing())
    try:
        with held_elsewhere(lock.path) as holder:
            assert handed_over(lock, holder)  # held through the helper's descriptor
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            lock.close()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert not free_for_others(lock.path)
        lock.release()
        assert free_for_others(lock.path)
    finally:
        lock.close()
