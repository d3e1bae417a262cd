"""What the limiter hands back: outcomes of an acquire, and read-only views of the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ._cooldown import cooling, effective_limit
from ._identity import holder_alive
from ._store import utc_datetime

if TYPE_CHECKING:
    from datetime import datetime

    from ._claim import Verdict
    from ._fallback import ModelRow, Via
    from ._keys import ModelKey
    from ._profiles import CostTier
    from ._store import LeaseRecord, Removed, TicketRecord

L = TypeVar("L")


@dataclass(frozen=True, slots=True)
class Acquired(Generic[L]):
    """``acquire_with_fallback`` granted a lease (on the primary or a fallback)."""

    lease: L


@dataclass(frozen=True, slots=True)
class QueueWait:
    """``acquire_with_fallback`` found no candidate with room: wait for ``key`` (the primary)."""

    key: ModelKey
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """One lease as stored: who holds which model, since when, until when."""

    id: int
    key: ModelKey
    primary: ModelKey
    via: Via
    holder: str | None
    pid: int
    host: str
    host_id: str
    acquired_at: datetime
    expires_at: datetime
    holder_alive: bool | None  # None: the holder is on another host identity, unknowable here

    @classmethod
    def from_record(cls, record: LeaseRecord) -> LeaseInfo:
        """The public view of a stored lease (without its token), checking its holder's PID."""
        return cls(
            id=record.id,
            key=record.key,
            primary=record.primary,
            via=record.via,
            holder=record.holder,
            pid=record.pid,
            host=record.hostname,
            host_id=record.host_id,
            acquired_at=utc_datetime(record.acquired_ts),
            expires_at=utc_datetime(record.expires_ts),
            holder_alive=holder_alive(
                holder_host=record.host_id, pid=record.pid, pid_start=record.pid_start
            ),
        )


@dataclass(frozen=True, slots=True)
class TicketInfo:
    """One queued waiter: its place (``id``, smaller first), model and process."""

    id: int
    key: ModelKey
    holder: str | None
    pid: int
    host: str
    host_id: str
    enqueued_at: datetime
    expires_at: datetime

    @classmethod
    def from_record(cls, record: TicketRecord) -> TicketInfo:
        """The public view of a stored ticket (without its token)."""
        return cls(
            id=record.id,
            key=record.key,
            holder=record.holder,
            pid=record.pid,
            host=record.hostname,
            host_id=record.host_id,
            enqueued_at=utc_datetime(record.enqueued_ts),
            expires_at=utc_datetime(record.expires_ts),
        )


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model's limit, use and queue, and what was learned from its provider's refusals.

    ``limit`` is the configured limit and ``effective_limit`` the one in force (lower after a
    429 with ``[limiter] adaptive``). While ``cooldown_until`` is in the future the model takes
    no new lease; ``cooldown_kind`` says why (rate_limited, overloaded, quota, exit_code).
    """

    key: ModelKey
    limit: int
    in_use: int
    waiting: int
    cost_tier: CostTier
    supports_tool_use: bool
    is_cli: bool
    configured: bool  # listed by the config's providers (else added on demand)
    effective_limit: int = 0
    cooldown_until: datetime | None = None
    cooldown_kind: str | None = None
    cooldown_reason: str | None = None
    cooldown_left: float = 0.0  # seconds, as of the read

    @classmethod
    def of(cls, row: ModelRow, now: float, *, in_use: int, waiting: int) -> ModelStatus:
        """The status of one ``models`` row at ``now``."""
        health = row.health
        cools = cooling(health, now)
        until = health.cooldown_until
        return cls(
            key=row.key,
            limit=row.limit,
            in_use=in_use,
            waiting=waiting,
            cost_tier=row.cost_tier,
            supports_tool_use=row.supports_tool_use,
            is_cli=row.is_cli,
            configured=row.position is not None,
            effective_limit=effective_limit(row.limit, health, now),
            cooldown_until=utc_datetime(until) if cools and until is not None else None,
            cooldown_kind=health.cooldown_kind if cools else None,
            cooldown_reason=health.cooldown_reason if cools else None,
            cooldown_left=(until or now) - now if cools else 0.0,
        )


@dataclass(frozen=True, slots=True)
class Cooldown:
    """What a reported refusal did to a model: cooling down until ``until``, for everyone.

    ``started`` is False when the model was cooling down already (the cooldown was extended, or
    kept when it ended later). ``effective_limit`` is the limit in force after the report.
    """

    key: ModelKey
    kind: str
    reason: str
    until: datetime
    started: bool
    limit: int
    effective_limit: int

    @classmethod
    def of(cls, row: ModelRow, now: float, *, started: bool) -> Cooldown:
        """The cooldown stored in ``row`` as of ``now``."""
        health = row.health
        return cls(
            key=row.key,
            kind=health.cooldown_kind or "rate_limited",
            reason=health.cooldown_reason or "",
            until=utc_datetime(health.cooldown_until or now),
            started=started,
            limit=row.limit,
            effective_limit=effective_limit(row.limit, health, now),
        )


@dataclass(frozen=True, slots=True)
class Status:
    """The global cap and every model's use, as of one read."""

    max_agents: int
    in_use: int
    waiting: int
    models: tuple[ModelStatus, ...]


@dataclass(frozen=True, slots=True)
class Reaped:
    """A lease or ticket removed because it expired or its holder was provably dead."""

    kind: str
    id: int
    key: ModelKey
    pid: int
    host: str
    holder: str | None
    reason: str

    @classmethod
    def from_removed(cls, removed: Removed) -> Reaped:
        """The public view of a reaped row."""
        return cls(
            kind=removed.kind,
            id=removed.id,
            key=removed.key,
            pid=removed.pid,
            host=removed.hostname,
            holder=removed.holder,
            reason=removed.reason,
        )


@dataclass(frozen=True, slots=True)
class CandidateReport:
    """One fallback candidate as ``explain`` sees it right now."""

    key: ModelKey
    via: Via
    eligible: bool  # its profile allows it (tier, tool use)
    has_room: bool  # it would be granted now, fairness included
    reason: str

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> CandidateReport:
        """The public view of one decision."""
        candidate = verdict.candidate
        return cls(
            key=candidate.key,
            via=candidate.via,
            eligible=candidate.eligible,
            has_room=verdict.granted,
            reason=verdict.reason,
        )


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``acquire_with_fallback`` would do right now, and why."""

    primary: ModelKey
    candidates: tuple[CandidateReport, ...]
    global_reason: str

    @property
    def choice(self) -> CandidateReport | None:
        """The candidate that would be granted, None when the request would queue."""
        return next((c for c in self.candidates if c.has_room), None)
