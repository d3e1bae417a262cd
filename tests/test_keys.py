"""ModelKey and chain parsing, including the original crate's tests."""

from __future__ import annotations

import pickle

import pytest

from collet_limiter import InvalidKeyError, ModelKey, parse_providers_chain
from collet_limiter._keys import coerce_chain, coerce_key


def test_parse_splits_provider_and_model() -> None:
    key = ModelKey.parse("zai-coding/glm-5")
    assert key == ModelKey(provider="zai-coding", model="glm-5")
    assert str(key) == key.as_str() == "zai-coding/glm-5"


def test_parse_splits_at_the_first_slash_only() -> None:
    assert ModelKey.parse("openrouter/anthropic/claude") == ModelKey(
        "openrouter", "anthropic/claude"
    )


def test_parse_trims_both_halves() -> None:
    assert ModelKey.parse("  zai / glm-5 ") == ModelKey("zai", "glm-5")


@pytest.mark.parametrize("text", ["", "glm-5", "/glm-5", "zai/", " / ", "/", "   "])
def test_invalid_parses_return_none(text: str) -> None:
    assert ModelKey.parse(text) is None


def test_chain_of_three() -> None:
    chain = parse_providers_chain("zai/glm-5, openai/gpt-5,anthropic/claude-sonnet-4")
    assert chain == [
        ModelKey("zai", "glm-5"),
        ModelKey("openai", "gpt-5"),
        ModelKey("anthropic", "claude-sonnet-4"),
    ]


def test_chain_skips_invalid_items_silently() -> None:
    assert parse_providers_chain("a/b, nonsense, , /x, c/d") == [
        ModelKey("a", "b"),
        ModelKey("c", "d"),
    ]


def test_keys_are_frozen_hashable_and_ordered() -> None:
    a, b = ModelKey("a", "z"), ModelKey("b", "a")
    assert sorted([b, a]) == [a, b]
    assert len({a, ModelKey("a", "z")}) == 1
    with pytest.raises(AttributeError):
        a.provider = "x"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a


def test_coerce_key_accepts_keys_and_strings_and_names_a_bad_one() -> None:
    assert coerce_key("a/b") == coerce_key(ModelKey("a", "b"))
    with pytest.raises(InvalidKeyError, match="'glm-5'.*provider/model"):
        coerce_key("glm-5")


def test_an_explicit_chain_list_rejects_bad_entries_but_a_string_skips_them() -> None:
    assert coerce_chain("a/b, junk") == [ModelKey("a", "b")]
    with pytest.raises(InvalidKeyError, match="fallback chain entry 'junk'"):
        coerce_chain(["a/b", "junk"])
