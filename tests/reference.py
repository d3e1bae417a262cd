"""A small pure reference model of the limiter's rules, written from the README, not the code.

It imports nothing of ``_fallback``, ``_fairness`` or ``_store``: only the public data types
(``ModelKey``, ``Config`` for its parsed fields, ``CostTier`` and ``profile_for``, the built-in
profile table, which ``test_properties`` checks on its own). Everything is plain dictionaries
in memory, with the ids the real limiter assigned, so that a test can compare the two row by row.

The rules, as the README states them:

- A model's row: a ``[[models]]`` entry whose name is the model name, else one named
  ``provider/model``, gives the limit, tier and tool use; what it leaves out comes from the
  built-in table, and the limit from the tier (premium 3, standard 5, cheap 8). The config's
  providers give the rows in config order; other keys get a row when first requested.
- Fallback order: the primary; the chain (skipping repeats); configured non-CLI models of the
  same tier or one lower, with tool use if the primary has it; each CLI provider's first model,
  checked for tool use only.
- Fairness, as a walk of the queue (``Reference.walk``): take the tickets oldest first, with
  each model's free slots and the global cap's free slots in hand. A ticket is admitted when its
  model has a slot left and the cap has a slot left, after the admissions of the tickets before
  it; an admitted ticket takes one of each, a refused one takes nothing. A request is admitted
  where the walk of the tickets queued before it (all of them for a fresh request, which is
  behind every waiter) leaves a slot of its model and of the cap. (The README states the same
  rule over counts: K's free slots must exceed the waiters of K ahead, the cap's free slots the
  waiters ahead whose own model has room; the walk is written so as not to copy that formula.)
- A claim that cannot grant the primary first reclaims expired leases and tickets and those of
  dead holders, then decides again.
- Learning from refusals (``Reference.report``): a reported refusal stops new leases on the model
  until ``now + secs``, or later if a cooldown already ran longer; meanwhile the model counts as
  having no slot at all (its waiters keep their places; they take no cap slot in the walk). With
  adaptive limits the model's limit drops to one less than its holders at the report (never
  below 1, never raised by a report) and comes back one slot per recovery period without a
  report, up to the configured limit; a report without adaptive limits keeps a lowered limit
  where it has climbed to and restarts its recovery. Leases above a lowered limit stay. Writing
  another config keeps the cooldowns of the keys it keeps, and drops every adaptive limit.
- Handing over (``Reference.serve``): whatever frees room (a release that finds its lease, a
  discard of an interrupted acquire, a close, a reap or a claim that reclaimed something)
  grants, in the same step, every ticket the walk of the whole queue then admits: in queue
  order, each becomes a lease with the next lease id (ids are never handed out twice), via
  "queue", with the ticket's owner, holder and expiry and the lease token its request carried.
  A claim made later with that ticket gets exactly that lease. A claim that reclaimed something
  serves everyone but itself: its own ticket, if it keeps one, was just refused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from collet_limiter import CostTier, ModelKey, profile_for

if TYPE_CHECKING:
    from collections.abc import Iterable

    from collet_limiter import Config

TIER_LIMIT = {CostTier.PREMIUM: 3, CostTier.STANDARD: 5, CostTier.CHEAP: 8}
ONE_LOWER = {CostTier.PREMIUM: CostTier.STANDARD, CostTier.STANDARD: CostTier.CHEAP}


@dataclass(frozen=True)
class Row:
    """A model's limit and profile; ``position`` is None for a key added on demand."""

    key: ModelKey
    limit: int
    tier: CostTier
    tools: bool
    is_cli: bool
    position: int | None


def _entry(config: Config, key: ModelKey) -> object | None:
    for name in (key.model, f"{key.provider}/{key.model}"):
        for entry in config.models:
            if entry.name == name:
                return entry
    return None


