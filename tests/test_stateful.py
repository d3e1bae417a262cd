"""The real limiter on a real database, driven side by side with the reference model.

Each example runs on a fresh SQLite file, or on a fresh group (schema) on the session's
PostgreSQL server: the tests are parametrized over both backends.

A hypothesis ``RuleBasedStateMachine`` draws a config (providers, CLI providers, tiers, tool
flags, limits, a global cap) and then acquires with random chains, waits, queues, releases,
moves the fake clock past expiries, kills holders, reaps, renews and switches configs. Queued
waiters are driven deterministically, without threads: a waiter is a claim request that left a
ticket, retried through ``Core.claim`` as ``Limiter.acquire_wait`` retries it. Whatever frees
room grants the tickets the model admits in the same step; a waiter whose ticket was granted
gets exactly that lease on its next claim, and one that gives up (times out, is cancelled) or
dies at that moment leaves nothing behind and passes its turn on. After every step the tables
(read with the database's own driver, ``tests/look.py``) must hold exactly the leases and
tickets the model holds, ids included, every grant must be the model's choice of key and
``via``, and no model may hold more leases than its limit, nor all of them more than the global
cap.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

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

from collet_limiter import Acquired, AcquireTimeout, Config, Limiter, ModelKey, QueueWait
from collet_limiter._identity import process_start

from .conftest import FakeClock, fresh_group, make_config
from .look import Look
from .reference import Reference
from .strategies import chains, configs, request_keys

if TYPE_CHECKING:
    from collet_limiter import Lease
    from collet_limiter._store import ClaimRequest, LeaseRecord

    from .pgserver import PgServer

# Hypothesis's explain phase traces every line run (on Python < 3.12 with sys.settrace), which
# through SQLAlchemy turns seconds into many minutes; failures are reported without it.
NO_EXPLAIN = tuple(phase for phase in Phase if phase is not Phase.explain)
TTL = 3600.0  # fake seconds; the heartbeat's real period (TTL/3) never comes during a test
# How far ``advance_clock`` moves the fake clock: within a TTL, exactly one TTL (a lease granted
# then is still held: it expires strictly after) and beyond.
CLOCK_STEPS = (1.0, TTL / 2, TTL, TTL + 1, 2 * TTL)
# On PostgreSQL a lease's times are the server's clock read as its transaction took the lock, a
# little before the limiter reads the fake clock, so two transactions at one fake time are that
# latency (milliseconds) apart and "exactly one TTL later" is a point the server cannot hit: its
# steps stay half a second off every boundary (TTL - 0.5 is still held, TTL/2 + 0.5 twice has
# expired), far more than that latency.
PG_CLOCK_STEPS = (1.0, TTL / 2 + 0.5, TTL - 0.5, TTL + 1, 2 * TTL)
# A reported refusal's cooldown, and the adaptive limit's recovery period: a quarter second off
# every sum of clock steps (which are whole or half seconds), so no comparison is a tie (and
# the recovery steps stay 50 ms or more off them, far more than a server round trip).
COOLDOWN_SECS = (0.25, 10.25, 1800.25)
RECOVER_SECS = 700.15  # k periods: .15, .3, .45, .6, .75, .9, .05 past a whole second


def dead_identity() -> tuple[int, float]:
    """The (pid, start time) of a real process that has exited: a provably dead holder."""
    child = subprocess.Popen(["sleep", "30"])
    start = process_start(child.pid)
    child.kill()
    child.wait(10)
    assert start is not None
    return child.pid, start


def make_template(directory: Path) -> Path:
    """A migrated, empty database to copy for each example (migrating costs more than a test)."""
    path = directory / "template.db"
    Limiter(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@dataclass
class Generation:
    """The limiters opened with one config: one for the public API, one for raw Core claims."""

    config: Config
    public: Limiter
    raw: Limiter
    closed: bool = False


@dataclass
class Waiter:
    """A queued request and its current ticket."""

    gen: Generation
    request: ClaimRequest
    ticket: int


class LimiterMachine(RuleBasedStateMachine):
    """Drives one database through the public API and Core claims; see the module docstring."""

    dead: ClassVar[tuple[int, float]]
    workdir: ClassVar[Path]
    # SQLite: a migrated database to copy for each example. PostgreSQL: the server on which each
    # example opens a fresh group (schema), migrated by its first limiter.
    template: ClassVar[Path | None] = None
    server: ClassVar[PgServer | None] = None
    clock_steps: ClassVar[tuple[float, ...]] = CLOCK_STEPS

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
        self.gens: list[Generation] = []
        self.public: list[tuple[Lease, Generation]] = []
        self.raw: list[tuple[LeaseRecord, Generation]] = []
        self.waiters: list[Waiter] = []
        self.ref: Reference | None = None
        self.pool: list[ModelKey] = []
        self.look = Look(self.db)

    # --- helpers ----------------------------------------------------------------------------

    @property
    def model(self) -> Reference:
        assert self.ref is not None
        return self.ref

    @property
    def gen(self) -> Generation:
        return self.gens[-1]

    def open_generation(self, config: Config) -> None:
        limiters = []
        # The raw limiter reports refusals with adaptive limits, the public one without: the
        # [limiter] section is each process's own and writes nothing to the database.
        adaptive = config.model_copy(
            update={
                "limiter": config.limiter.model_copy(
                    update={"adaptive": True, "adaptive_recover_secs": RECOVER_SECS}
                )
            }
        )
        for own in (config, adaptive):
            limiter = Limiter(self.db, config=own, clock=self.clock, lease_ttl=TTL)
            limiters.append(limiter)
            self.model.open_with(config)
        self.gens.append(Generation(config, *limiters))
        self.pool = request_keys(config)

    def claim(self, gen: Generation, request: ClaimRequest) -> tuple[Any, Any]:
        """One Core claim on the raw limiter of ``gen``, and the model's outcome for it."""
        result = gen.raw._runtime.write(lambda conn: gen.raw._core.claim(conn, request))
        expected = self.model.claim(
            gen.config,
            request.owner,
            request.primary,
            list(request.chain),
            fallback=request.fallback,
            enqueue=request.enqueue,
            ticket=request.ticket,
            tokens=(request.token, request.ticket_token),
            new_lease=result.lease.id if result.lease else None,
            new_ticket=result.ticket,
        )
        got = (result.lease.key, result.lease.via) if result.lease else None
        event(f"claim: {got[1] if got else 'queued'}{' after requeue' if result.requeued else ''}")
        event(f"claim reaped {len(result.reaped)}")
        assert got == expected.granted, (got, expected)
        assert (result.lease.id if result.lease else None) == expected.lease
        assert result.ticket == expected.ticket
        assert result.requeued == expected.requeued
        assert {(r.kind, r.id) for r in result.reaped} == expected.reaped
        return result, expected

    def model_claim_public(
        self,
        primary: ModelKey,
        chain: list[ModelKey],
        *,
        fallback: bool,
        lease: Lease | None,
        timed_out: bool = False,
    ) -> Any:
        """The model's outcome for a public acquire that leaves no ticket behind.

        One that ``timed_out`` queued a ticket, then discarded it: which serves the queue.
        """
        gen = self.gen
        tokens = (lease.token if lease is not None else "", "timed out")
        expected = self.model.claim(
            gen.config,
            gen.public._core.owner,
            primary,
            chain,
            fallback=fallback,
            enqueue=timed_out,
            ticket=None,
            tokens=tokens,
            new_lease=lease.id if lease is not None else None,
            new_ticket=self.look.last_ticket_id() if timed_out else None,
        )
        if timed_out:
            self.model.discard(*tokens)
        return expected

    def keys(self, data: st.DataObject) -> tuple[ModelKey, list[ModelKey]]:
        """A primary (half the time one of two hot keys, so that they fill up) and a chain."""
        hot = st.sampled_from(self.pool[:2])
        return data.draw(hot | st.sampled_from(self.pool)), data.draw(chains(self.pool))

    # --- rules ------------------------------------------------------------------------------

    @initialize(config=configs)
    def open_first(self, config: Config) -> None:
        self.ref = Reference(config=config, now=self.clock.now, ttl=TTL)
        self.open_generation(config)

    @rule(data=st.data())
    def acquire_with_fallback(self, data: st.DataObject) -> None:
        primary, chain = self.keys(data)
        outcome = self.gen.public.acquire_with_fallback(primary, chain)
        lease = outcome.lease if isinstance(outcome, Acquired) else None
        expected = self.model_claim_public(primary, chain, fallback=True, lease=lease)
        if lease is None:
            assert outcome == QueueWait(primary, outcome.reason), outcome
            assert expected.granted is None, f"the model grants {expected.granted}"
        else:
            assert (lease.key, lease.via) == expected.granted
            self.public.append((lease, self.gen))
        event(f"acquire_with_fallback: {lease.via if lease else 'QueueWait'}")

    @rule(data=st.data(), fallback=st.booleans())
    def acquire_with_timeout(self, data: st.DataObject, fallback: bool) -> None:
        """``acquire_wait`` (the key alone) or ``acquire`` (fallback, then queue), timeout 0.

        A timeout of 0 is a single try. A longer one would start the limiter's watcher thread,
        whose sweeps may reap an expired or dead holder at a moment the steps do not decide (a
        deep run caught one); queued waiting is driven through ``queue`` and ``retry_waiter``.
        One that times out queued a ticket and discarded it, which serves the queue (that matters
        when a config raised a limit under waiting tickets).
        """
        timeout = 0
        primary, chain = self.keys(data)
        if not fallback:
            chain = []
        try:
            if fallback:
                lease = self.gen.public.acquire(primary, chain, timeout=timeout)
            else:
                lease = self.gen.public.acquire_wait(primary, timeout=timeout)
        except AcquireTimeout:
            lease = None
        expected = self.model_claim_public(
            primary, chain, fallback=fallback, lease=lease, timed_out=lease is None
        )
        if lease is None:
            assert expected.granted is None, f"the model grants {expected.granted}"
        else:
            assert (lease.key, lease.via) == expected.granted
            self.public.append((lease, self.gen))

    @precondition(lambda self: len(self.waiters) < 4)
    @rule(data=st.data(), fallback=st.booleans())
    def queue(self, data: st.DataObject, fallback: bool) -> None:
        """A request that queues when nothing is granted (as ``acquire`` or ``acquire_wait``)."""
        primary, chain = self.keys(data)
        gen = self.gen
        request = gen.raw._core.request(
            primary, chain if fallback else None, fallback=fallback, enqueue=True, label="w"
        )
        result, _ = self.claim(gen, request)
        if result.lease is not None:
            self.raw.append((result.lease, gen))
        else:
            assert result.ticket is not None
            self.waiters.append(Waiter(gen, request, result.ticket))

    @precondition(lambda self: len(self.waiters) < 4)
    @rule(data=st.data(), fallback=st.booleans())
    def queue_another(self, data: st.DataObject, fallback: bool) -> None:
        """Waiters come in crowds (and a transaction that frees room grants them together)."""
        self.queue(data, fallback)

    @precondition(lambda self: self.waiters)
    @rule(data=st.data())
    def retry_waiter(self, data: st.DataObject) -> None:
        """A waiter looks (lock-free), then claims with its ticket, as acquire_wait loops."""
        waiter = data.draw(st.sampled_from(self.waiters))
        request = waiter.gen.raw._core.with_ticket(
            waiter.request, SimpleNamespace(ticket=waiter.ticket, at=self.clock())
        )
        with waiter.gen.raw._runtime.connection() as conn:
            (looks,), _ = waiter.gen.raw._core.could_grant(conn, [request])
        assert looks == self.model.could_grant(request.primary, waiter.ticket, request.ticket_token)
        result, _ = self.claim(waiter.gen, request)
        if result.lease is not None:
            self.waiters.remove(waiter)
            self.raw.append((result.lease, waiter.gen))
        else:
            assert result.ticket is not None
            waiter.ticket = result.ticket

    @precondition(lambda self: self.waiters)
    @rule(data=st.data())
    def retry_waiter_again(self, data: st.DataObject) -> None:
        """Waiters retry far more often than anything else happens: weight the rule."""
        self.retry_waiter(data)

    @precondition(lambda self: self.waiters)
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        """A waiter gives up (times out, is cancelled): ``discard``, as the acquire loop does."""
        self.give_up(data.draw(st.sampled_from(self.waiters)))

    def give_up(self, waiter: Waiter) -> None:
        core = waiter.gen.raw._core
        waiter.gen.raw._runtime.write(lambda conn: core.discard(conn, waiter.request))
        self.model.discard(waiter.request.token, waiter.request.ticket_token)
        self.waiters.remove(waiter)
        left = self.look.execute(
            "SELECT (SELECT count(*) FROM leases WHERE token = ?),"
            " (SELECT count(*) FROM waiters WHERE token = ?)",
            (waiter.request.token, waiter.request.ticket_token),
        ).fetchone()
        assert left == (0, 0), f"a discarded waiter left (leases, tickets) {left}"

    def served(self) -> list[Waiter]:
        """The waiters whose ticket the model granted: their next claim reads that lease."""
        tokens = {lease.token for lease in self.model.leases.values()}
        return [w for w in self.waiters if w.request.token in tokens]

    @precondition(lambda self: (self.public or self.raw) and self.waiters)
    @rule(data=st.data())
    def a_waiter_gives_up_as_a_release_grants_it(self, data: st.DataObject) -> None:
        """A release grants a waiter its lease just as it times out or is cancelled.

        Its last claim found nothing, the release then granted its ticket, and its discard comes
        before it reads the lease: exactly one outcome (nothing held, nothing queued), and the
        slot goes on to whoever the queue admits next, never leaked nor granted twice.
        """
        before = {w.request.token for w in self.served()}
        self.release(data)
        granted = [w for w in self.served() if w.request.token not in before]
        event(f"release granted {len(granted)} waiting")
        if granted:
            self.give_up(data.draw(st.sampled_from(granted)))

    def queued(self) -> list[Waiter]:
        """The waiters whose ticket is still in the queue."""
        return [w for w in self.waiters if self.model.has_ticket(w.ticket, w.request.ticket_token)]

    @precondition(lambda self: (self.public or self.raw) and self.queued())
    @rule(data=st.data())
    def a_waiter_is_killed_as_a_release_grants_it(self, data: st.DataObject) -> None:
        """A waiter is SIGKILLed as its turn comes: its lease is a dead holder's, reaped, passed on.

        The lease granted from its ticket carries the ticket's process, so the reap that follows
        reclaims it (or the ticket, if the release did not reach it) and serves the queue again.
        """
        waiter = data.draw(st.sampled_from(self.queued()))
        self.look.execute(
            "UPDATE waiters SET pid = ?, pid_start = ? WHERE id = ?", (*self.dead, waiter.ticket)
        )
        self.model.kill("ticket", waiter.ticket)
        self.waiters.remove(waiter)  # it will never claim again
        self.release(data)
        lease = self.model.lease_for(waiter.request.token)
        event("killed waiter: " + ("granted, then reaped" if lease else "reaped in the queue"))
        self.reap()
        assert self.model.lease_for(waiter.request.token) is None
        assert not self.model.has_ticket(waiter.ticket, waiter.request.ticket_token)

    @precondition(lambda self: self.public or self.raw)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        handles = [("public", i) for i in range(len(self.public))]
        handles += [("raw", i) for i in range(len(self.raw))]
        kind, index = data.draw(st.sampled_from(handles))
        if kind == "public":
            lease, _ = self.public.pop(index)
            present = self.model.release(lease.id, lease.token)
            lease.release()
            assert lease.lost == (not present), (lease, present)
            assert lease.released
        else:
            record, gen = self.raw.pop(index)
            present = self.model.release(record.id, record.token)
            core = gen.raw._core
            released = gen.raw._runtime.write(
                lambda conn: core.release(conn, record.id, record.token)
            )
            assert released == present

    @precondition(lambda self: self.public or self.raw)
    @rule(data=st.data())
    def release_another(self, data: st.DataObject) -> None:
        """Holders release as often as they acquire: weight the rule."""
        self.release(data)

    @rule(data=st.data())
    def advance_clock(self, data: st.DataObject) -> None:
        seconds = data.draw(st.sampled_from(self.clock_steps), label="seconds")
        self.clock.advance(seconds)
        self.model.now = self.clock.now

    @precondition(lambda self: self.public or self.raw)
    @rule(data=st.data(), adaptive=st.booleans())
    def the_provider_refuses(self, data: st.DataObject, adaptive: bool) -> None:
        """A holder reports a 429 on its lease's model: it cools down for every limiter, and
        (through the adaptive limiter) its limit drops below its holders now."""
        leases = [lease.key for lease, _ in self.public] + [r.key for r, _ in self.raw]
        key = data.draw(st.sampled_from(leases), label="model")
        secs = data.draw(st.sampled_from(COOLDOWN_SECS), label="cooldown")
        gen = self.gen
        limiter = gen.raw if adaptive else gen.public
        limiter._runtime.report(key, kind="rate_limited", retry_after=secs, reason="429")
        self.model.report(gen.config, key, secs, adaptive=adaptive, period=RECOVER_SECS)
        event(f"refusal reported ({'adaptive' if adaptive else 'cooldown only'})")

    @precondition(lambda self: self.model.leases or self.model.tickets)
    @rule(data=st.data())
    def holder_dies(self, data: st.DataObject) -> None:
        """The process recorded for a lease or ticket is now one that has exited."""
        rows = [("lease", i) for i in self.model.leases]
        rows += [("ticket", i) for i in self.model.tickets]
        kind, hid = data.draw(st.sampled_from(sorted(rows)))
        statement = {
            "lease": "UPDATE leases SET pid = ?, pid_start = ? WHERE id = ?",
            "ticket": "UPDATE waiters SET pid = ?, pid_start = ? WHERE id = ?",
        }[kind]
        self.look.execute(statement, (*self.dead, hid))
        self.model.kill(kind, hid)

    @precondition(lambda self: self.model.leases and self.queued())
    @rule(data=st.data())
    def a_process_holding_several_leases_dies(self, data: st.DataObject) -> None:
        """Every lease of one limiter is a dead process's: one reap frees them all at once.

        Several slots free in one transaction: it must grant every waiter the queue then
        admits, in queue order, not only the first (a release frees one slot, so it cannot
        show this).
        """
        owners = {h.owner for h in self.model.leases.values()}
        # In the order the limiters were opened: owner names are random, so never sort them.
        limiters = [
            lim for g in self.gens for lim in (g.public, g.raw) if lim._core.owner in owners
        ]
        owner = data.draw(st.sampled_from(limiters))._core.owner
        self.look.execute(
            "UPDATE leases SET pid = ?, pid_start = ? WHERE owner = ?", (*self.dead, owner)
        )
        for hid, lease in list(self.model.leases.items()):
            if lease.owner == owner:
                self.model.kill("lease", hid)
        before = {w.request.token for w in self.served()}
        self.reap()
        granted = [w for w in self.served() if w.request.token not in before]
        event(f"a dead process's leases reaped, {min(len(granted), 2)}+ waiting granted")

    @rule()
    def reap(self) -> None:
        reaped = self.gen.public.reap()
        assert {(r.kind, r.id) for r in reaped} == self.model.reap()

    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        gen = data.draw(st.sampled_from([g for g in self.gens if not g.closed]))
        mine = [lease for lease, g in self.public if g is gen and not lease.released]
        lost = gen.public.renew()
        expected = {lease.id for lease in mine if not self.model.holds(lease.id, lease.token)}
        assert {lease.id for lease in lost} == expected
        self.model.renew(gen.public._core.owner)
        for lease in lost:
            assert lease.lost

    @rule(config=configs, close_old=st.booleans())
    def change_config(self, config: Config, close_old: bool) -> None:
        """Another config opens the database: the last config written is the one obeyed."""
        old = self.gen
        self.open_generation(config)
        if close_old:
            old.closed = True
            for limiter in (old.public, old.raw):
                limiter.close()
                self.model.close(limiter._core.owner)
            self.public = [(lease, g) for lease, g in self.public if g is not old]
            self.raw = [(record, g) for record, g in self.raw if g is not old]
            self.waiters = [w for w in self.waiters if w.gen is not old]

    @precondition(lambda self: self.queued() and any(g is self.gen for _, g in self.public))
    @rule()
    def a_process_holding_leases_exits(self) -> None:
        """The current public limiter closes and another opens in its place (a process exits).

        Its give-back frees every slot it held in one transaction, which grants every waiter
        the queue then admits, in queue order (a release frees one slot: it cannot show this).
        """
        gen = self.gen
        gen.public.close()
        self.model.close(gen.public._core.owner)
        for lease, g in self.public:
            assert g is not gen or lease.released, lease
        self.public = [(lease, g) for lease, g in self.public if g is not gen]
        gen.public = Limiter(self.db, config=gen.config, clock=self.clock, lease_ttl=TTL)
        assert not self.model.open_with(gen.config), "the last config written is this one"

    @rule(data=st.data())
    def explain(self, data: st.DataObject) -> None:
        """``explain`` lists the model's candidates in its order and picks its choice."""
        primary, chain = self.keys(data)
        explanation = self.gen.public.explain(primary, chain)
        scratch = replace(self.model, rows=dict(self.model.rows))
        scratch.ensure(self.gen.config, [primary, *chain])
        candidates = [(c.key, c.via, c.eligible) for c in explanation.candidates]
        assert candidates == scratch.candidates(primary, chain)
        choice = explanation.choice
        got = (choice.key, choice.via) if choice is not None else None
        assert got == scratch.decide(primary, chain, fallback=True, ticket=None)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def tables_hold_exactly_the_models_leases_and_tickets(self) -> None:
        if self.ref is None:
            return
        leases = {
            hid: (ModelKey(p, m), via, owner, token)
            for hid, p, m, via, owner, token in self.look.execute(
                "SELECT id, provider, model, via, owner, token FROM leases"
            )
        }
        assert leases == {
            hid: (h.key, h.via, h.owner, h.token) for hid, h in self.model.leases.items()
        }, "leases differ"
        tickets = {
            hid: (ModelKey(p, m), owner, token)
            for hid, p, m, owner, token in self.look.execute(
                "SELECT id, provider, model, owner, token FROM waiters"
            )
        }
        assert tickets == {
            hid: (h.key, h.owner, h.token) for hid, h in self.model.tickets.items()
        }, "tickets differ"

    @invariant()
    def models_table_and_cap_are_the_last_config_written(self) -> None:
        if self.ref is None:
            return
        rows = {
            ModelKey(p, m): (limit, tier, bool(tools), bool(cli), position)
            for p, m, limit, tier, tools, cli, position in self.look.execute(
                "SELECT provider, model, concurrency_limit, cost_tier, supports_tool_use, "
                "is_cli, position FROM models"
            )
        }
        expected = {
            key: (r.limit, r.tier.value, r.tools, r.is_cli, r.position)
            for key, r in self.model.rows.items()
        }
        # Rows for keys requested on demand may be added later than the model adds them (a
        # claim granted in one statement reads no chain key), never otherwise.
        assert {key: expected.get(key) for key in rows} == rows
        assert {key for key, r in self.model.rows.items() if r.position is not None} <= set(rows)
        (cap,) = self.look.execute("SELECT value FROM meta WHERE key = 'max_agents'").fetchone()
        assert int(cap) == self.model.cap

    @invariant()
    def status_shows_the_models_cooldowns_and_effective_limits(self) -> None:
        if self.ref is None or not (self.model.cooldowns or self.model.lowered):
            return
        shown = {
            m.key: (m.effective_limit, m.cooldown_until is not None)
            for m in self.gen.public.status().models
        }
        expected = {
            key: (self.model.adaptive_limit(key), self.model.cooling(key))
            for key in self.model.rows
        }
        # A key requested on demand may get its row later than the model adds it (see below).
        assert {key: shown[key] for key in expected if key in shown} == {
            key: value for key, value in expected.items() if key in shown
        }

    @invariant()
    def no_model_holds_more_than_its_limit_nor_all_more_than_the_cap(self) -> None:
        if self.ref is None:
            return
        held = Counter(
            {
                ModelKey(p, m): n
                for p, m, n in self.look.execute(
                    "SELECT provider, model, count(*) FROM leases GROUP BY provider, model"
                )
            }
        )
        assert self.model.within_limits(held, sum(held.values())) == [], "tables"
        ref_held = self.model.held()
        assert self.model.within_limits(ref_held, len(self.model.leases)) == [], "model"

    def teardown(self) -> None:
        try:
            for gen in self.gens:
                gen.public.close()
                gen.raw.close()
            if self.ref is not None:
                # Closing gives back everything each limiter held, dead holders' rows included.
                assert self.look.execute("SELECT count(*) FROM leases").fetchone() == (0,)
                assert self.look.execute("SELECT count(*) FROM waiters").fetchone() == (0,)
        finally:
            self.look.close()
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)


