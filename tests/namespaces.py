"""Real Linux namespaces for the tests: another PID, network or mount namespace.

A worker started under ``unshare`` is a real process in a real namespace, so what the limiter
cannot see across the boundary (a PID, an abstract Unix socket) is really out of its sight.
Making namespaces needs root (CI runs as root) and util-linux ``unshare``; without them the
tests that use these skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

WORKER = str(Path(__file__).with_name("workers.py"))
TIMEOUT = 60

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and util-linux 'unshare' to make PID, network and mount namespaces",
)

# A new PID namespace (with its own /proc, so the worker sees its own PIDs); unshare forks the
# worker as that namespace's PID 1, and --kill-child kills it if unshare itself dies.
NEW_PID_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
# A new network namespace: its abstract Unix sockets are apart from everyone else's. unshare
# execs the worker itself, so the Popen's PID is the worker's.
NEW_NET_NAMESPACE = ("unshare", "--net")
# A new private mount namespace in which the command's own /proc/PID/mounts (what
# /proc/self/mounts points to) is the file given first: sh bind-mounts it over /proc/$$/mounts,
# then execs the command, which keeps sh's PID. unshare execs sh, so no process is in between.
WITH_MOUNT_TABLE = (
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'mount --bind "$1" "/proc/$$/mounts" && shift && exec "$@"',
    "sh",
)


def forked_child(launcher: subprocess.Popen[str]) -> int:
    """The PID (as seen here) of the process ``unshare --fork`` started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def pid_namespace(pid: int) -> str:
    """The PID namespace of process ``pid``, as ``/proc`` names it (``pid:[inode]``)."""
    return os.readlink(f"/proc/{pid}/ns/pid")


def start_worker(*args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
    """A ``tests/workers.py`` process started under ``prefix`` (such as ``unshare``)."""
    return subprocess.Popen(
        [*prefix, sys.executable, WORKER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reap_worker(child: subprocess.Popen[str]) -> None:
    """Kill ``child`` if it still runs, wait for it, and close its pipes."""
    if child.poll() is None:
        child.kill()
    child.wait(TIMEOUT)
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def worker(*args: str, prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen[str]]:
    """A ``tests/workers.py`` process started under ``prefix``; killed and reaped on the way out.

    Killing an ``unshare --fork`` launcher kills its worker too (``--kill-child``).
    """
    child = start_worker(*args, prefix=prefix)
    try:
        yield child
    finally:
        reap_worker(child)


def run_with_mount_table(table: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion seeing ``table`` as its mount table (``/proc/self/mounts``).

    The kernel serves the file: nothing in the command is replaced. Skips the test without root,
    ``unshare`` or ``mount``, or when making the namespace or the bind mount is refused.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs root, unshare and mount for a private mount namespace")
    result = subprocess.run(
        [*WITH_MOUNT_TABLE, str(table), *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if result.returncode != 0 and result.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()[-200:]}")
    return result
