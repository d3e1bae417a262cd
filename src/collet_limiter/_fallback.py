"""The fallback order: a pure function from (primary, chain, model rows) to candidates.

Ported from collet's ``ModelRateLimiter::acquire_with_fallback``. The order is:

1. the primary;
2. each entry of the agent's fallback chain (skipping the primary);
3. a capability match over the non-CLI providers' models in config order: the same cost tier or
   exactly one tier down, and tool use if the primary has it;
4. each CLI provider in config order (its first model), checked for tool use only.

Whether a candidate has room is not decided here (see ``_fairness``): this module knows nothing
of leases, queues, SQL or time, which is what lets ``explain`` and the tests call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._cooldown import NOTHING_LEARNED, Health

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._keys import ModelKey
    from ._profiles import CostTier

Via = Literal["primary", "chain", "capability", "cli", "queue"]


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One row of the ``models`` table: a key with its limit and profile.

    ``position`` is the key's place in the config's providers (None for a key added on demand,
    which is never a capability or CLI candidate). ``limit`` is the configured limit; ``health``
    what was learned from the provider's refusals (cooldown, adaptive limit; see ``_cooldown``).
    """

    key: ModelKey
    limit: int
    cost_tier: CostTier
    supports_tool_use: bool
    is_cli: bool
    position: int | None
    health: Health = NOTHING_LEARNED


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model the fallback engine considers, why, and whether its profile makes it eligible."""

    key: ModelKey
    via: Via
    eligible: bool
    reason: str


def _capability_reason(primary: ModelRow, row: ModelRow) -> tuple[bool, str]:
    want, have = primary.cost_tier, row.cost_tier
    if primary.supports_tool_use and not row.supports_tool_use:
        return False, f"no tool use, which {primary.key} needs"
    if have is want:
        return True, f"same cost tier ({have.value})"
    if have is want.one_lower():
        return True, f"one tier down ({want.value} -> {have.value})"
    return False, f"cost tier {have.value} is not {want.value} or one below"


def plan(
    primary: ModelKey, chain: Iterable[ModelKey], rows: Mapping[ModelKey, ModelRow]
) -> list[Candidate]:
    """Every candidate for ``primary`` in the order they are tried, eligible or not.

    ``rows`` must hold a row for the primary and each chain entry, and every config row.
    """
    primary_row = rows[primary]
    out = [Candidate(primary, "primary", eligible=True, reason="the requested model")]
    seen = {primary}
    for index, key in enumerate(chain, start=1):
        if key not in seen:
            seen.add(key)
            out.append(
                Candidate(key, "chain", eligible=True, reason=f"fallback chain entry {index}")
            )

    configured = sorted(
        (row for row in rows.values() if row.position is not None),
        key=lambda row: row.position or 0,
    )
    for row in configured:
        if not row.is_cli and row.key not in seen:
            seen.add(row.key)
            eligible, reason = _capability_reason(primary_row, row)
            out.append(Candidate(row.key, "capability", eligible=eligible, reason=reason))

    cli_providers: set[str] = set()
    for row in configured:
        if not row.is_cli or row.key.provider in cli_providers:
            continue
        cli_providers.add(row.key.provider)  # a CLI provider offers its first model only
        if row.key in seen:
            continue
        seen.add(row.key)
        if primary_row.supports_tool_use and not row.supports_tool_use:
            reason, eligible = f"no tool use, which {primary} needs", False
        else:
            reason, eligible = "CLI provider", True
        out.append(Candidate(row.key, "cli", eligible=eligible, reason=reason))
    return out
