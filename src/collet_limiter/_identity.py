"""Who holds a lease, and proof that a holder is dead.

A holder is (host identity, PID, PID start time). Host identity is the kernel's boot id plus the
PID namespace: two containers on one kernel can share a database file but not PIDs, so a PID is
only meaningful to processes with the same identity. A holder is *provably* dead when its identity
is ours and its PID is gone, is a zombie, or now belongs to a process that started at another
time (PID reuse). Anything else (another host, a PID we may not inspect) is alive until its lease
expires.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

_PROC: Final = Path("/proc")


@dataclass(frozen=True, slots=True)
class Holder:
    """The identity a lease or ticket records for its process."""

    pid: int
    pid_start: float
    host_id: str
    hostname: str


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """This host's identity: boot id and PID namespace (Linux), else hostname and boot time."""
    try:
        boot = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink(_PROC / "self/ns/pid")
    except OSError:
        import psutil

        return f"{socket.gethostname()}:{int(psutil.boot_time())}"
    return f"{boot}:{namespace}"


def _linux_start(pid: int) -> float | None:
    """Start time in seconds since boot from ``/proc/PID/stat``; None if gone or a zombie.

    The raw clock-tick count since boot never changes for a process, unlike wall-clock
    create times, which move when the system clock is adjusted.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:  # os-level reads: this runs for every holder in the way of a contended claim
        stat = os.read(fd, 4096).decode(errors="replace")
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return None
    return start_ticks / _CLOCK_TICKS


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAVE_PROC: Final = (_PROC / "self/stat").exists()


class UnknownProcessState(Exception):  # noqa: N818 - internal signal, never raised to callers
    """The process exists but cannot be inspected (another user's, under hidepid)."""


def process_start(pid: int) -> float | None:
    """The start time of ``pid`` (None when no such live process exists).

    Raises ``UnknownProcessState`` when the PID exists but its start time cannot be read.
    """
    if _HAVE_PROC:
        try:
            start = _linux_start(pid)
        except PermissionError:
            start = None
        if start is not None:
            return start
        return None if not _pid_exists(pid) or _is_zombie(pid) else _unknown(pid)
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(float(process.create_time()), 2)
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return _unknown(pid)


def _unknown(pid: int) -> float:
    raise UnknownProcessState(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


@functools.lru_cache(maxsize=4)
def _holder_for(pid: int) -> Holder:
    start = process_start(pid)
    return Holder(pid=pid, pid_start=start or 0.0, host_id=host_id(), hostname=socket.gethostname())


def current_holder() -> Holder:
    """The identity of this process (recomputed after ``fork``, since the PID differs)."""
    return _holder_for(os.getpid())


# How long a holder seen alive is taken to be alive without looking again. Every contended claim
# asks about the holders in its way; a death is also seen at once by the watchers' pidfds, so a
# short memory of the living only spares /proc reads, and never delays a reclaim for long.
ALIVE_MEMORY_SECS: Final = 0.5
_seen_alive: dict[tuple[int, float], float] = {}


def is_provably_dead(*, holder_host: str, pid: int, pid_start: float) -> bool:
    """Whether a holder recorded as (``holder_host``, ``pid``, ``pid_start``) is certainly dead."""
    if holder_host != host_id():
        return False
    now = time.monotonic()
    if _seen_alive.get((pid, pid_start), -math.inf) > now:
        return False
    try:
        start = process_start(pid)
    except UnknownProcessState:
        return False
    dead = start is None or start != pid_start
    if dead:
        _seen_alive.pop((pid, pid_start), None)
    else:
        if len(_seen_alive) > 4096:
            _seen_alive.clear()
        _seen_alive[(pid, pid_start)] = now + ALIVE_MEMORY_SECS
    return dead


def note_alive(holders: Iterable[tuple[int, float]]) -> None:
    """Remember that these (pid, start) are alive: their pidfds were just polled, not readable.

    A watcher calls this after each wait, so claims in its process do not read ``/proc`` for
    the holders it watches (their death would have made the pidfd readable).
    """
    until = time.monotonic() + ALIVE_MEMORY_SECS
    if len(_seen_alive) > 4096:
        _seen_alive.clear()
    for holder in holders:
        _seen_alive[holder] = until


def forget_alive(pid: int) -> None:
    """Drop what is remembered of ``pid`` being alive (its exit was just observed)."""
    for holder in [h for h in _seen_alive if h[0] == pid]:
        _seen_alive.pop(holder, None)


def holder_alive(*, holder_host: str, pid: int, pid_start: float) -> bool | None:
    """True or False for a holder on this host identity; None when it cannot be known here."""
    if holder_host != host_id():
        return None
    return not is_provably_dead(holder_host=holder_host, pid=pid, pid_start=pid_start)


def new_token() -> str:
    """A random token that proves ownership of one lease or ticket."""
    return os.urandom(16).hex()  # as random as uuid4().hex, without building a UUID
