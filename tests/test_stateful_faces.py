"""Both public faces on one database, with real waiting threads and tasks, against the reference.

Each example runs on a fresh SQLite file, or on a fresh group (schema) on the session's
PostgreSQL server: the tests are parametrized over both backends.

A hypothesis ``RuleBasedStateMachine`` opens a few ``Limiter``s and ``AsyncLimiter``s (the async
ones on an event loop running in a thread) on one database with a fake clock, and drives them
only through the public API: ``acquire_with_fallback``; waiters blocked in ``acquire_wait`` or
``acquire`` (fallback, then the queue), with or without a timeout, on a thread or as a task;
releases; cancelling a task that waits; timeouts that expire (real, short); a holder that stops
renewing while the fake clock passes its TTL, then ``reap``; closing a limiter (its waiters are
told, its leases go) and opening another in its place.

Whatever frees room (a release, a discard, a close, a reap) grants the waiters the walk of the
queue admits in that same transaction, and so does the reference (``Reference.serve``): right
after a release or a close returns, the tables already hold the leases granted, before any
waiter wakes. Waiting and timeouts use real time, so after each step the machine lets the system
settle: it waits, up to a deadline and never for a fixed time, until the tables hold exactly what
the reference holds and every waiter the reference granted has returned that lease. Meanwhile,
an observer that trusts nothing the limiters say reads the ``leases`` table with the database's
own driver (``tests/look.py``) at every poll: no model above its limit, no more leases in all
than the cap. Invariants: the tables equal the reference (each lease and ticket by its holder
label, so a granted waiter holds exactly one lease and nothing is stranded), the queue is in
arrival order, and each model's waiters were granted in that order.

The mutation tests at the end break the global cap, the tier rule of the capability fallback and
reaping in the pure modules the faces share, and check that this machine notices.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from collet_limiter import (
    Acquired,
    AcquireTimeout,
    AsyncLimiter,
    Config,
    Limiter,
    LimiterClosedError,
    ModelKey,
    QueueWait,
)

from .conftest import FakeClock, fresh_group
from .facades import LoopThread
from .look import Look
from .reference import Reference
from .strategies import (
    chains,
    configs,
    face_kinds,
    request_keys,
    short_timeouts,
    tiered_configs,
    waiter_timeouts,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .pgserver import PgServer

# Hypothesis's explain phase traces every line run, which through SQLAlchemy and threads turns
# seconds into minutes; failures are reported without it.
NO_EXPLAIN = tuple(phase for phase in Phase if phase is not Phase.explain)
TTL: Final = 3600.0  # fake seconds; the heartbeat's real period (TTL/3) never comes in a run
# How long a step may take to settle. A deadline, not a sleep: a step settles in milliseconds,
# and only a stuck waiter (a bug) ever waits this long.
SETTLE_SECS: Final = 10.0
POLL_SECS: Final = 0.001  # between two looks at the tables while settling
MAX_BLOCKED: Final = 5  # waiters blocked at once


def make_template(directory: Path) -> Path:
    """A migrated, empty database to copy for each run (migrating costs more than a step)."""
    path = directory / "template.db"
    Limiter(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


class Face:
    """One limiter, sync or async, behind the same blocking calls; its name is its owner."""

    def __init__(self, name: str, limiter: Any, loop: LoopThread | None) -> None:
        self.name, self.limiter, self.loop = name, limiter, loop
        self.closed = False

    @property
    def is_async(self) -> bool:
        return self.loop is not None

    def __repr__(self) -> str:
        return f"<{'async' if self.is_async else 'sync'} {self.name}>"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a limiter method and return its result (awaited on the loop when async)."""
        if self.loop is None:
            return getattr(self.limiter, method)(*args, **kwargs)

        async def run() -> Any:
            return await getattr(self.limiter, method)(*args, **kwargs)

        return self.loop.run(run())

    def start(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Start a blocking acquire on a new thread, or as a task on the loop; its future."""
        if self.loop is not None:

            async def wait() -> Any:
                return await getattr(self.limiter, method)(*args, **kwargs)

            return asyncio.run_coroutine_threadsafe(wait(), self.loop.loop)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(getattr(self.limiter, method)(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name=f"waiter-{self.name}", daemon=True).start()
        return future

    def release(self, lease: Any) -> None:
        if self.loop is None:
            lease.release()
        else:
            self.loop.run(lease.release())

    def close(self) -> None:
        self.closed = True
        self.call("close")


@dataclass
class Held:
    """A lease the test holds, by its holder label (the token the reference knows it by)."""

    face: Face
    lease: Any
    ref_id: int  # the reference's id of the lease


@dataclass
class Blocked:
    """A waiter started on a thread or as a task, and what the reference expects of it."""

    label: str
    face: Face
    key: ModelKey
    fallback: bool
    future: concurrent.futures.Future[Any]
    arrival: int  # also the reference's id of its ticket, if it queues
    queued: bool = False  # it left a ticket (else it was granted at once)
    # None: still waiting; "lease": granted; "closed", "cancelled": it must end so.
    expect: str | None = None


@dataclass
class Order:
    """Per model, the arrival numbers of waiters granted from the queue and of those left."""

    granted: dict[ModelKey, list[int]] = field(default_factory=dict)


class FacesMachine(RuleBasedStateMachine):
    """Drives sync and async limiters on one database; see the module docstring."""

    workdir: ClassVar[Path]
    # SQLite: a migrated database to copy for each example. PostgreSQL: the server on which each
    # example opens a fresh group (schema), migrated by its first limiter.
    template: ClassVar[Path | None] = None
    server: ClassVar[PgServer | None] = None
    settle_secs: ClassVar[float] = SETTLE_SECS
    configs: ClassVar[st.SearchStrategy[Config]] = configs

    def __init__(self) -> None:
        super().__init__()
        self.dir: Path | None = None
        self.db: Path | str
        if self.server is not None:
            self.db = fresh_group(self.server)
        else:
            assert self.template is not None
            self.dir = Path(tempfile.mkdtemp(dir=self.workdir))
            self.db = self.dir / "limiter.db"
            shutil.copy(self.template, self.db)
        self.clock = FakeClock()
        self.loop = LoopThread()
        self.faces: list[Face] = []
        self.names = (f"f{n}" for n in itertools.count())
        self.ids = itertools.count(1)
        self.held: dict[str, Held] = {}
        self.blocked: dict[str, Blocked] = {}
        self.order = Order()
        self.ref: Reference | None = None
        self.config: Config | None = None
        self.pool: list[ModelKey] = []
        self.look = Look(self.db)

    # --- helpers ----------------------------------------------------------------------------

    @property
    def model(self) -> Reference:
        assert self.ref is not None
        return self.ref

    @property
    def open_faces(self) -> list[Face]:
        return [face for face in self.faces if not face.closed]

    def open_face(self, is_async: bool) -> Face:
        assert self.config is not None
        options: dict[str, Any] = {
            "config": self.config,
            "clock": self.clock,
            "lease_ttl": TTL,
            "poll_interval": 0.002,
            "max_poll_interval": 0.05,
        }
        name = next(self.names)
        if is_async:
            face = Face(name, AsyncLimiter(self.db, **options), self.loop)
            face.call("open")
        else:
            face = Face(name, Limiter(self.db, **options), None)
        self.model.open_with(self.config)
        self.faces.append(face)
        return face

    def keys(self, data: st.DataObject) -> tuple[ModelKey, list[ModelKey]]:
        """A primary (half the time one of two hot keys, so that they fill up) and a chain."""
        hot = st.sampled_from(self.pool[:2])
        return data.draw(hot | st.sampled_from(self.pool)), data.draw(chains(self.pool))

    def new_label(self) -> tuple[int, str]:
        n = next(self.ids)
        return n, f"h{n}"

    def model_claim(
        self,
        face: Face,
        label: str,
        ref_id: int,
        primary: ModelKey,
        chain: list[ModelKey],
        *,
        fallback: bool,
        enqueue: bool,
    ) -> Any:
        """The reference's outcome for a fresh request by ``face``, labelled ``label``."""
        assert self.config is not None
        return self.model.claim(
            self.config,
            face.name,
            primary,
            chain,
            fallback=fallback,
            enqueue=enqueue,
            ticket=None,
            tokens=(label, label),
            new_lease=self.model.last_lease + 1,  # what AUTOINCREMENT hands out
            new_ticket=ref_id,  # a place in the queue: arrival order
        )

    def hold(self, label: str, face: Face, lease: Any) -> None:
        assert lease.holder == label, (lease, label)
        ref_id = self.model.lease_for(label)
        assert ref_id is not None, f"{label} holds {lease}, which the reference does not"
        self.held[label] = Held(face, lease, ref_id)

    # --- observing --------------------------------------------------------------------------

    def table_leases(self) -> tuple[dict[str, tuple[ModelKey, str]], list[str | None]]:
        """The leases table by holder label, and every label as stored (to find duplicates)."""
        rows = self.look.execute("SELECT holder, provider, model, via FROM leases").fetchall()
        return {h: (ModelKey(p, m), via) for h, p, m, via in rows}, [row[0] for row in rows]

    def table_queue(self) -> list[tuple[str, ModelKey]]:
        """The waiters table in queue order: (holder label, key)."""
        rows = self.look.execute("SELECT holder, provider, model FROM waiters ORDER BY id")
        return [(h, ModelKey(p, m)) for h, p, m in rows]

    def expected_leases(self) -> dict[str, tuple[ModelKey, str]]:
        return {h.token: (h.key, h.via) for h in self.model.leases.values()}

    def expected_queue(self) -> list[tuple[str, ModelKey]]:
        return [(t.token, t.key) for _, t in sorted(self.model.tickets.items())]

    def check_limits(self) -> None:
        """The observer: counts from the leases table, never from a limiter."""
        held = Counter(
            {
                ModelKey(p, m): n
                for p, m, n in self.look.execute(
                    "SELECT provider, model, count(*) FROM leases GROUP BY provider, model"
                )
            }
        )
        problems = self.model.within_limits(held, sum(held.values()))
        assert problems == [], problems

    def check_no_early_grant(self) -> None:
        """A waiter the reference keeps waiting has neither ended nor a lease row."""
        leases, _ = self.table_leases()
        for label, waiter in self.blocked.items():
            if waiter.expect is None:
                assert label not in leases, f"{label} was granted {leases[label]} out of turn"
                if waiter.future.done():
                    outcome = waiter.future.exception() or waiter.future.result()
                    raise AssertionError(f"{label} ended while it should wait: {outcome!r}")

    def settled(self) -> bool:
        leases, labels = self.table_leases()
        if len(labels) != len(set(labels)):
            return False
        if leases != self.expected_leases() or self.table_queue() != self.expected_queue():
            return False
        if not all(w.future.done() for w in self.blocked.values() if w.expect is not None):
            return False
        # Each waiter the reference keeps waiting is registered with its limiter (its repr
        # counts it), so that a close now tells it at once rather than at its next safety claim.
        waiting = Counter(w.face.name for w in self.blocked.values() if w.expect is None)
        return all(
            f"waiting {waiting[face.name]}>" in repr(face.limiter) for face in self.open_faces
        )

    def check_granted_at_once(self) -> None:
        """Right after a step that freed room: the tables hold what it granted, before waking."""
        leases, _ = self.table_leases()
        assert leases == self.expected_leases(), "the grant is not in the same transaction"
        assert self.table_queue() == self.expected_queue(), "the queue is not served at once"

    def settle(self) -> None:
        """Wait until the system holds what the reference holds, every grant returned."""
        assert self.model.serve() == [], "a step freed room without serving the queue"
        granted = {h.token for h in self.model.leases.values()}
        for label, waiter in self.blocked.items():
            if waiter.expect is None and label in granted:
                waiter.expect = "lease"
        deadline = time.monotonic() + self.settle_secs
        while True:
            self.check_limits()
            self.check_no_early_grant()
            if self.settled():
                break
            if time.monotonic() > deadline:
                _, labels = self.table_leases()
                raise AssertionError(
                    f"not settled after {self.settle_secs} s:\n"
                    f"  leases {sorted(labels, key=str)}\n  model  {sorted(self.expected_leases())}"
                    f"\n  queue  {self.table_queue()}\n  model  {self.expected_queue()}\n"
                    f"  waiters {[(w.label, w.face, w.expect, w.future) for w in self.blocked.values()]}"
                    f"\n  faces {[repr(face.limiter) for face in self.open_faces]}"
                )
            time.sleep(POLL_SECS)
        for label, waiter in list(self.blocked.items()):
            if waiter.expect is None:
                continue
            del self.blocked[label]
            if waiter.expect == "lease":
                lease = waiter.future.result(0)
                assert (lease.key, lease.via) == self.expected_leases()[label]
                self.hold(label, waiter.face, lease)
                if waiter.queued:
                    self.order.granted.setdefault(waiter.key, []).append(waiter.arrival)
                event("granted from the queue")
            elif waiter.expect == "cancelled":
                assert waiter.future.cancelled()
                event("task cancelled")
            else:
                error = waiter.future.exception(0)
                assert isinstance(error, LimiterClosedError), f"{label} not told of the close"
                event("waiter told of close")

    # --- rules ------------------------------------------------------------------------------

    @initialize(data=st.data(), kinds=face_kinds)
    def open_faces_on_one_database(self, data: st.DataObject, kinds: list[bool]) -> None:
        config = data.draw(self.configs)
        self.config = config
        self.ref = Reference(config=config, now=self.clock.now, ttl=TTL)
        self.pool = request_keys(config)
        for is_async in kinds:
            self.open_face(is_async)

    @rule(data=st.data())
    def acquire_with_fallback(self, data: st.DataObject) -> None:
        face = data.draw(st.sampled_from(self.open_faces))
        primary, chain = self.keys(data)
        ref_id, label = self.new_label()
        outcome = face.call("acquire_with_fallback", primary, chain, holder=label)
        expected = self.model_claim(
            face, label, ref_id, primary, chain, fallback=True, enqueue=False
        )
        if isinstance(outcome, Acquired):
            lease = outcome.lease
            assert (lease.key, lease.via) == expected.granted, (lease, expected)
            self.hold(label, face, lease)
        else:
            assert isinstance(outcome, QueueWait)
            assert expected.granted is None, f"the model grants {expected.granted}"
        event(f"acquire_with_fallback: {expected.granted[1] if expected.granted else 'none'}")
        self.settle()

    @precondition(lambda self: len(self.blocked) < MAX_BLOCKED)
    @rule(data=st.data(), fallback=st.booleans(), timeout=waiter_timeouts)
    def start_a_waiter(self, data: st.DataObject, fallback: bool, timeout: float | None) -> None:
        """``acquire`` (fallback, then the queue) or ``acquire_wait``, on a thread or a task."""
        face = data.draw(st.sampled_from(self.open_faces))
        primary, chain = self.keys(data)
        if not fallback:
            chain = []
        ref_id, label = self.new_label()
        if fallback:
            future = face.start("acquire", primary, chain, timeout=timeout, holder=label)
        else:
            future = face.start("acquire_wait", primary, timeout, holder=label)
        expected = self.model_claim(
            face, label, ref_id, primary, chain, fallback=fallback, enqueue=True
        )
        waiter = Blocked(label, face, primary, fallback, future, ref_id)
        self.blocked[label] = waiter
        if expected.granted is not None:
            waiter.expect = "lease"
            self.settle()
            lease = self.held[label].lease
            assert (lease.key, lease.via) == expected.granted
        else:
            waiter.queued = True
            self.settle()
        kind = "task" if face.is_async else "thread"
        event(f"waiter on a {kind}: {'queued' if label in self.blocked else 'granted at once'}")

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_a_lease(self, data: st.DataObject) -> None:
        label = data.draw(st.sampled_from(sorted(self.held)))
        held = self.held.pop(label)
        present = self.model.release(held.ref_id, label)
        held.face.release(held.lease)
        assert held.lease.released
        assert held.lease.lost == (not present), (held.lease, present)
        self.check_granted_at_once()
        self.settle()

    @precondition(lambda self: any(w.face.is_async for w in self.blocked.values()))
    @rule(data=st.data())
    def cancel_a_waiting_task(self, data: st.DataObject) -> None:
        label = data.draw(
            st.sampled_from(sorted(lb for lb, w in self.blocked.items() if w.face.is_async))
        )
        waiter = self.blocked[label]
        waiter.future.cancel()
        waiter.expect = "cancelled"
        self.model.discard(label, label)
        self.settle()

    @rule(data=st.data(), fallback=st.booleans(), timeout=short_timeouts)
    def a_timeout_expires(self, data: st.DataObject, fallback: bool, timeout: float) -> None:
        """A request with a short timeout: granted as the reference says, or it times out."""
        face = data.draw(st.sampled_from(self.open_faces))
        primary, chain = self.keys(data)
        if not fallback:
            chain = []
        ref_id, label = self.new_label()
        try:
            if fallback:
                lease = face.call("acquire", primary, chain, timeout=timeout, holder=label)
            else:
                lease = face.call("acquire_wait", primary, timeout, holder=label)
        except AcquireTimeout:
            lease = None
        expected = self.model_claim(
            face, label, ref_id, primary, chain, fallback=fallback, enqueue=True
        )
        if lease is None:
            assert expected.granted is None, f"the model grants {expected.granted}"
            self.model.discard(label, label)
            event("timed out")
        else:
            assert (lease.key, lease.via) == expected.granted, (lease, expected)
            self.hold(label, face, lease)
        self.settle()

    @precondition(lambda self: any(self.stallable()))
    @rule(data=st.data())
    def a_stalled_holder_expires_and_is_reaped(self, data: st.DataObject) -> None:
        """One limiter stops renewing; the others renew as the fake clock passes its TTL.

        The stalled limiter has no waiter (a stalled waiter's ticket would go and it would
        queue again at the back). Everything it holds expired at most one TTL after the step
        began; what the others hold was renewed half a TTL later. Watchers may reap first.
        """
        stalled = data.draw(st.sampled_from(list(self.stallable())))
        others = [face for face in self.open_faces if face is not stalled]
        for _ in range(2):
            for face in others:
                self.renew(face)
            self.clock.advance(TTL / 2)
            self.model.now = self.clock.now
        self.clock.advance(1)
        self.model.now = self.clock.now
        everything = (*self.model.leases.values(), *self.model.tickets.values())
        doomed = {h.token for h in everything if h.owner == stalled.name}
        reaper = data.draw(st.sampled_from(self.open_faces))
        reaped = reaper.call("reap")
        self.model.reap()
        assert {r.holder for r in reaped} <= doomed, (reaped, doomed)
        leases, _ = self.table_leases()
        left = doomed & ({*leases} | {label for label, _ in self.table_queue()})
        rows = self.look.execute("SELECT holder, expires_ts, owner FROM leases").fetchall()
        assert not left, f"expired, still there after reap: {left}, {rows}, now {self.clock.now}"
        event(f"reaped {len(doomed)} expired")
        self.settle()

    def renew(self, face: Face) -> None:
        """Renew what ``face`` holds; it reports lost exactly its leases reaped since."""
        live = {h.token for h in self.model.leases.values()}
        lost = {
            label
            for label, held in self.held.items()
            if held.face is face and label not in live and not held.lease.lost
        }
        assert {lease.holder for lease in face.call("renew")} == lost
        self.model.renew(face.name)

    def stallable(self) -> Iterator[Face]:
        busy = {w.face.name for w in self.blocked.values()}
        return (face for face in self.open_faces if face.name not in busy)

    @precondition(lambda self: len(self.open_faces) > 1)
    @rule(data=st.data())
    def close_a_limiter(self, data: st.DataObject) -> None:
        """Close one limiter: its leases go, its waiters are told; another opens in its place."""
        face = data.draw(st.sampled_from(self.open_faces))
        self.close_face(face)
        self.check_granted_at_once()
        self.open_face(face.is_async)
        self.settle()

    def close_face(self, face: Face) -> None:
        face.close()
        self.model.close(face.name)
        for label, held in list(self.held.items()):
            if held.face is face:
                assert held.lease.released
                del self.held[label]
        for waiter in self.blocked.values():
            if waiter.face is face:
                waiter.expect = "closed"

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def the_tables_hold_exactly_the_models_leases_and_queue(self) -> None:
        if self.ref is None:
            return
        leases, labels = self.table_leases()
        assert len(labels) == len(set(labels)), f"a holder has two leases: {sorted(labels)}"
        assert leases == self.expected_leases(), "leases differ"
        assert self.table_queue() == self.expected_queue(), "queues differ"
        # Every lease stored is one the test holds a handle for: none is stranded.
        assert set(leases) <= set(self.held), set(leases) - set(self.held)

    @invariant()
    def no_model_holds_more_than_its_limit_nor_all_more_than_the_cap(self) -> None:
        if self.ref is not None:
            self.check_limits()

    @invariant()
    def the_queue_is_in_arrival_order(self) -> None:
        queue = [label for label, _ in self.table_queue()]
        assert set(queue) <= set(self.blocked), f"tickets of no waiter: {queue}"
        arrivals = [self.blocked[label].arrival for label in queue]
        assert arrivals == sorted(arrivals), arrivals

    @invariant()
    def each_models_waiters_are_granted_in_arrival_order(self) -> None:
        """No waiter left in the queue arrived before one of its model that was granted."""
        for label, key in self.table_queue():
            if label not in self.blocked:
                continue  # the_queue_is_in_arrival_order reports it
            granted = self.order.granted.get(key, [])
            arrival = self.blocked[label].arrival
            assert all(g < arrival for g in granted), (label, arrival, granted)
        for arrivals in self.order.granted.values():
            assert arrivals == sorted(arrivals), arrivals

    def teardown(self) -> None:
        """Close the limiters one at a time, settling after each, so that nothing races."""
        try:
            if self.ref is not None:
                for face in self.open_faces:
                    self.close_face(face)
                    self.settle()
                assert self.look.execute("SELECT count(*) FROM leases").fetchone() == (0,)
                assert self.look.execute("SELECT count(*) FROM waiters").fetchone() == (0,)
        finally:
            for face in self.open_faces:  # after a failure: close what is left, quietly
                with contextlib.suppress(Exception):
                    face.close()
            self.loop.run(cancel_all_tasks())
            self.loop.stop()
            self.look.close()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)


