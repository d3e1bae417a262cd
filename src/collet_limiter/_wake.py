"""Waking waiters without polling: push datagrams, process-exit watches, and the writer lock.

Three kernel facilities keep waiting cheap and fast; each is optional, because the queue in the
database stays the truth and a missed wake-up only costs latency until the next poll:

- A Unix datagram socket per limiter, in Linux's abstract namespace (no file to clean up), is
  recorded in its waiters' tickets. A transaction that frees room computes which waiters a claim
  would now admit and, after commit, sends each one its ticket id. Processes in another network
  namespace cannot reach the socket; they fall back to polling ``PRAGMA data_version``.
  Abstract names carry no permissions and are listed in the world-readable
  ``/proc/net/unix``, so anyone on the host can send to one. A datagram is therefore only a
  hint: the woken waiter claims in a transaction that re-reads the queue and grants only if its
  turn has come, so a forged or replayed ticket id costs a claim attempt, never a slot. Even so
  the socket takes datagrams only from this user (or root, or the shared group: see
  ``WakeSocket``), by the sender's credentials, which the kernel attaches (only root can forge
  them), so that other users cannot make waiters spin.
- A pidfd per holder on this host (Linux 5.3+) becomes readable when that process exits, so a
  crashed holder's slot is reclaimed the moment it dies instead of at the next sweep. Up to a
  quarter of the descriptor limit (``RLIMIT_NOFILE``) are watched; the rest are swept.
- An ``flock`` on ``<db>.lock`` serialises writers across processes in the kernel, which wakes
  the next writer at once. Left to itself, SQLite's busy handler sleeps 1, 2, 5, 10 ... ms
  between retries, and those sleeps are the long tails of a contended acquire.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
import struct
import threading
import time
import uuid
from typing import TYPE_CHECKING, Final

from ._files import Sharing, create_file, group_member, open_lock_file
from ._identity import forget_alive, note_alive, process_start

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

log: Final = logging.getLogger("collet_limiter")

_TICKET: Final = struct.Struct("!q")
_UCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
# At least this many holders are watched whatever the descriptor limit (the cap until 2026-12).
MIN_WATCHED: Final = 64
# And never more than this many, however high the limit is raised: each watch is a descriptor
# and an entry in the watcher's poll set; 65,536 holders on one host is far beyond any use.
MAX_WATCHED: Final = 1 << 16


def watch_limit(soft_nofile: int) -> int:
    """How many pidfds a watcher may hold under a soft ``RLIMIT_NOFILE`` of ``soft_nofile``.

    A quarter of the limit leaves the rest to the database, sockets and the caller's own files;
    the holders beyond it are left to the periodic sweep.
    """
    if soft_nofile == resource.RLIM_INFINITY or soft_nofile < 0:
        return MAX_WATCHED
    return min(MAX_WATCHED, max(MIN_WATCHED, soft_nofile // 4))


class WakeSocket:
    """The datagram socket a limiter's waiters are woken on.

    It takes datagrams only from senders the kernel vouches for (``SO_PASSCRED``): this
    process's user, root (who can rewrite the database anyway, so a datagram gives it nothing),
    and, with ``sharing`` naming a ``[limiter] group``, any sender whose gid is that group's or
    whose user is a member of it (the users the database is shared with). Others are dropped,
    counted in ``rejected`` and logged at debug level. A datagram remains only a hint either
    way: a woken waiter always re-reads the queue before it is granted anything.
    """

    def __init__(self, sharing: Sharing | None = None) -> None:
        self.address: str | None = None
        self.rejected = 0  # datagrams dropped because of their sender
        self._sock: socket.socket | None = None
        self._group = sharing.gid() if sharing is not None and sharing.group else -1
        if not hasattr(socket, "AF_UNIX"):
            return
        name = f"collet-limiter/{uuid.uuid4().hex}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            # Before the bind, so that no datagram can arrive without its sender's credentials.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(b"\0" + name.encode())  # abstract namespace: Linux only
        except (OSError, AttributeError):  # AttributeError: no SO_PASSCRED off Linux
            sock.close()
            return
        sock.setblocking(False)  # noqa: FBT003 - the socket API's own signature
        self._sock, self.address = sock, name

    # The interface the watcher shares with ``_pglisten.PgListener``: a socket is always up.
    reconnected = False

    @property
    def connected(self) -> bool:
        """Always True: a local socket does not drop."""
        return True

    def connect(self) -> bool:
        """Nothing to do: the socket was bound when made."""
        return True

    def fileno(self) -> int:
        """The socket's descriptor (for selectors and add_reader); -1 when there is none."""
        return self._sock.fileno() if self._sock is not None else -1

    def drain(self) -> set[int] | None:
        """The ticket ids received from trusted senders since the last call (never None)."""
        tickets: set[int] = set()
        while self._sock is not None:
            try:
                data, ancillary, _flags, _address = self._sock.recvmsg(
                    64, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                break
            sender = _credentials(ancillary)
            if sender is None or not self._trusted(*sender):
                self.rejected += 1
                log.debug(
                    "wake socket %s: dropped a datagram from %s (not this user%s)",
                    self.address,
                    "pid {} uid {} gid {}".format(*sender) if sender else "an unknown sender",
                    "" if self._group < 0 else " nor the shared group",
                )
                continue
            if len(data) == _TICKET.size:
                tickets.add(_TICKET.unpack(data)[0])
        return tickets

    def _trusted(self, _pid: int, uid: int, gid: int) -> bool:
        if uid in (os.getuid(), os.geteuid(), 0):
            return True
        return self._group >= 0 and (gid == self._group or group_member(uid, self._group))

    def close(self) -> None:
        """Stop listening."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Sender:
    """One unbound datagram socket per process for sending wake-ups."""

    def __init__(self) -> None:
        self._pid = -1
        self._sock: socket.socket | None = None

    def send(self, targets: Iterable[tuple[str, int]]) -> None:
        for address, ticket in targets:
            if self._pid != os.getpid():  # never share a socket with a fork parent
                self.close()  # a child's copy of the parent's: closing it leaves the parent's
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)  # noqa: FBT003
                self._pid = os.getpid()
            assert self._sock is not None
            # Gone, full or unreachable: the waiter's own polling covers it.
            with contextlib.suppress(OSError):
                self._sock.sendto(_TICKET.pack(ticket), b"\0" + address.encode())

    def close(self) -> None:
        """Close the socket (at exit; a later send opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock, self._pid = None, -1


def _credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a datagram's sender from its ``SCM_CREDENTIALS``; None if absent."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            if len(data) < _UCRED.size:
                return None
            pid, uid, gid = _UCRED.unpack_from(data)
            return pid, uid, gid
    return None


_sender = _Sender()
atexit.register(_sender.close)


def notify(targets: Iterable[tuple[str, int]]) -> None:
    """Send each waiter its ticket id. Call only after the transaction that freed room commits."""
    if hasattr(socket, "AF_UNIX"):
        _sender.send(targets)


class PidWatch:
    """Process-exit watches (pidfds) on this host's holders and waiters.

    At most ``max_watched`` at once (by default ``watch_limit`` of the soft descriptor limit:
    a quarter of it, at least 64); ``complete`` is False while any holder is left unwatched, so
    that the caller keeps sweeping for them.
    """

    def __init__(self, max_watched: int | None = None) -> None:
        self.supported = hasattr(os, "pidfd_open")
        self.complete = True  # every holder worth watching is watched
        if max_watched is None:
            max_watched = watch_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.max_watched = max_watched
        self._fds: dict[tuple[int, float], int] = {}

    def fds(self) -> list[int]:
        """The descriptors to wait on; one becomes readable when its process exits.

        There may be hundreds, numbered above 1023: wait on them with ``selectors`` or
        ``select.poll``, never ``select.select``, which cannot take such descriptors.
        """
        return list(self._fds.values())

    def exited(self, fds: Iterable[int]) -> None:
        """After a wait on ``fds()``: the processes behind the readable ones have exited, and
        the others were alive just now (remembered briefly, so claims skip reading /proc)."""
        ready = set(fds)
        alive = []
        for holder, fd in self._fds.items():
            if fd in ready:
                forget_alive(holder[0])
            else:
                alive.append(holder)
        note_alive(alive)

    def update(self, holders: Iterable[tuple[int, float]]) -> bool:
        """Watch exactly ``holders`` (not this process); True if one is already dead."""
        wanted = {h for h in holders if h[0] != os.getpid()}
        for holder in list(self._fds):
            if holder not in wanted:
                os.close(self._fds.pop(holder))
        if not self.supported:
            self.complete = not wanted
            return False
        dead, unwatchable = False, 0
        for holder in sorted(wanted - self._fds.keys()):
            if len(self._fds) >= self.max_watched:
                break
            fd = _open_pidfd(holder)
            if fd is None:
                forget_alive(holder[0])
                dead = True
            elif fd < 0:
                unwatchable += 1
            else:
                self._fds[holder] = fd
        self.complete = len(self._fds) == len(wanted) and not unwatchable
        return dead

    def close(self) -> None:
        """Drop every watch."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _open_pidfd(holder: tuple[int, float]) -> int | None:
    """A pidfd on the holder's process; None when it is provably gone (or the PID was reused),
    -1 when it cannot be watched (permissions, descriptor limits) and must be swept instead."""
    pid, start = holder
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError:
        return -1
    try:
        alive = process_start(pid) == start
    except Exception:  # noqa: BLE001 - cannot tell: treat as alive, the sweep decides
        alive = True
    if not alive:
        os.close(fd)
        return None
    return fd


class WriterLock:
    """An exclusive ``flock`` on ``<db>.lock``, taken around every write transaction.

    The lock file sits beside the database, never on it: closing any descriptor of the database
    file would drop SQLite's own POSIX locks held by this process.

    ``flock`` cannot time out, yet a writer stopped inside its transaction (SIGSTOP, a debugger)
    must not hold everyone forever. So a contended ``acquire`` hands the blocking ``flock`` to a
    helper thread with its own open file (a lock of its own, which the kernel queues behind the
    holder's and grants the moment that is released) and waits for it with a timeout; a grant
    that nobody waits for any more is given straight back. Callers in one process take turns
    (the limiter's thread lock), so there is at most one request at a time.
    """

    def __init__(self, db: Path, sharing: Sharing) -> None:
        self.path = db.with_name(db.name + ".lock")
        self._db, self._sharing = db, sharing
        create_file(self.path, sharing)
        # Refuses a link, or a file another user made (who could hold it locked forever).
        self._fd = open_lock_file(db, self.path, sharing)
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._held = -1  # the descriptor whose lock the caller holds
        self._wanted = False
        self._closed = False
        self._helper: threading.Thread | None = None
        self._helper_fd = -1

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if another process kept it."""
        with self._cond:
            if self._try(self._fd):
                self._held = self._fd
                return True
            self._start_helper()
            self._wanted = True
            self._cond.notify_all()
            deadline = time.monotonic() + timeout
            while self._held < 0 and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._wanted = False
            return self._held >= 0

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting."""
        with self._cond:
            if self._held < 0 and self._try(self._fd):
                self._held = self._fd
                return True
            return False

    def release(self) -> None:
        """Let the next writer in."""
        with self._cond:
            fd, self._held = self._held, -1
            if fd >= 0 and not self._closed:  # closing dropped it
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file, releasing the lock if held; a blocked helper closes its own."""
        if self._pid != os.getpid():
            # In a forked child: no helper thread, a condition another thread may have held at
            # the fork, and copies of descriptors whose locks belong to the open files shared
            # with the parent (closing a copy never drops them). Only close the copies.
            if not self._closed:
                self._closed = True
                for fd in (self._fd, self._helper_fd):
                    if fd >= 0:
                        os.close(fd)
            return
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            os.close(self._fd)
            if self._helper_fd >= 0 and not helper_alive(self._helper):
                os.close(self._helper_fd)
                self._helper_fd = -1

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def _start_helper(self) -> None:
        if helper_alive(self._helper):
            return
        if self._helper_fd < 0:
            self._helper_fd = open_lock_file(self._db, self.path, self._sharing)
        self._helper = threading.Thread(
            target=self._wait_for_lock,
            args=(self._helper_fd,),
            name=f"collet-limiter {self.path.name}",
            daemon=True,
        )
        self._helper.start()

    def _wait_for_lock(self, fd: int) -> None:
        """The helper: block in ``flock`` while a caller wants the lock; hand it over or back."""
        try:
            while True:
                with self._cond:
                    while not self._closed and not (self._wanted and self._held < 0):
                        self._cond.wait()
                    if self._closed:
                        return
                fcntl.flock(fd, fcntl.LOCK_EX)  # without the GIL, queued in the kernel
                with self._cond:
                    if self._wanted and self._held < 0 and not self._closed:
                        self._held = fd
                        self._cond.notify_all()
                    else:
                        fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            with self._cond:
                if self._closed:  # the lock, if still held, goes with the descriptor
                    os.close(fd)
                    self._helper_fd = -1


def helper_alive(thread: threading.Thread | None) -> bool:
    """Whether ``thread`` exists and still runs."""
    return thread is not None and thread.is_alive()
