"""The fairness rule, as a pure function of one snapshot of leases and waiters.

A request may take a slot of model K only if K's free slots exceed the live waiters of K queued
ahead of it; a fresh request (no ticket) is behind every waiter. The global cap works the same way
over the waiters ahead whose own model has room for them: a fresh request never takes the last
global slots from waiters who could use them, and a waiter whose model is full does not block
others from the global slots it could not use anyway.

Without such tickets polling waiters starve: whoever polls fastest wins.

Everything here needs only, per model, how many waiters are queued ahead of the request: the
waiters of K with room are the first ``free(K)`` of K's queue, so of the ``ahead(K)`` waiters
ahead of a request, ``min(ahead(K), free(K))`` have room. A claim therefore reads one count per
model, never the whole queue.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._keys import ModelKey

K = TypeVar("K", bound=Hashable)


class Snapshot:
    """Limits, live lease counts, the cap, and the waiters ahead of one request, per model."""

    __slots__ = ("ahead", "cap", "cooling", "held", "limits", "lowered", "total_held")

    def __init__(
        self,
        *,
        limits: Mapping[ModelKey, int],
        held: Mapping[ModelKey, int],
        ahead: Mapping[ModelKey, int],
        cap: int,
        cooling: Mapping[ModelKey, str] | None = None,
        lowered: Mapping[ModelKey, int] | None = None,
    ) -> None:
        self.limits = limits  # in force now: 0 for a model cooling down (see _cooldown)
        self.held = held
        self.ahead = ahead
        self.cap = cap
        self.cooling = cooling or {}  # why a model cooling down admits nobody
        self.lowered = lowered or {}  # configured limits of models with a lower adaptive one
        self.total_held = sum(held.values())

    def free(self, key: ModelKey) -> int:
        """Free slots of ``key`` (negative after a limit was lowered below its holders)."""
        return self.limits[key] - self.held.get(key, 0)

    def model_has_room(self, key: ModelKey) -> bool:
        """Whether ``key`` has a slot for the request."""
        return self.free(key) > self.ahead.get(key, 0)

    def global_waiters_ahead(self) -> int:
        """Waiters queued ahead of the request whose own model has room for them."""
        return sum(
            min(count, max(self.free(key), 0))
            for key, count in self.ahead.items()
            if key in self.limits
        )

    def global_has_room(self) -> bool:
        """Whether the global cap leaves a slot for the request."""
        return self.cap - self.total_held > self.global_waiters_ahead()

    def global_verdict(self) -> tuple[bool, str]:
        """Whether the global cap admits the request, and why not."""
        free = self.cap - self.total_held
        if free <= 0:
            return False, f"global cap full ({self.total_held}/{self.cap} held)"
        ahead = self.global_waiters_ahead()
        if free > ahead:
            return True, f"global cap {self.total_held}/{self.cap}"
        return False, f"global cap: {free} free but {ahead} earlier waiter(s) can use them"

    def model_verdict(self, key: ModelKey) -> tuple[bool, str]:
        """Whether ``key`` admits the request, and the reason in words."""
        cooling = self.cooling.get(key)
        if cooling is not None:
            return False, cooling
        held, limit = self.held.get(key, 0), self.limits[key]
        configured = self.lowered.get(key)
        use = f"{held}/{limit} held" + (
            "" if configured is None else f", adaptive limit {limit} of {configured}"
        )
        free = limit - held
        if free <= 0:
            return False, f"full ({use})"
        ahead = self.ahead.get(key, 0)
        if free > ahead:
            return True, f"room ({use})"
        return False, f"{free} free but {ahead} waiter(s) queued ahead ({use})"

    def admits(self, key: ModelKey) -> bool:
        """Both the model and the global cap have room for the request."""
        return self.model_has_room(key) and self.global_has_room()


def ahead_of_each(
    queue: Iterable[tuple[int, ModelKey]], tickets: Iterable[int]
) -> dict[int, dict[ModelKey, int]]:
    """For each of ``tickets``, the waiters per model queued before it, from the whole queue.

    One pass over the queue in ticket order, so answering for many waiters costs one read.
    """
    wanted = set(tickets)
    counts: dict[ModelKey, int] = {}
    out: dict[int, dict[ModelKey, int]] = {}
    for ticket, key in sorted(queue):
        if ticket in wanted:
            out[ticket] = dict(counts)
        counts[key] = counts.get(key, 0) + 1
    return out


def admissible(
    queue: Iterable[tuple[int, K]],
    limits: Mapping[K, int],
    held: Mapping[K, int],
    cap: int,
    *,
    held_total: int | None = None,
) -> list[int]:
    """The tickets a claim would grant right now, in queue order: the ones worth waking.

    The same rule as ``Snapshot``, for every waiter in one pass: a waiter is admissible when its
    model's free slots exceed the waiters of that model ahead of it, and the free global slots
    exceed the earlier waiters whose own model had room. Models are keyed by ``ModelKey`` or by
    anything else that names them alike in the three arguments. ``held_total`` is every lease
    held, when ``held`` lists only the models waited for (default: the sum of ``held``).
    """
    ahead: dict[K, int] = {}
    with_room = 0
    global_free = cap - (sum(held.values()) if held_total is None else held_total)
    out = []
    for ticket, key in sorted(queue):
        if key not in limits:
            continue
        before = ahead.get(key, 0)
        ahead[key] = before + 1
        if limits[key] - held.get(key, 0) > before:
            if global_free > with_room:
                out.append(ticket)
            with_room += 1
    return out