def row_for(config: Config, key: ModelKey, *, position: int | None, is_cli: bool) -> Row:
    """The row of ``key`` under ``config``."""
    base = profile_for(key.model)
    entry = _entry(config, key)
    tier = getattr(entry, "cost_tier", None) or base.cost_tier
    tools = getattr(entry, "supports_tools", None)
    tools = base.supports_tool_use if tools is None else tools
    limit = getattr(entry, "concurrency_limit", None) or TIER_LIMIT[tier]
    return Row(key, limit, tier, tools, is_cli, position)


def configured_rows(config: Config) -> list[Row]:
    """The providers' models in config order (a provider listing none is ``name/name``)."""
    rows: list[Row] = []
    for provider in config.providers:
        for model in provider.models or (provider.name,):
            key = ModelKey(provider.name, model)
            if all(row.key != key for row in rows):
                rows.append(row_for(config, key, position=len(rows), is_cli=bool(provider.cli)))
    return rows


def demand_row(config: Config, key: ModelKey) -> Row:
    """The row added for a key the config's providers do not list."""
    is_cli = any(p.name == key.provider and bool(p.cli) for p in config.providers)
    return row_for(config, key, position=None, is_cli=is_cli)


def what_config_writes(config: Config) -> tuple[object, ...]:
    """What opening with ``config`` stores: equal values mean the database is left as it is."""
    entries = tuple(entry.model_dump(mode="json") for entry in config.models)
    return (config.max_agents, tuple(configured_rows(config)), repr(entries))


@dataclass
class Holding:
    """A lease or a ticket as the model knows it."""

    key: ModelKey
    owner: str
    token: str
    expires: float
    via: str = ""
    dead: bool = False
    # A ticket's: the token of the lease it becomes when its turn comes (the request's token).
    lease_token: str = ""


@dataclass
class Outcome:
    """What a claim should do: grant (key, via), or leave a ticket; and what it reclaims."""

    granted: tuple[ModelKey, str] | None
    ticket: int | None
    requeued: bool
    reaped: set[tuple[str, int]] = field(default_factory=set)
    lease: int | None = None  # the id of the lease granted


