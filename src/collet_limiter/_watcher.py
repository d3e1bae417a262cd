"""The watcher thread of a ``Runtime``: wakes its waiters when their turn may have come.

Three kernel facilities do the work (see ``_wake`` and docs/design.md): datagrams pushed by the
transactions that free room, pidfds that become readable when a holder on this host dies, and a
timer for the earliest expiry. ``PRAGMA data_version``, read at most once per poll interval, is
the backstop for what cannot be observed that way; while it finds nothing committed, its
interval doubles up to the longest poll interval, so a quiet database costs a waiting process
about one look a second. Waiting uses ``poll(2)``, never ``select(2)``, which fails on
descriptors above 1023 (long-running agent servers pass them).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import select
from typing import TYPE_CHECKING, Final

from ._core import log, monotonic
from ._engine import data_version
from ._errors import LimiterClosedError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ._claim import ClaimRequest
    from ._runtime import Runtime, Waiter

# How often the watcher sweeps for expired leases and dead holders when it watches every holder
# on this host through pidfds: deaths then wake it at once and expiries have their own timer,
# so the sweep only guards against what it cannot observe (another host's clock, a clock step).
WATCHED_SWEEP_SECS: Final = 10.0
# Pushed tickets remembered for waiters about to register; more are stale (tickets only grow).
MAX_EARLY_TICKETS: Final = 1024


class Watcher:
    """What the watcher thread knows, kept while no waiter waits, so a new waiter costs no look.

    ``early`` holds pushed tickets that arrived before their waiter registered (a release can
    commit between the claim that queued a ticket and its registration).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.conn: Connection | None = None  # the connection ``version`` was read on
        self.version = -1  # PRAGMA data_version at the last look
        self.looked = -math.inf  # when (monotonic)
        self.expiry_due = math.inf  # when the earliest lease or ticket expires (monotonic)
        # The backstop's interval now: poll_interval after a change, doubling while nothing
        # changes, up to max_poll_interval.
        self.backstop = runtime.core.poll_interval
        self.early: set[int] = set()
        # Waiters to wake at a moment of their own (monotonic), spread after a cooldown ended.
        self.delayed: list[tuple[float, Waiter]] = []

    def arm(self, waiter: Waiter, request: ClaimRequest) -> None:
        """Point ``waiter`` at its (possibly new) ticket; wake it if that was pushed already."""
        with self.rt.lock:
            waiter.request = request
            if request.ticket in self.early:
                self.early.discard(request.ticket)
                waiter.wake()

    def run(self) -> None:
        """The thread's body: runs while the runtime lives, holding a connection only while
        waiters wait."""
        rt = self.rt
        poller = select.poll()
        poller.register(rt.interrupt_r, select.POLLIN)
        while not rt.closed:
            if not rt.waiters:
                # Nothing to watch: sleep until a waiter registers or close() (both write to
                # the pipe), so an idle limiter costs no wake-ups at all.
                with contextlib.suppress(InterruptedError):
                    poller.poll()
                drain(rt.interrupt_r)
                continue
            try:
                with rt.connection() as conn:
                    self._watch_on(conn)
            except LimiterClosedError:
                return
            except Exception as exc:  # noqa: BLE001 - wake everyone: their own claims report it
                log.warning("waiter watch of %s on %s failed: %s", rt.face, rt.core.display, exc)
                self.wake(None)
                with contextlib.suppress(InterruptedError):
                    poller.poll(rt.core.max_poll_interval * 1000)

    def _watch_on(self, conn: Connection) -> None:
        rt, core = self.rt, self.rt.core
        sweep, sweep_due = False, monotonic() + core.max_poll_interval
        # A waiter's wake-up is pushed to it (or met in early); a look is the backstop, needed
        # on arrival only when the last one is older than a poll interval.
        look = monotonic() - self.looked >= core.poll_interval
        self.backstop = core.poll_interval  # a waiter just came: watch closely again
        if self.conn is not conn:  # data_version counts per connection
            self.conn, self.version = conn, -1
        engine = rt.engine
        poller = _Poller()
        listener = rt.wake_socket
        while rt.waiters and not rt.closed and rt.engine is engine:
            look = self._listening() or look
            if sweep:
                rt.reap()
                sweep, look = False, True
                interval = WATCHED_SWEEP_SECS if rt.pids.complete else core.max_poll_interval
                sweep_due = monotonic() + interval
            if look:
                look = False
                if self._look(conn):
                    sweep = True
                    continue
            pidfds = set(rt.pids.fds())
            now = monotonic()
            spread_due = min((due for due, _waiter in self.delayed), default=math.inf)
            timeout = max(
                0.0,
                min(self.backstop, sweep_due - now, self.expiry_due - now, spread_due - now),
            )
            wake_fd = listener.fileno()
            ready = poller.poll({wake_fd, rt.interrupt_r, *pidfds}, timeout)
            if wake_fd in ready:
                tickets = listener.drain()
                if tickets is None:  # the LISTEN connection dropped: look once it is back
                    look = True
                else:
                    self.wake(tickets)
            now = monotonic()
            if self.delayed:
                self._wake_delayed(now)
            if rt.interrupt_r in ready:  # a waiter registered: watch closely again
                drain(rt.interrupt_r)
                self.backstop = core.poll_interval
                look = look or now - self.looked >= core.poll_interval
            exited = ready & pidfds
            rt.pids.exited(exited)
            if exited or now >= sweep_due or now >= self.expiry_due:
                sweep, self.expiry_due = True, math.inf
            # Pushed wake-ups reach the waiters whose turn came; looking after other commits
            # is the backstop, at most once per poll interval, or every process's watcher would
            # read the queue after every commit of a busy database (less often while quiet).
            look = self._backstop(conn, now) or look

    def _backstop(self, conn: Connection, now: float) -> bool:
        """Whether to look, when the backstop's interval has passed since the last look: only
        if something changed. Each time nothing did, the interval doubles (up to the longest
        poll interval); a change brings it back to the poll interval."""
        core = self.rt.core
        if now - self.looked < self.backstop:
            return False
        if self._changed(conn, now):
            self.backstop = core.poll_interval
            return True
        self.backstop = min(self.backstop * 2, core.max_poll_interval)
        return False

    def _listening(self) -> bool:
        """(Re)connect the wake-up listener if it is down; True when it just came (back) up,
        since notifications sent while it was down were lost and the queue needs a look."""
        listener = self.rt.wake_socket
        if not listener.connected:
            listener.connect()
        if listener.reconnected:
            listener.reconnected = False
            return True
        return False

    def _changed(self, conn: Connection, now: float) -> bool:
        """Whether to look again: something was committed since the last look (SQLite's
        data_version), or, on a server, the last look is older than the longest poll interval
        (every poll interval while the LISTEN connection is down)."""
        rt, core = self.rt, self.rt.core
        if not rt.remote:
            return data_version(conn) != self.version
        listening = rt.wake_socket.connected
        interval = core.max_poll_interval if listening else core.poll_interval
        return now - self.looked >= interval

    def _look(self, conn: Connection) -> bool:
        """Wake the waiters a claim would now grant; watch the holders. True: one is dead."""
        rt, core = self.rt, self.rt.core
        self.looked = monotonic()
        # Read before looking: a commit made meanwhile is seen at the next check.
        if not rt.remote:
            self.version = data_version(conn)
        with rt.lock:
            waiters = list(rt.waiters.values())
        flags, outlook = core.could_grant(conn, [w.request for w in waiters])
        spread = core.config.limiter.cooldown_spread_ms / 1000
        for waiter, could in zip(waiters, flags, strict=True):
            if not could:
                continue
            if spread > 0 and waiter.request.primary in outlook.cooled:
                # Its model's cooldown just ended: every waiter of it, in every process, would
                # otherwise call the provider in the same millisecond.
                due = monotonic() + random.uniform(0, spread)  # noqa: S311 - not cryptographic
                self.delayed.append((due, waiter))
            else:
                waiter.wake()
        dead = rt.pids.update(outlook.holders)
        self.expiry_due = math.inf
        if outlook.next_expiry is not None:
            wait = max(0.0, outlook.next_expiry - core.estimated_now())
            self.expiry_due = monotonic() + wait + 0.001
        return dead

    def _wake_delayed(self, now: float) -> None:
        """Wake the spread-out waiters whose moment came."""
        due = [waiter for when, waiter in self.delayed if when <= now]
        if due:
            self.delayed = [(when, w) for when, w in self.delayed if when > now]
            for waiter in due:
                waiter.wake()

    def wake(self, tickets: set[int] | None) -> None:
        """Wake the waiters holding ``tickets`` (all of them for None).

        Tickets no waiter holds yet are kept for ``arm``: their waiter is about to register.
        A datagram is only a hint: a woken waiter claims, and the database decides.
        """
        rt = self.rt
        with rt.lock:
            for waiter in rt.waiters.values():
                if tickets is None or waiter.request.ticket in tickets:
                    waiter.wake()
            if tickets:
                early = self.early
                if len(early) > MAX_EARLY_TICKETS:
                    early.clear()  # tickets of waiters long gone; a real one lost costs a poll
                early.update(tickets - {w.request.ticket for w in rt.waiters.values()})


class _Poller:
    """``poll(2)`` over a set of descriptors that changes between calls."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fds: set[int] = set()

    def poll(self, fds: set[int], timeout: float) -> set[int]:
        """The descriptors of ``fds`` (negative ones ignored) readable within ``timeout`` s."""
        wanted = {fd for fd in fds if fd >= 0}
        for fd in self._fds - wanted:  # closed ones first: poll() would report them invalid
            self._poll.unregister(fd)
        for fd in wanted - self._fds:
            self._poll.register(fd, select.POLLIN)
        self._fds = wanted
        try:
            return {fd for fd, _events in self._poll.poll(timeout * 1000)}
        except InterruptedError:
            return set()


def drain(fd: int) -> None:
    """Read and drop whatever a non-blocking pipe holds."""
    with contextlib.suppress(OSError):
        while os.read(fd, 512):
            pass
