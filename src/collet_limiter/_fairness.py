"""The fairness rule, as a pure function of one snapshot of leases and waiters.

A request may take a slot of model K only if K's free slots exceed the live waiters of K queued
ahead of it; a fresh request (no ticket) is behind every waiter. The global cap works the same way
over the waiters ahead whose own model has room for them: a fresh request never takes the last
global slots from waiters who could use them, and a waiter whose model is full does not block
others from the global slots it could not use anyway.

Without such tickets polling waiters starve: whoever polls fastest wins.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._keys import ModelKey


class Snapshot:
    """Limits, live lease counts and the queue, as read in one transaction."""

    __slots__ = ("_queues", "cap", "held", "limits", "queue", "total_held")

    def __init__(
        self,
        *,
        limits: Mapping[ModelKey, int],
        held: Mapping[ModelKey, int],
        queue: Sequence[tuple[int, ModelKey]],
        cap: int,
    ) -> None:
        self.limits = limits
        self.held = held
        self.queue = sorted(queue)
        self.cap = cap
        self.total_held = sum(held.values())
        self._queues: dict[ModelKey, list[int]] = {}
        for ticket, key in self.queue:
            self._queues.setdefault(key, []).append(ticket)

    def free(self, key: ModelKey) -> int:
        """Free slots of ``key`` (negative after a limit was lowered below its holders)."""
        return self.limits[key] - self.held.get(key, 0)

    def waiters_ahead(self, key: ModelKey, ticket: int | None) -> int:
        """Waiters of ``key`` queued before ``ticket`` (all of them for a fresh request)."""
        tickets = self._queues.get(key, [])
        return len(tickets) if ticket is None else bisect.bisect_left(tickets, ticket)

    def model_has_room(self, key: ModelKey, ticket: int | None) -> bool:
        """Whether ``key`` has a slot for the request holding ``ticket``."""
        return self.free(key) > self.waiters_ahead(key, ticket)

    def global_waiters_ahead(self, ticket: int | None) -> int:
        """Waiters queued before ``ticket`` whose own model has room for them."""
        return sum(
            1
            for other, key in self.queue
            if (ticket is None or other < ticket)
            and key in self.limits
            and self.model_has_room(key, other)
        )

    def global_has_room(self, ticket: int | None) -> bool:
        """Whether the global cap leaves a slot for the request holding ``ticket``."""
        return self.cap - self.total_held > self.global_waiters_ahead(ticket)

    def global_verdict(self, ticket: int | None) -> tuple[bool, str]:
        """Whether the global cap admits the request, and why not."""
        free = self.cap - self.total_held
        if free <= 0:
            return False, f"global cap full ({self.total_held}/{self.cap} held)"
        ahead = self.global_waiters_ahead(ticket)
        if free > ahead:
            return True, f"global cap {self.total_held}/{self.cap}"
        return False, f"global cap: {free} free but {ahead} earlier waiter(s) can use them"

    def model_verdict(self, key: ModelKey, ticket: int | None) -> tuple[bool, str]:
        """Whether ``key`` admits the request, and the reason in words."""
        held, limit = self.held.get(key, 0), self.limits[key]
        free = limit - held
        if free <= 0:
            return False, f"full ({held}/{limit} held)"
        ahead = self.waiters_ahead(key, ticket)
        if free > ahead:
            return True, f"room ({held}/{limit} held)"
        return False, f"{free} free but {ahead} waiter(s) queued ahead ({held}/{limit} held)"
