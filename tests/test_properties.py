"""Parsing never fails in a way the caller cannot handle: property tests on arbitrary input.

Every parser either returns what its docstring promises or raises the one error it documents
(``ConfigError`` and its ``InvalidKeyError``, naming the file), never anything else. The profile
table gives exactly one profile for any model name: the documented rule (most specific pattern,
the earlier row on a tie), checked against an independent implementation with ``fnmatch``.
"""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hypothesis import example, given
from hypothesis import strategies as st

from collet_limiter import (
    Config,
    ConfigError,
    CostTier,
    InvalidKeyError,
    ModelKey,
    ModelProfile,
    default_concurrency,
    load_agent_chain,
    load_config,
    parse_providers_chain,
    profile_for,
)
from collet_limiter._config import apply_env
from collet_limiter._keys import coerce_chain, coerce_key
from collet_limiter._profiles import BUILTIN_PROFILES

from . import reference
from .strategies import (
    MODEL_NAMES,
    chain_texts,
    config_documents,
    key_texts,
    to_toml,
    toml_documents,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


# --- keys and chains -------------------------------------------------------------------------


@given(key_texts)
@example("openrouter/anthropic/claude")
@example(" a / b ")
@example("/b")
@example("a/")
def test_model_key_parse_returns_a_trimmed_key_or_none(text: str) -> None:
    key = ModelKey.parse(text)
    provider, slash, model = text.partition("/")
    if not slash or not provider.strip() or not model.strip():
        assert key is None
        return
    assert key == ModelKey(provider.strip(), model.strip())
    assert "/" not in key.provider
    assert ModelKey.parse(str(key)) == key


@given(chain_texts)
def test_a_chain_keeps_exactly_the_items_that_parse_in_order(text: str) -> None:
    chain = parse_providers_chain(text)
    assert chain == [k for item in text.split(",") if (k := ModelKey.parse(item)) is not None]
    assert coerce_chain(text) == chain


def attempt(func: Callable[..., T], *args: Any) -> tuple[T | None, ConfigError | None]:
    """Call ``func``: (its result, None), or (None, the ConfigError it raised); nothing else."""
    try:
        return func(*args), None
    except ConfigError as exc:
        return None, exc


@given(st.one_of(key_texts, st.integers(), st.none(), st.binary(max_size=4), st.floats()))
def test_coerce_key_returns_a_key_or_raises_invalid_key_error(value: object) -> None:
    key, error = attempt(coerce_key, value)
    if error is not None:
        assert isinstance(error, InvalidKeyError) and isinstance(error, ValueError)
        assert "expected 'provider/model'" in str(error)
    else:
        assert isinstance(value, str) and key == ModelKey.parse(value)


@given(st.lists(key_texts, max_size=4))
def test_an_explicit_chain_list_is_all_valid_or_an_invalid_key_error(items: list[str]) -> None:
    chain, error = attempt(coerce_chain, items)
    if error is not None:
        assert isinstance(error, InvalidKeyError)
        assert any(ModelKey.parse(item) is None for item in items)
        assert "fallback chain entry" in str(error)
    else:
        assert chain == [ModelKey.parse(item) for item in items]


# --- config files ----------------------------------------------------------------------------


def _load(text: str | bytes) -> tuple[Config | None, ConfigError | None, str]:
    """Write ``text`` to a fresh file and load it: (config, error, the file's path)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return (*attempt(lambda: load_config(path, env={})), str(path))


def _check_error_names_the_file(error: ConfigError, path: str) -> None:
    assert str(error).startswith(f"{path}: "), str(error)
    assert error.path == path  # type: ignore[attr-defined]
    assert "\n" not in str(error).split(": ", 1)[0]


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(b"\xff\xfe[collaboration]")
@example("[collaboration\nmax_agents = 3\n")
@example("[limiter]\nleese_ttl_secs = 5\n")
def test_any_bytes_load_as_a_config_or_a_config_error_naming_the_file(data: bytes | str) -> None:
    config, error, path = _load(data)
    if error is not None:
        _check_error_names_the_file(error, path)
    else:
        assert isinstance(config, Config) and config.source == path


@given(toml_documents())
@example({"collaboration": {"max_agents": 0}})
@example({"models": [{"name": "glm-5", "concurrency_limit": 0}]})
@example({"models": [{"name": "glm-5", "concurrency_limit": -1}]})
@example({"models": [{"name": "glm-5", "concurrency_limit": "2"}]})
@example({"limiter": {"leese_ttl_secs": 5}})
@example({"providers": [{"name": "a/b"}]})
@example({"providers": [{"name": "zai"}, {"name": "zai"}]})
@example({"models": [{"name": "/glm-5"}]})
def test_config_shaped_toml_loads_with_sane_values_or_names_the_file_and_key(
    doc: dict[str, object],
) -> None:
    config, error, path = _load(to_toml(doc))
    if error is not None:
        _check_error_names_the_file(error, path)
        return
    assert config is not None
    assert config.max_agents >= 1
    for entry in config.models:
        assert entry.concurrency_limit is None or entry.concurrency_limit >= 1
    for row in config.model_rows():
        assert row.limit >= 1
        assert "/" not in row.key.provider and row.key.provider and row.key.model
    assert config.limiter.lease_ttl_secs > 0


@given(config_documents())
def test_valid_documents_load_and_agree_with_the_reference_rows(doc: dict[str, object]) -> None:
    """The reference model's reading of limits and profiles is the config's own."""
    config, error, _ = _load(to_toml(doc))
    assert error is None, error
    assert config is not None
    rows = [
        (r.key, r.limit, r.cost_tier, r.supports_tool_use, r.is_cli, r.position)
        for r in config.model_rows()
    ]
    assert rows == [
        (r.key, r.limit, r.tier, r.tools, r.is_cli, r.position)
        for r in reference.configured_rows(config)
    ]
    for model in MODEL_NAMES:
        key = ModelKey("x", model)
        ref = reference.demand_row(config, key)
        assert (config.limit(key), config.profile(key).cost_tier) == (ref.limit, ref.tier)


@given(st.text(max_size=12))
@example("0")
@example("-3")
@example(" 7 ")
@example("1e3")
def test_the_max_agents_variable_is_a_whole_number_or_a_config_error_naming_it(raw: str) -> None:
    config, error = attempt(apply_env, Config(), {"COLLET_COLLAB_MAX_AGENTS": raw})
    if error is not None:
        assert str(error).startswith(f"COLLET_COLLAB_MAX_AGENTS={raw!r}: ")
    else:
        assert config is not None
        assert config.max_agents == (int(raw.strip()) if raw.strip() else 3)
        assert config.max_agents >= 1


# --- agent files -----------------------------------------------------------------------------


_FRONTMATTER = st.builds(
    lambda items, style: (
        "---\nname: coder\n"
        + {
            "inline": "providers: " + ", ".join(items) + "\n",
            "flow": "providers: [" + ", ".join(items) + "]\n",
            "block": "providers:\n" + "".join(f"  - {item}\n" for item in items),
        }[style]
        + "---\nbody\n"
    ),
    st.lists(key_texts.filter(lambda t: "\n" not in t and "\r" not in t), max_size=4),
    st.sampled_from(["inline", "flow", "block"]),
)


@given(st.one_of(st.text(max_size=120), _FRONTMATTER))
@example("---\nproviders: zai/glm-5, not-a-key\n---\n")
@example("---\nproviders:\n  - 'zai/glm-5'\n  - \"a/b\" # comment\n---\n")
def test_an_agent_file_gives_a_chain_or_an_error_naming_the_file(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "agent.md"
        path.write_text(text, encoding="utf-8")
        chain, error = attempt(load_agent_chain, path)
        if error is not None:
            assert str(error).startswith(f"{path}: ")
        else:
            assert chain is not None
            assert all(isinstance(key, ModelKey) for key in chain)
            assert all(key.provider.strip() and key.model.strip() for key in chain)


# --- the profile table -----------------------------------------------------------------------


def _expected_profile(model: str) -> ModelProfile:
    """The documented rule, independently: most literal characters wins, then the earlier row."""
    name = model.strip().rsplit("/", 1)[-1].lower()
    best: tuple[int, int] | None = None
    chosen = ModelProfile(CostTier.STANDARD, supports_tool_use=True)
    for index, (pattern, tier, tools) in enumerate(BUILTIN_PROFILES):
        if fnmatch.fnmatchcase(name, pattern):
            literal = sum(char not in "*?[]" for char in pattern)
            if best is None or (literal, -index) > best:
                best, chosen = (literal, -index), ModelProfile(tier, tools)
    return chosen


@st.composite
def _pattern_names(draw: st.DrawFn) -> str:
    """A name built from one of the table's patterns, so that it matches one or several rows."""
    pattern = draw(st.sampled_from([row[0] for row in BUILTIN_PROFILES]))
    fills = st.sampled_from(["", "4", "-mini", "-flash", "pro", "-2.5", "x", "-haiku"])
    name = "".join(part + draw(fills) for part in pattern.split("*")[:-1])
    name += pattern.split("*")[-1]
    if draw(st.booleans()):
        name = name.upper()
    return draw(st.sampled_from(["", "openrouter/", "a/b/", " "])) + name


@given(st.one_of(_pattern_names(), st.text(max_size=20)))
@example("claude-opus-4")
@example("GLM-4.7-Flash")
@example("openrouter/anthropic/claude-haiku-4-5")
@example("")
def test_every_model_name_gets_exactly_the_profile_the_documented_rule_picks(model: str) -> None:
    profile = profile_for(model)
    assert profile == _expected_profile(model)
    assert profile == profile_for(model.upper()) == profile_for(f"some/router/{model.strip()}")
    assert (
        default_concurrency(model)
        == {"premium": 3, "standard": 5, "cheap": 8}[profile.cost_tier.value]
    )


def test_a_tie_between_equally_specific_patterns_goes_to_the_earlier_row() -> None:
    """``glm-5-mini`` matches ``glm-5*`` and ``*-mini`` (five literal characters each)."""
    assert fnmatch.fnmatchcase("glm-5-mini", "glm-5*")
    assert fnmatch.fnmatchcase("glm-5-mini", "*-mini")
    assert profile_for("glm-5-mini") == ModelProfile(CostTier.PREMIUM, supports_tool_use=True)
    assert profile_for("x-mini") == ModelProfile(CostTier.CHEAP, supports_tool_use=True)