@dataclass
class Reference:
    """The state the limiter's tables should hold, and the rules that change it."""

    config: Config
    now: float
    ttl: float
    rows: dict[ModelKey, Row] = field(default_factory=dict)
    cap: int = 3
    leases: dict[int, Holding] = field(default_factory=dict)
    tickets: dict[int, Holding] = field(default_factory=dict)
    written: tuple[object, ...] | None = None
    # Per key, how far above its limit the holders may be: only after a config lowered the limit
    # under existing leases, and never more than then.
    allowance: Counter[ModelKey] = field(default_factory=Counter)
    cap_allowance: int = 0
    # The highest lease id ever handed out: the next lease gets the one after it.
    last_lease: int = 0
    # Per key: the end of its cooldown, and (lowered limit, when lowered, recovery period).
    cooldowns: dict[ModelKey, float] = field(default_factory=dict)
    lowered: dict[ModelKey, tuple[int, float, float]] = field(default_factory=dict)

    # --- config ---------------------------------------------------------------------------------

    def open_with(self, config: Config) -> bool:
        """A limiter opened with ``config``; True when it rewrote the models table and the cap."""
        if self.written == what_config_writes(config):
            return False
        demand_keys = [key for key, row in self.rows.items() if row.position is None]
        new = {row.key: row for row in configured_rows(config)}
        for key in demand_keys:
            new.setdefault(key, demand_row(config, key))
        self.rows, self.cap, self.config = new, config.max_agents, config
        # A cooldown stays with the keys the table keeps (a dropped row forgets it); adaptive
        # limits start again from the new config's limits.
        self.cooldowns = {k: v for k, v in self.cooldowns.items() if k in new}
        self.lowered = {}
        self.written = what_config_writes(config)
        self._rebase(self.rows)
        self.cap_allowance = max(self.cap_allowance, len(self.leases) - self.cap, 0)
        return True

    def ensure(self, config: Config, keys: Iterable[ModelKey]) -> None:
        """Rows for requested keys the table lacks, computed by the requester's config."""
        added = [key for key in dict.fromkeys(keys) if key not in self.rows]
        for key in added:
            self.rows[key] = demand_row(config, key)
        self._rebase(added)

    def _rebase(self, keys: Iterable[ModelKey]) -> None:
        """A limit was (re)defined under existing leases: those leases are not revoked."""
        held = self.held()
        for key in keys:
            over = held[key] - self.rows[key].limit
            if over > 0:
                self.allowance[key] = max(self.allowance[key], over)

    # --- reading --------------------------------------------------------------------------------

    def cooling(self, key: ModelKey) -> bool:
        """Whether ``key`` is cooling down now."""
        return key in self.cooldowns and self.now < self.cooldowns[key]

    def adaptive_limit(self, key: ModelKey) -> int:
        """The limit of ``key`` now, cooldowns aside: configured, or lowered and climbing."""
        limit = self.rows[key].limit
        if key not in self.lowered:
            return limit
        value, since, period = self.lowered[key]
        step_at = since + period
        while step_at <= self.now and value < limit:  # one slot back per period passed
            value += 1
            step_at += period
        return min(value, limit)

    def slots(self, key: ModelKey) -> int:
        """The limit the walk uses for ``key`` now: none while it cools down."""
        return 0 if self.cooling(key) else self.adaptive_limit(key)

    def held(self) -> Counter[ModelKey]:
        """Leases per model."""
        return Counter(lease.key for lease in self.leases.values())

    def candidates(
        self, primary: ModelKey, chain: Iterable[ModelKey]
    ) -> list[tuple[ModelKey, str, bool]]:
        """(key, via, eligible) in the order they are tried."""
        want = self.rows[primary]
        out = [(primary, "primary", True)]
        seen = {primary}
        for key in chain:
            if key not in seen:
                seen.add(key)
                out.append((key, "chain", True))
        configured = sorted(
            (row for row in self.rows.values() if row.position is not None),
            key=lambda row: row.position or 0,
        )
        for row in configured:
            if row.is_cli or row.key in seen:
                continue
            seen.add(row.key)
            tier_ok = row.tier in (want.tier, ONE_LOWER.get(want.tier))
            out.append((row.key, "capability", tier_ok and (row.tools or not want.tools)))
        offered: set[str] = set()
        for row in configured:
            if not row.is_cli or row.key.provider in offered:
                continue
            offered.add(row.key.provider)
            if row.key not in seen:
                seen.add(row.key)
                out.append((row.key, "cli", row.tools or not want.tools))
        return out

    def walk(self, before: int | None = None) -> tuple[list[int], dict[ModelKey, int], int]:
        """Walk the queue oldest first, up to ``before`` (the whole queue for None).

        Returns the tickets admitted, in order, and the slots left after them: per model, and
        under the global cap. A ticket is admitted when its model and the cap both still have a
        slot after the tickets admitted before it; it then takes one of each. A ticket whose
        model has no row has no slot to take and is passed over.
        """
        held = self.held()
        model_left = {key: self.slots(key) - held[key] for key in self.rows}
        cap_left = self.cap - len(self.leases)
        admitted: list[int] = []
        for tid in sorted(self.tickets):
            if before is not None and tid >= before:
                break
            key = self.tickets[tid].key
            if key in model_left and model_left[key] > 0 and cap_left > 0:
                admitted.append(tid)
                model_left[key] -= 1
                cap_left -= 1
        return admitted, model_left, cap_left

    def admits(self, key: ModelKey, ticket: int | None) -> tuple[bool, bool]:
        """(the model has room, the global cap has room) for a request holding ``ticket``.

        The request stands behind the tickets queued before its own (behind all of them when
        it has none): the walk of those leaves it a slot of ``key`` and of the cap, or not.
        """
        _, model_left, cap_left = self.walk(ticket)
        return model_left[key] > 0, cap_left > 0

    def decide(
        self, primary: ModelKey, chain: Iterable[ModelKey], *, fallback: bool, ticket: int | None
    ) -> tuple[ModelKey, str] | None:
        """The (key, via) a claim grants now, without reclaiming anything; None for nothing."""
        if fallback:
            options = self.candidates(primary, chain)
        else:
            options = [(primary, "queue" if ticket is not None else "primary", True)]
        for key, via, eligible in options:
            if not eligible:
                continue
            model_ok, global_ok = self.admits(key, ticket)
            if not global_ok:
                return None
            if model_ok:
                return key, via
        return None

    def lease_for(self, token: str) -> int | None:
        """The id of the lease stored under ``token``, if any."""
        return next((lid for lid, lease in self.leases.items() if lease.token == token), None)

    def has_ticket(self, ticket: int | None, token: str) -> bool:
        """Whether this waiter's ticket is still queued (an id alone may have been reused)."""
        return ticket in self.tickets and self.tickets[ticket].token == token

    def could_grant(self, primary: ModelKey, ticket: int, token: str) -> bool:
        """What a waiter's lock-free look answers (True also when a claim must sort it out)."""
        if primary not in self.rows or not self.has_ticket(ticket, token):
            return True
        return all(self.admits(primary, ticket))

    # --- changing -------------------------------------------------------------------------------

    def reap(self) -> set[tuple[str, int]]:
        """Remove expired leases and tickets and those of dead holders; serve if any went."""
        gone = self._reclaim()
        if gone:
            self.serve()
        return gone

    def _reclaim(self) -> set[tuple[str, int]]:
        gone: set[tuple[str, int]] = set()
        for kind, table in (("lease", self.leases), ("ticket", self.tickets)):
            for hid, holding in list(table.items()):
                if holding.expires < self.now or holding.dead:
                    del table[hid]
                    gone.add((kind, hid))
        self._shrink_allowance()
        return gone

    def claim(
        self,
        config: Config,
        owner: str,
        primary: ModelKey,
        chain: list[ModelKey],
        *,
        fallback: bool,
        enqueue: bool,
        ticket: int | None,
        tokens: tuple[str, str],
        new_lease: int | None,
        new_ticket: int | None,
    ) -> Outcome:
        """One claim by a limiter opened with ``config``; ``new_*`` are the ids the real one used.

        ``tokens`` are the request's lease token and ticket token. A claim with a ticket that
        was served meanwhile returns the lease served, and does nothing else.
        """
        lease_token, ticket_token = tokens
        served = self.lease_for(lease_token) if ticket is not None else None
        if served is not None:
            lease = self.leases[served]
            return Outcome((lease.key, lease.via), None, requeued=False, lease=served)
        self.ensure(config, [primary, *chain])
        requeued = False
        if ticket is not None and not self.has_ticket(ticket, ticket_token):
            ticket, requeued = None, True
        granted = self.decide(primary, chain, fallback=fallback, ticket=ticket)
        reaped: set[tuple[str, int]] = set()
        if granted is None or granted[0] != primary:
            reaped = self._reclaim()
            if reaped:
                if ticket is not None and not self.has_ticket(ticket, ticket_token):
                    ticket, requeued = None, True
                granted = self.decide(primary, chain, fallback=fallback, ticket=ticket)
        outcome = Outcome(None, None, requeued, reaped)
        if granted is not None:
            assert new_lease is not None, f"the reference grants {granted}, the limiter nothing"
            assert new_lease > self.last_lease, f"lease id {new_lease} was handed out before"
            self.last_lease = new_lease
            self.leases[new_lease] = Holding(
                granted[0], owner, lease_token, self.now + self.ttl, granted[1]
            )
            if ticket is not None:
                del self.tickets[ticket]
            outcome.granted, outcome.lease = granted, new_lease
        elif ticket is None and (enqueue or requeued):
            assert new_ticket is not None, "the reference queues a ticket, the limiter none"
            self.tickets[new_ticket] = Holding(
                primary, owner, ticket_token, self.now + self.ttl, lease_token=lease_token
            )
            outcome.ticket = new_ticket
        else:
            outcome.ticket = ticket
        if reaped:
            self.serve(skip=outcome.ticket)
        return outcome

    def serve(self, skip: int | None = None) -> list[int]:
        """Grant every ticket the walk admits; returns their ids, in order.

        Each becomes a lease with the next id, ``via`` "queue", carrying its ticket's owner,
        expiry, holder (alive or dead) and lease token. Serving twice grants nothing more: what
        the walk refused it refuses again once the admitted tickets hold their slots.
        """
        admitted, _, _ = self.walk()
        # ``skip`` is the ticket a claim that reclaimed something keeps: a claim keeps its ticket
        # only when the walk refuses it, so it is never among those served.
        assert skip not in admitted, f"ticket {skip} was refused, yet the walk admits it"
        for tid in admitted:
            ticket = self.tickets.pop(tid)
            self.last_lease += 1
            self.leases[self.last_lease] = replace(
                ticket, token=ticket.lease_token, via="queue", lease_token=""
            )
        return admitted

    def report(
        self, config: Config, key: ModelKey, secs: float, *, adaptive: bool, period: float
    ) -> None:
        """A refusal on ``key`` reported now (by a limiter opened with ``config``)."""
        self.ensure(config, [key])
        self.cooldowns[key] = max(self.cooldowns.get(key, self.now + secs), self.now + secs)
        limit, now_limit = self.rows[key].limit, self.adaptive_limit(key)
        if adaptive:
            value, step = min(now_limit, max(1, self.held()[key] - 1)), period
        elif key in self.lowered:
            value, step = now_limit, self.lowered[key][2]
        else:
            return
        if value < limit:
            self.lowered[key] = (value, self.now, step)
        else:
            self.lowered.pop(key, None)

    def holds(self, lease_id: int, token: str) -> bool:
        """Whether the lease with this id and token is still stored."""
        return lease_id in self.leases and self.leases[lease_id].token == token

    def release(self, lease_id: int, token: str) -> bool:
        """Delete a lease by id and token; False when it was already reclaimed."""
        if not self.holds(lease_id, token):
            return False
        del self.leases[lease_id]
        self._shrink_allowance()
        self.serve()
        return True

    def discard(self, lease_token: str, ticket_token: str) -> None:
        """A waiter gave up (timed out, was cancelled): its ticket goes, and its lease if served."""
        self.leases = {i: h for i, h in self.leases.items() if h.token != lease_token}
        self.tickets = {i: t for i, t in self.tickets.items() if t.token != ticket_token}
        self._shrink_allowance()
        self.serve()

    def renew(self, owner: str) -> None:
        """Every lease and ticket of ``owner`` now expires one TTL from now."""
        for holding in (*self.leases.values(), *self.tickets.values()):
            if holding.owner == owner:
                holding.expires = self.now + self.ttl

    def close(self, owner: str) -> None:
        """A limiter closed: its leases and tickets go."""
        self.leases = {i: h for i, h in self.leases.items() if h.owner != owner}
        self.tickets = {i: h for i, h in self.tickets.items() if h.owner != owner}
        self._shrink_allowance()
        self.serve()

    def kill(self, kind: str, hid: int) -> None:
        """The holder of a lease or ticket is now provably dead."""
        table = self.leases if kind == "lease" else self.tickets
        table[hid] = replace(table[hid], dead=True)

    def _shrink_allowance(self) -> None:
        held = self.held()
        for key in list(self.allowance):
            limit = self.rows[key].limit if key in self.rows else held[key]
            self.allowance[key] = min(self.allowance[key], max(held[key] - limit, 0))
            if not self.allowance[key]:
                del self.allowance[key]
        self.cap_allowance = min(self.cap_allowance, max(len(self.leases) - self.cap, 0))

    # --- the guarantees -------------------------------------------------------------------------

    def within_limits(self, held: Counter[ModelKey], total: int) -> list[str]:
        """Every way ``held`` (from the reference or the tables) breaks guarantee 1."""
        problems = [
            f"{key}: {count} held, limit {self.rows[key].limit} (+{self.allowance[key]} kept "
            "from before a config lowered it)"
            for key, count in held.items()
            if key in self.rows and count > self.rows[key].limit + self.allowance[key]
        ]
        if total > self.cap + self.cap_allowance:
            problems.append(f"{total} held in all, global cap {self.cap}")
        return problems