def machine(workdir: Path, server: PgServer | None = None) -> type[LimiterMachine]:
    """The machine class bound to its databases and a dead holder's identity.

    Without ``server`` each example copies a template SQLite file in ``workdir``; with it, each
    example is a fresh group on that PostgreSQL server.
    """
    where: dict[str, Any] = (
        {"server": server, "clock_steps": PG_CLOCK_STEPS}
        if server
        else {"template": make_template(workdir)}
    )
    return type(
        "LimiterMachine",
        (LimiterMachine,),
        {"dead": dead_identity(), "workdir": workdir, **where},
    )


def server_for(backend: str, request: pytest.FixtureRequest) -> PgServer | None:
    """The session's PostgreSQL server for the postgresql variant (None for SQLite)."""
    return request.getfixturevalue("pg_server") if backend == "postgresql" else None


def ci_examples(default: int) -> int:
    """``default`` in the CI profile; a deeper profile (HYPOTHESIS_PROFILE) asks for more."""
    return default if settings.default.max_examples <= 60 else settings.default.max_examples


# pytest-timeout's 300 s is for the default profiles; HYPOTHESIS_PROFILE=long runs for longer.
@pytest.mark.timeout(3600)
def test_the_limiter_agrees_with_the_reference_model_step_by_step(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    run_state_machine_as_test(
        machine(tmp_path, server_for(backend, request)),
        settings=settings(
            settings.default,
            # Runs of up to 40 steps in CI: 40 on SQLite (5 to 20 s on 2 cores, by load); 20 on
            # PostgreSQL, where each example's new group and each step's round trips cost several
            # times as much (about 12 s). HYPOTHESIS_PROFILE=long deepens both.
            max_examples=ci_examples(40 if backend == "sqlite" else 20),
            stateful_step_count=40,
            phases=NO_EXPLAIN,
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_limiter_agrees_with_the_reference_model_over_long_runs(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    run_state_machine_as_test(
        machine(tmp_path, server_for(backend, request)),
        settings=settings(
            settings.default,
            # Half as many runs on PostgreSQL, where each costs several times as much.
            max_examples=max(settings.default.max_examples, 400 if backend == "sqlite" else 200),
            stateful_step_count=100,
            phases=NO_EXPLAIN,
        ),
    )


def test_the_reference_check_catches_an_injected_over_admission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Break the fairness rule by one (free >= waiters ahead): the machine must notice."""
    from collet_limiter import _fairness

    def off_by_one(self: Any, key: ModelKey) -> tuple[bool, str]:
        free = self.limits[key] - self.held.get(key, 0)
        return free >= self.ahead.get(key, 0), "room (broken on purpose)"

    monkeypatch.setattr(_fairness.Snapshot, "model_verdict", off_by_one)
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(
            machine(tmp_path),
            settings=settings(
                max_examples=200,
                stateful_step_count=30,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow],
                report_multiple_bugs=False,
                derandomize=True,
            ),
        )
    # Whatever the machine trips on first (a grant the model refuses, a reap it did not expect, a
    # count above a limit), it is one of its own checks; on the unbroken rule it passes (above).
    # Derandomized: on some random draws the claim's own consistency assert (_claim.py,
    # _full_for_newcomers) fired before any of the machine's checks, and the test failed (3 of
    # 15 runs on 2026-12-03, 1 of 16 on the code before).
    assert Path(str(caught.traceback[-1].path)).name in {"test_stateful.py", "reference.py"}


# --- found by the machine --------------------------------------------------------------------


def queue_for(key: str, limiter: Limiter) -> ClaimRequest:
    """A request that queues for ``key`` alone when it cannot be granted (as acquire_wait)."""
    return limiter._core.request(key, None, fallback=False, enqueue=True, label=None)


def core_claim(limiter: Limiter, request: ClaimRequest) -> tuple[ClaimRequest, Any]:
    """One claim through the limiter's Core, in its turn to write; returns (request, result)."""
    return request, limiter._runtime.write(lambda conn: limiter._core.claim(conn, request))


def test_a_waiter_whose_ticket_was_reclaimed_does_not_take_the_place_of_a_later_one(
    db: Path, clock: FakeClock
) -> None:
    """A stalled waiter retrying with a reclaimed ticket's id must not use another's ticket.

    SQLite reuses the largest rowid once its row is deleted, so the ticket queued right after a
    stalled waiter's ticket was reaped can get the same id. The stalled waiter must go to the
    back of the queue (its ticket is gone), not take that id's place and delete its ticket.
    """
    config = make_config(models=[{"name": "m", "concurrency_limit": 1}])
    holder, a, b = (Limiter(db, config=config, clock=clock, lease_ttl=60) for _ in range(3))
    try:
        lease = holder.acquire("p/m")
        request_a, queued_a = core_claim(a, queue_for("p/m", a))
        clock.advance(61)  # a stalls past its ticket's expiry; the holder stays alive
        holder.renew()
        request_b, queued_b = core_claim(b, queue_for("p/m", b))  # reclaims a's ticket
        lease.release()
        _, again_a = core_claim(a, a._core.with_ticket(request_a, queued_a))  # a resumes
        _, again_b = core_claim(b, b._core.with_ticket(request_b, queued_b))
        assert again_a.lease is None and again_a.requeued, "a's ticket was gone: a requeues"
        assert again_b.lease is not None and again_b.lease.via == "queue", "b was first"
    finally:
        for limiter in (holder, a, b):
            limiter.close()


def test_a_waiter_whose_ticket_was_reclaimed_goes_behind_the_waiters_still_queued(
    db: Path, clock: FakeClock
) -> None:
    """Its old place is gone: it must not be granted ahead of waiters queued after that place.

    (Here no id is reused: ``c`` queued before ``a`` stalled, ``b`` after ``a``'s ticket went.)
    """
    config = make_config(models=[{"name": "m", "concurrency_limit": 1}])
    holder, a, b = (Limiter(db, config=config, clock=clock, lease_ttl=60) for _ in range(3))
    try:
        lease = holder.acquire("p/m")
        request_a, queued_a = core_claim(a, queue_for("p/m", a))
        request_c, queued_c = core_claim(holder, queue_for("p/m", holder))
        clock.advance(61)  # a stalls past its ticket's expiry; holder (and its waiter c) renew
        holder.renew()
        core_claim(b, queue_for("p/m", b))  # reclaims a's ticket, queues b
        lease.release()
        _, again_a = core_claim(a, a._core.with_ticket(request_a, queued_a))  # a resumes
        assert again_a.lease is None, f"a jumped the queue ({again_a.lease})"
        assert again_a.requeued
        _, again_c = core_claim(holder, holder._core.with_ticket(request_c, queued_c))
        assert again_c.lease is not None, "c, the oldest waiter left, is served"
    finally:
        for limiter in (holder, a, b):
            limiter.close()


def test_a_lease_granted_after_its_holder_lost_one_is_still_renewed(
    db: Path, clock: FakeClock
) -> None:
    """Releasing a lost lease must not stop the heartbeat renewing the holder's live lease.

    The live lease may reuse the lost lease's row id (SQLite reuses the largest rowid); if the
    limiter tracks its leases by id alone, releasing the lost handle forgets the live one, which
    then expires while held and is granted to someone else.
    """
    config = make_config(models=[{"name": "m", "concurrency_limit": 1}])
    with (
        Limiter(db, config=config, clock=clock, lease_ttl=60) as limiter,
        Limiter(db, config=config, clock=clock, lease_ttl=60) as other,
    ):
        stalled = limiter.acquire("p/m")
        clock.advance(61)  # the holder stalled past its TTL
        live = limiter.acquire("p/m", timeout=0)  # reclaims the expired lease
        stalled.release()
        assert stalled.lost
        clock.advance(30)
        limiter.renew()  # what the heartbeat does every TTL/3
        clock.advance(40)  # 70 s after the grant, 40 s after the renewal
        with pytest.raises(AcquireTimeout):
            _held1 = other.acquire("p/m", timeout=0)
        assert not live.lost


def test_renewal_reports_a_lost_lease_even_when_its_id_was_reused(
    db: Path, clock: FakeClock
) -> None:
    config = make_config(models=[{"name": "m", "concurrency_limit": 1}])
    with Limiter(db, config=config, clock=clock, lease_ttl=60) as limiter:
        stalled = limiter.acquire("p/m")
        clock.advance(61)
        live = limiter.acquire("p/m", timeout=0)  # reclaims the expired lease
        assert limiter.renew() == [stalled]
        assert stalled.lost and not live.lost
