"""The candidate order of acquire_with_fallback, as a pure function (rule 4)."""

from __future__ import annotations

from collet_limiter import CostTier, ModelKey
from collet_limiter._fallback import ModelRow, plan

P, S, C = CostTier.PREMIUM, CostTier.STANDARD, CostTier.CHEAP


def row(
    key: str, tier: CostTier, *, tools: bool = True, cli: bool = False, pos: int | None = None
) -> ModelRow:
    parsed = ModelKey.parse(key)
    assert parsed is not None
    return ModelRow(parsed, 1, tier, tools, cli, pos)


def rows(*items: ModelRow) -> dict[ModelKey, ModelRow]:
    return {item.key: item for item in items}


def k(text: str) -> ModelKey:
    key = ModelKey.parse(text)
    assert key is not None
    return key


def order(
    primary: str, chain: list[str], table: dict[ModelKey, ModelRow]
) -> list[tuple[str, str, bool]]:
    return [(str(c.key), c.via, c.eligible) for c in plan(k(primary), [k(x) for x in chain], table)]


TABLE = rows(
    row("zai/glm-5", P, pos=0),
    row("zai/glm-4.7", S, pos=1),
    row("zai/glm-4.7-flash", C, pos=2),
    row("oai/gpt-5", P, pos=3),
    row("oai/gpt-4o", S, tools=False, pos=4),
    row("claude/sonnet", S, cli=True, pos=5),
    row("claude/opus", P, cli=True, pos=6),
    row("codex/codex", S, tools=False, cli=True, pos=7),
    row("x/chain-a", C),
)


def test_primary_then_chain_then_capability_then_cli() -> None:
    assert order("zai/glm-5", ["x/chain-a"], TABLE) == [
        ("zai/glm-5", "primary", True),
        ("x/chain-a", "chain", True),
        ("zai/glm-4.7", "capability", True),  # one tier down
        ("zai/glm-4.7-flash", "capability", False),  # two tiers down
        ("oai/gpt-5", "capability", True),  # same tier
        ("oai/gpt-4o", "capability", False),  # no tool use
        ("claude/sonnet", "cli", True),  # first model of the CLI provider only
        ("codex/codex", "cli", False),  # tool use checked, tier not
    ]


def test_the_chain_skips_the_primary_and_repeats() -> None:
    assert [c[0] for c in order("zai/glm-5", ["zai/glm-5", "x/chain-a", "x/chain-a"], TABLE)][
        :2
    ] == [
        "zai/glm-5",
        "x/chain-a",
    ]


def test_chain_entries_are_not_tried_again_as_capability_matches() -> None:
    result = order("zai/glm-5", ["oai/gpt-5"], TABLE)
    assert [c for c in result if c[0] == "oai/gpt-5"] == [("oai/gpt-5", "chain", True)]


def test_a_primary_without_tool_use_accepts_candidates_without_it() -> None:
    table = {**TABLE, **rows(row("y/plain", S, tools=False))}
    result = order("y/plain", [], table)
    assert ("oai/gpt-4o", "capability", True) in result
    assert ("codex/codex", "cli", True) in result
    assert ("zai/glm-5", "capability", False) in result  # a higher tier is never a fallback


def test_a_cheap_primary_only_matches_cheap_models() -> None:
    eligible = [c for c in order("zai/glm-4.7-flash", [], TABLE) if c[1] == "capability" and c[2]]
    assert eligible == []


def test_the_primary_is_skipped_among_capability_and_cli_candidates() -> None:
    result = order("claude/sonnet", [], TABLE)
    assert [c[0] for c in result].count("claude/sonnet") == 1


def test_config_order_is_position_order() -> None:
    table = rows(row("a/m1", S, pos=2), row("b/m2", S, pos=0), row("c/m3", S, pos=1), row("p/q", S))
    assert [c[0] for c in order("p/q", [], table)] == ["p/q", "b/m2", "c/m3", "a/m1"]