async def cancel_all_tasks() -> None:
    """Cancel every task left on the loop (waiters of a failed run) and let them finish."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def machine(workdir: Path, server: PgServer | None = None, **attributes: Any) -> type[FacesMachine]:
    """The machine class bound to its databases.

    Without ``server`` each example copies a template SQLite file in ``workdir``; with it, each
    example is a fresh group on that PostgreSQL server.
    """
    where: dict[str, Any] = {"server": server} if server else {"template": make_template(workdir)}
    return type("FacesMachine", (FacesMachine,), {"workdir": workdir, **where, **attributes})


def server_for(backend: str, request: pytest.FixtureRequest) -> PgServer | None:
    """The session's PostgreSQL server for the postgresql variant (None for SQLite)."""
    return request.getfixturevalue("pg_server") if backend == "postgresql" else None


def ci_examples(default: int) -> int:
    """``default`` in the CI profile; a deeper profile (HYPOTHESIS_PROFILE) asks for more."""
    return default if settings.default.max_examples <= 60 else settings.default.max_examples


@pytest.mark.timeout(3600)
def test_both_faces_agree_with_the_reference_with_real_waiters(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    run_state_machine_as_test(
        machine(tmp_path, server_for(backend, request)),
        settings=settings(
            settings.default,
            # Runs of up to 30 steps in CI: 25 on SQLite (4 to 9 s on 2 cores, by load); 15 on
            # PostgreSQL, where each costs several times as much (about 12 s).
            max_examples=ci_examples(25 if backend == "sqlite" else 15),
            stateful_step_count=30,
            phases=NO_EXPLAIN,
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_both_faces_agree_with_the_reference_over_long_runs(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    run_state_machine_as_test(
        machine(tmp_path, server_for(backend, request)),
        settings=settings(
            settings.default,
            # Half as many runs on PostgreSQL, where each costs several times as much.
            max_examples=max(settings.default.max_examples, 300 if backend == "sqlite" else 150),
            stateful_step_count=80,
            phases=NO_EXPLAIN,
        ),
    )


# --- mutations the machine must notice ------------------------------------------------------
#
# Each breaks one rule in the pure modules both faces share (never in the faces themselves), by
# replacing a function wherever it is bound, and the machine must fail on one of its own checks.


def patch_everywhere(monkeypatch: pytest.MonkeyPatch, original: Any, replacement: Any) -> None:
    """Replace ``original`` in every collet_limiter module that bound it (``from x import f``)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("collet_limiter"):
            for name, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, name, replacement)


def ignore_the_global_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from collet_limiter import _fairness

    monkeypatch.setattr(_fairness.Snapshot, "global_verdict", lambda self: (True, "ignored"))
    monkeypatch.setattr(_fairness.Snapshot, "global_has_room", lambda self: True)


def capability_of_any_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tier rule dropped: any cost tier is a capability match (tool use still checked)."""
    from collet_limiter import _fallback

    original = _fallback._capability_reason

    def any_tier(primary: Any, row: Any) -> tuple[bool, str]:
        eligible, reason = original(primary, row)
        tools_ok = row.supports_tool_use or not primary.supports_tool_use
        return eligible or tools_ok, reason

    patch_everywhere(monkeypatch, original, any_tier)


def capability_without_tool_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool-use rule dropped: a model without tool use may stand in for one with it."""
    from collet_limiter import _fallback

    original = _fallback._capability_reason

    def tools_ignored(primary: Any, row: Any) -> tuple[bool, str]:
        return original(primary.__class__(**{**asdict(primary), "supports_tool_use": False}), row)

    patch_everywhere(monkeypatch, original, tools_ignored)


def expired_leases_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaping judges expiry two TTLs in the past: nothing that just expired goes."""
    from collet_limiter import _store

    original = _store.reap

    def reap(conn: Any, now: float, *, my_host: str, history: bool) -> Any:
        return original(conn, now - 2 * TTL, my_host=my_host, history=history)

    patch_everywhere(monkeypatch, original, reap)


def live_holders_are_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every holder on this host is taken for dead."""
    from collet_limiter import _identity

    patch_everywhere(monkeypatch, _identity.is_provably_dead, lambda **_: True)


@pytest.mark.parametrize(
    ("mutate", "config_strategy"),
    [
        (ignore_the_global_cap, configs),
        # The tier rule shows only when a full primary has capability candidates of every tier.
        (capability_of_any_tier, tiered_configs),
        (capability_without_tool_use, tiered_configs),
        (expired_leases_stay, configs),
        (live_holders_are_reaped, configs),
    ],
)
def test_the_faces_machine_catches_a_broken_rule(
    mutate: Callable[[pytest.MonkeyPatch], None],
    config_strategy: st.SearchStrategy[Config],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break the global cap, the tier rule or reaping: the machine must notice."""
    mutate(monkeypatch)
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(
            # A broken rule mostly shows at once; a grant that never comes fails in 2 s.
            machine(tmp_path, settle_secs=2.0, configs=config_strategy),
            settings=settings(
                max_examples=200,
                stateful_step_count=30,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow],
                report_multiple_bugs=False,
            ),
        )
    # Whatever it trips on first, it is one of the machine's own checks.
    assert Path(str(caught.traceback[-1].path)).name in {"test_stateful_faces.py", "reference.py"}
