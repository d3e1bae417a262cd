"""Cost tiers and the built-in model profile table.

The table is data: ``(glob pattern, tier, supports tool use)`` rows matched case-insensitively
against the model name (the part after the last ``/``, so ``anthropic/claude-opus-4`` on a router
matches like ``claude-opus-4``). The most specific matching pattern wins, specificity being the
number of literal (non-wildcard) characters; among equally specific patterns the earlier row wins.
A name no pattern matches is STANDARD with tool use, as in collet.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Final


class CostTier(enum.Enum):
    """How expensive a model is to call; fallback may go to the same tier or exactly one lower."""

    PREMIUM = "premium"
    STANDARD = "standard"
    CHEAP = "cheap"

    def one_lower(self) -> CostTier | None:
        """The next cheaper tier (PREMIUM -> STANDARD -> CHEAP), None below CHEAP."""
        return _ONE_LOWER[self]

    def accepts_fallback_to(self, other: CostTier) -> bool:
        """Whether a request of this tier may fall back to a model of tier ``other``."""
        return other is self or other is self.one_lower()


_ONE_LOWER: Final[dict[CostTier, CostTier | None]] = {
    CostTier.PREMIUM: CostTier.STANDARD,
    CostTier.STANDARD: CostTier.CHEAP,
    CostTier.CHEAP: None,
}

_DEFAULT_CONCURRENCY: Final[dict[CostTier, int]] = {
    CostTier.PREMIUM: 3,
    CostTier.STANDARD: 5,
    CostTier.CHEAP: 8,
}


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What the fallback engine needs to know of a model: its cost tier and tool support."""

    cost_tier: CostTier
    supports_tool_use: bool


P: Final = CostTier.PREMIUM
S: Final = CostTier.STANDARD
C: Final = CostTier.CHEAP

# (pattern, tier, tools). Family variants (mini, nano, flash, lite, haiku, air, small) get their
# own, longer patterns so that they beat the family's base pattern; the short generic variant
# patterns at the end catch families this table does not know.
BUILTIN_PROFILES: Final[tuple[tuple[str, CostTier, bool], ...]] = (
    # Anthropic
    ("claude-opus*", P, True),
    ("claude-*-opus*", P, True),
    ("claude-sonnet*", S, True),
    ("claude-*-sonnet*", S, True),
    ("claude-haiku*", C, True),
    ("claude-*-haiku*", C, True),
    ("claude-instant*", C, False),
    # OpenAI
    ("gpt-5*", P, True),
    ("gpt-5*-mini*", C, True),
    ("gpt-5*-nano*", C, True),
    ("gpt-5*-codex-mini*", C, True),
    ("gpt-4.5*", P, True),
    ("gpt-4.1*", S, True),
    ("gpt-4.1-mini*", C, True),
    ("gpt-4.1-nano*", C, True),
    ("gpt-4o*", S, True),
    ("gpt-4o-mini*", C, True),
    ("gpt-4-turbo*", S, True),
    ("gpt-3.5*", C, True),
    ("gpt-oss-120b*", S, True),
    ("gpt-oss-20b*", C, True),
    ("o1*", P, True),
    ("o1-mini*", C, False),
    ("o3*", P, True),
    ("o3-mini*", C, True),
    ("o3-pro*", P, True),
    ("o4-mini*", C, True),
    ("codex-mini*", C, True),
    # Google
    ("gemini-*-pro*", P, True),
    ("gemini-*-flash*", C, True),
    ("gemini-*-flash-lite*", C, True),
    ("gemini-*-ultra*", P, True),
    ("gemma*", C, False),
    # Zhipu GLM (z.ai)
    ("glm-5*", P, True),
    ("glm-4.7*", S, True),
    ("glm-4.6*", S, True),
    ("glm-4.5*", S, True),
    ("glm-4.5-air*", C, True),
    ("glm-*-flash*", C, True),
    ("glm-*-flashx*", C, True),
    ("glm-4-plus*", S, True),
    ("glm-z1*", S, False),
    # DeepSeek
    ("deepseek-v4*", P, True),
    ("deepseek-v3*", S, True),
    ("deepseek-chat*", S, True),
    ("deepseek-reasoner*", P, True),
    ("deepseek-r1*", P, False),
    ("deepseek-coder*", S, True),
    # Qwen (Alibaba)
    ("qwen3-max*", P, True),
    ("qwen-max*", P, True),
    ("qwen3-coder*", S, True),
    ("qwen3-coder-flash*", C, True),
    ("qwen-plus*", S, True),
    ("qwen3-*", S, True),
    ("qwen2.5-*", S, True),
    ("qwen-turbo*", C, True),
    ("qwen-flash*", C, True),
    ("qwq*", S, False),
    # Mistral
    ("mistral-large*", P, True),
    ("mistral-medium*", S, True),
    ("mistral-small*", C, True),
    ("magistral-medium*", S, True),
    ("magistral-small*", C, True),
    ("codestral*", S, True),
    ("devstral*", S, True),
    ("devstral-small*", C, True),
    ("devstral-medium*", S, True),
    ("ministral*", C, True),
    ("open-mistral-nemo*", C, True),
    ("pixtral-large*", P, True),
    ("pixtral*", S, True),
    # Generic cheap variants of families not listed above.
    ("*-mini", C, True),
    ("*-mini-*", C, True),
    ("*-nano*", C, True),
    ("*-flash*", C, True),
    ("*-lite*", C, True),
    ("*haiku*", C, True),
)

_DEFAULT_PROFILE: Final = ModelProfile(cost_tier=CostTier.STANDARD, supports_tool_use=True)


def _specificity(pattern: str) -> int:
    return sum(1 for char in pattern if char not in "*?[]")


def _compile() -> tuple[tuple[str, re.Pattern[str], ModelProfile], ...]:
    order = sorted(
        range(len(BUILTIN_PROFILES)),
        key=lambda index: (-_specificity(BUILTIN_PROFILES[index][0]), index),
    )
    return tuple(
        (pattern, re.compile(fnmatch.translate(pattern)), ModelProfile(tier, tools))
        for pattern, tier, tools in (BUILTIN_PROFILES[index] for index in order)
    )


_COMPILED: Final = _compile()


@functools.lru_cache(maxsize=1024)
def _match(model: str) -> tuple[str | None, ModelProfile]:
    name = model.strip().rsplit("/", 1)[-1].lower()
    for pattern, regex, profile in _COMPILED:
        if regex.match(name):
            return pattern, profile
    return None, _DEFAULT_PROFILE


def profile_for(model: str) -> ModelProfile:
    """The built-in profile of a model name: the most specific matching pattern, else STANDARD."""
    return _match(model)[1]


def matching_pattern(model: str) -> str | None:
    """The built-in pattern that decides ``model``'s profile (for ``explain``); None for default."""
    return _match(model)[0]


def tier_concurrency(tier: CostTier) -> int:
    """The default concurrency limit of a cost tier: PREMIUM 3, STANDARD 5, CHEAP 8."""
    return _DEFAULT_CONCURRENCY[tier]


def default_concurrency(model: str) -> int:
    """The default concurrency limit of a model name, from its built-in cost tier."""
    return tier_concurrency(profile_for(model).cost_tier)
