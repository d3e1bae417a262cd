"""What the limiter learned from a provider's refusals: cooldowns and adaptive limits.

A pure module, like ``_fairness``: the rules as functions of one ``models`` row and the time,
which the claim, the release that grants, the watcher and ``explain`` all apply alike.

- A **cooldown**: after a reported 429 (or 529, or quota refusal) the model takes no new lease
  until ``until``. Its limit counts as 0 meanwhile, so its waiters keep their places but are
  granted nothing, and do not hold back the global cap for others. A later report extends a
  cooldown, never shortens it.
- An **adaptive limit** (``[limiter] adaptive``): a report lowers the model's effective limit to
  one less than its holders at that moment (at least 1); every ``recover_secs`` without another
  report raises it by one, up to the configured limit. The raise is computed from the time of
  the last report, not written on a timer: every reader at time ``t`` computes the same limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._fallback import ModelRow
    from ._keys import ModelKey

Kind = Literal["rate_limited", "overloaded", "quota", "exit_code"]
KINDS: Final[tuple[Kind, ...]] = ("rate_limited", "overloaded", "quota", "exit_code")


@dataclass(frozen=True, slots=True)
class Health:
    """A model's learned state, as stored in its ``models`` row (all None: nothing learned)."""

    effective: int | None = None  # the limit set by the last lowering (None: the configured)
    limited_ts: float | None = None  # when the last refusal was reported
    recover_secs: float | None = None  # raise the effective limit by one per this many seconds
    cooldown_until: float | None = None
    cooldown_kind: str | None = None
    cooldown_reason: str | None = None


NOTHING_LEARNED: Final = Health()


def effective_limit(limit: int, health: Health, now: float) -> int:
    """The limit in force at ``now``: the configured one, or the adaptive one recovering."""
    lowered = health.effective
    if lowered is None:
        return limit
    since, step = health.limited_ts, health.recover_secs
    raised = 0
    if since is not None and step is not None and step > 0 and now > since:
        raised = math.floor((now - since) / step)
    return max(0, min(limit, lowered + raised))


def cooling(health: Health, now: float) -> bool:
    """Whether the model is cooling down at ``now``."""
    return health.cooldown_until is not None and now < health.cooldown_until


def describe_cooldown(health: Health, now: float) -> str:
    """``cooling down (rate limited: HTTP 429; 12s left)``, for verdicts and status."""
    left = (health.cooldown_until or now) - now
    kind = (health.cooldown_kind or "rate_limited").replace("_", " ")
    why = f"{kind}: {health.cooldown_reason}" if health.cooldown_reason else kind
    return f"cooling down ({why}; {_seconds(left)} left)"


def _seconds(secs: float) -> str:
    if secs >= 120:
        return f"{secs / 60:.0f}m"
    return f"{math.ceil(secs * 10) / 10:g}s" if secs < 10 else f"{math.ceil(secs):.0f}s"


@dataclass(frozen=True, slots=True)
class Limits:
    """Every model's limit for the fairness rule at one instant, and why some are reduced."""

    limits: dict[ModelKey, int]  # 0 while cooling down
    cooling: dict[ModelKey, str]  # the verdict of a model cooling down
    lowered: dict[ModelKey, int]  # configured limit of a model whose adaptive limit is lower


def limits_at(rows: Mapping[ModelKey, ModelRow], now: float) -> Limits:
    """The limits in force at ``now``, from the ``models`` rows."""
    limits: dict[ModelKey, int] = {}
    cooling_now: dict[ModelKey, str] = {}
    lowered: dict[ModelKey, int] = {}
    for key, row in rows.items():
        health = row.health
        if health is NOTHING_LEARNED:
            limits[key] = row.limit
            continue
        limit = effective_limit(row.limit, health, now)
        if limit < row.limit:
            lowered[key] = row.limit
        if cooling(health, now):
            cooling_now[key] = describe_cooldown(health, now)
            limit = 0
        limits[key] = limit
    return Limits(limits, cooling_now, lowered)


def next_change(rows: Mapping[ModelKey, ModelRow], keys: Iterable[ModelKey], now: float) -> float:
    """The earliest time after ``now`` at which a limit of ``keys`` rises (inf: none will).

    A cooldown's end, or an adaptive limit's next step: the moments a watcher must look again,
    since nothing is written then that would wake it.
    """
    soonest = math.inf
    for key in keys:
        row = rows.get(key)
        if row is None or row.health is NOTHING_LEARNED:
            continue
        health = row.health
        if cooling(health, now):
            soonest = min(soonest, health.cooldown_until or math.inf)
        since, step = health.limited_ts, health.recover_secs
        if (
            health.effective is not None
            and since is not None
            and step is not None
            and step > 0
            and effective_limit(row.limit, health, now) < row.limit
        ):
            steps = math.floor(max(0.0, now - since) / step) + 1
            soonest = min(soonest, since + steps * step)
    return soonest


def after_report(
    row: ModelRow,
    *,
    now: float,
    holders: int,
    secs: float,
    kind: str,
    reason: str,
    adaptive: bool,
    recover_secs: float,
) -> Health:
    """A model's state after a refusal reported at ``now`` with ``holders`` leases on it.

    The cooldown ends ``secs`` from now, or later if one already did. With ``adaptive``, the
    effective limit drops to ``holders - 1`` (at least 1; never raised by a report); without,
    an adaptive limit another process lowered keeps what it recovered so far, and its recovery
    starts again from now (a refusal means no step up).
    """
    health = row.health
    until = now + secs
    if health.cooldown_until is not None and health.cooldown_until > until:
        until = health.cooldown_until
        kind = health.cooldown_kind or kind
        reason = health.cooldown_reason or reason
    current = effective_limit(row.limit, health, now)
    effective: int | None = current if health.effective is not None else None
    step = health.recover_secs
    if adaptive:
        effective = min(current, max(1, holders - 1))
        step = recover_secs
    if effective is not None and effective >= row.limit:
        effective = None
    return Health(
        effective=effective,
        limited_ts=now,
        recover_secs=step if effective is not None else None,
        cooldown_until=until,
        cooldown_kind=kind,
        cooldown_reason=reason,
    )
