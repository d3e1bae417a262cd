"""Cost tiers, default concurrency and the built-in profile table."""

from __future__ import annotations

import pytest

from collet_limiter import CostTier, ModelProfile, default_concurrency, profile_for
from collet_limiter._profiles import BUILTIN_PROFILES, matching_pattern

P, S, C = CostTier.PREMIUM, CostTier.STANDARD, CostTier.CHEAP


def test_default_concurrency_is_3_5_8_by_tier() -> None:
    assert default_concurrency("glm-5") == 3
    assert default_concurrency("glm-4.7") == 5
    assert default_concurrency("glm-4.7-flash") == 8


def test_glm_5_is_premium_with_tool_use() -> None:
    assert profile_for("glm-5") == ModelProfile(cost_tier=CostTier.PREMIUM, supports_tool_use=True)


@pytest.mark.parametrize(
    ("model", "tier"),
    [
        ("glm-5", P),
        ("glm-4.7", S),
        ("glm-4.7-flash", C),
        ("glm-4.6", S),
        ("glm-4.5-air", C),
        ("claude-opus-4-5", P),
        ("claude-3-opus-20240229", P),
        ("claude-sonnet-4-5", S),
        ("claude-3-5-sonnet-latest", S),
        ("claude-haiku-4-5", C),
        ("claude-3-5-haiku", C),
        ("gpt-5", P),
        ("gpt-5.1-codex", P),
        ("gpt-5-mini", C),
        ("gpt-5-nano", C),
        ("gpt-4.1", S),
        ("gpt-4.1-mini", C),
        ("gpt-4o", S),
        ("gpt-4o-mini", C),
        ("o3", P),
        ("o3-mini", C),
        ("o4-mini", C),
        ("gemini-2.5-pro", P),
        ("gemini-3-pro-preview", P),
        ("gemini-2.5-flash", C),
        ("gemini-2.5-flash-lite", C),
        ("gemini-2.0-flash", C),
        ("deepseek-chat", S),
        ("deepseek-v3.2", S),
        ("deepseek-reasoner", P),
        ("qwen3-max", P),
        ("qwen3-coder-plus", S),
        ("qwen-turbo", C),
        ("qwen3-coder-flash", C),
        ("mistral-large-latest", P),
        ("mistral-medium-2508", S),
        ("mistral-small-latest", C),
        ("codestral-latest", S),
        ("devstral-small-2507", C),
        ("ministral-8b-latest", C),
        ("some-new-model-mini", C),
        ("acme-nano", C),
        ("llama-3.3-70b", S),
    ],
)
def test_builtin_table_covers_the_current_families(model: str, tier: CostTier) -> None:
    assert profile_for(model).cost_tier is tier


def test_matching_is_case_insensitive_and_ignores_a_router_prefix() -> None:
    assert profile_for("GLM-5") == profile_for("glm-5")
    assert profile_for("anthropic/claude-haiku-4-5").cost_tier is C


def test_gemini_is_not_mistaken_for_a_mini_variant() -> None:
    assert profile_for("gemini-2.5-pro").cost_tier is P


def test_the_most_specific_pattern_wins() -> None:
    assert matching_pattern("glm-4.7-flash") == "glm-*-flash*"
    assert matching_pattern("glm-4.7") == "glm-4.7*"
    assert matching_pattern("gpt-4o-mini") == "gpt-4o-mini*"


def test_unknown_models_are_standard_with_tool_use() -> None:
    assert profile_for("totally-unknown") == ModelProfile(CostTier.STANDARD, True)
    assert matching_pattern("totally-unknown") is None


def test_the_table_is_data_with_unique_patterns() -> None:
    patterns = [row[0] for row in BUILTIN_PROFILES]
    assert len(patterns) == len(set(patterns))
    assert all(pattern == pattern.lower() for pattern in patterns)


def test_tiers_fall_back_to_the_same_or_exactly_one_lower() -> None:
    assert P.one_lower() is S and S.one_lower() is C and C.one_lower() is None
    assert P.accepts_fallback_to(P) and P.accepts_fallback_to(S) and not P.accepts_fallback_to(C)
    assert not S.accepts_fallback_to(P) and S.accepts_fallback_to(C)
