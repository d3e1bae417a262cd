"""Shared hypothesis strategies: keys, chains, configs with tiers, tool flags and CLI providers,
and TOML documents (valid and not) with a small serializer.

The configs are built from a few model names whose built-in profiles differ (premium, standard,
cheap; with and without tool use), small limits (so that they fill up within a few steps) and
``[[models]]`` entries that override a tier or the tool flag, by model name or by
``provider/model``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import strategies as st

from collet_limiter import Config, ModelKey

# Built-in profiles (see _profiles.BUILTIN_PROFILES): glm-5 premium+tools, glm-4.7 standard+tools,
# glm-4.7-flash cheap+tools, gemma-3 cheap without tools, deepseek-r1 premium without tools,
# o1-mini cheap without tools, sonnet unknown (standard+tools).
MODEL_NAMES = ("glm-5", "glm-4.7", "glm-4.7-flash", "gemma-3", "deepseek-r1", "o1-mini", "sonnet")
PROVIDER_NAMES = ("zai", "oai", "local", "claude", "codex")
TIERS = ("premium", "standard", "cheap")

model_names = st.sampled_from(MODEL_NAMES)


@st.composite
def providers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1 to 4 ``[[providers]]`` tables with unique names; some are CLI providers."""
    names = draw(st.lists(st.sampled_from(PROVIDER_NAMES), min_size=1, max_size=4, unique=True))
    out = []
    for name in names:
        table: dict[str, Any] = {"name": name}
        is_cli = draw(st.booleans())
        models = draw(st.lists(model_names, max_size=3))
        if models or not is_cli or draw(st.booleans()):
            table["models"] = models
        if is_cli:
            table["cli"] = name
        out.append(table)
    return out


@st.composite
def model_entries(draw: st.DrawFn, provider_names: list[str]) -> list[dict[str, Any]]:
    """``[[models]]`` entries by model name or ``provider/model``, overriding limits and profiles."""
    names = st.one_of(
        model_names,
        st.builds(lambda p, m: f"{p}/{m}", st.sampled_from([*provider_names, "x"]), model_names),
    )
    entries = []
    for name in draw(st.lists(names, max_size=6)):
        entry: dict[str, Any] = {"name": name}
        if draw(st.integers(0, 5)):  # mostly a small limit, so that models fill up
            entry["concurrency_limit"] = draw(st.sampled_from([1, 1, 1, 2, 3]))
        if draw(st.integers(0, 3)) == 0:
            entry["cost_tier"] = draw(st.sampled_from(TIERS))
        if draw(st.integers(0, 3)) == 0:
            entry["supports_tools"] = draw(st.booleans())
        entries.append(entry)
    return entries


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config as the parsed TOML document it comes from."""
    provider_tables = draw(providers())
    doc: dict[str, Any] = {
        "collaboration": {"max_agents": draw(st.sampled_from([1, 2, 3, 4, 6, 8]))},
        "providers": provider_tables,
    }
    entries = draw(model_entries([p["name"] for p in provider_tables]))
    # Most models get a limit of 1 or 2 (the built-in defaults of 3 to 8 take long to fill).
    for name in MODEL_NAMES:
        if draw(st.integers(0, 4)):
            entries.append({"name": name, "concurrency_limit": draw(st.integers(1, 2))})
    if entries:
        doc["models"] = entries
    return doc


configs = config_documents().map(Config.model_validate)


def request_keys(config: Config) -> list[ModelKey]:
    """Keys worth requesting under ``config``: its providers' models and a few on-demand keys.

    The on-demand keys include a configured model name under another provider (its limit comes
    from the entry of that name) and, for a CLI provider, a model it does not list (a CLI row
    added on demand, which is never a CLI candidate).
    """
    keys: list[ModelKey] = []
    for provider in config.providers:
        for model in provider.models or (provider.name,):
            key = ModelKey(provider.name, model)
            if key not in keys:
                keys.append(key)
    keys += [ModelKey("x", "glm-5"), ModelKey("x", "mystery"), ModelKey("y", "gemma-3")]
    keys += [ModelKey(p.name, "extra") for p in config.providers if p.cli][:1]
    return keys


def chains(pool: list[ModelKey]) -> st.SearchStrategy[list[ModelKey]]:
    """A fallback chain from ``pool``: 0 to 3 keys, repeats and the primary allowed."""
    return st.lists(st.sampled_from(pool), max_size=3)


# --- text: keys and chains -------------------------------------------------------------------

# Slashes, commas and blanks are what the parsers split and trim on: make them frequent.
_KEY_ALPHABET = st.sampled_from([*"ab/ ,\t\n-._", "\u00e9", "\u3000", "\x00", "\ufeff"])
key_texts = st.one_of(
    st.text(),
    st.text(_KEY_ALPHABET, max_size=12),
    st.builds(lambda p, m: f"{p}/{m}", st.text(_KEY_ALPHABET, max_size=5), st.text(max_size=5)),
)
chain_texts = st.one_of(st.text(), st.lists(key_texts, max_size=5).map(",".join))


# --- TOML documents --------------------------------------------------------------------------

_NO_SURROGATES = st.characters(blacklist_categories=["Cs"])
toml_strings = st.text(_NO_SURROGATES, max_size=12)
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 10),
    st.floats(allow_nan=False),
    toml_strings,
    st.sampled_from(MODEL_NAMES),
    st.sampled_from(TIERS),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), inner)
    ),
    max_leaves=6,
)

# Keys of the sections the limiter reads, and a few unknown ones.
_SECTION_KEYS = {
    "collaboration": ["max_agents", "mode"],
    "limiter": [
        "db",
        "lease_ttl_secs",
        "poll_interval_ms",
        "max_poll_interval_ms",
        "busy_timeout_ms",
        "leese_ttl_secs",
    ],
}
_ENTRY_KEYS = {
    "models": ["name", "concurrency_limit", "cost_tier", "supports_tools", "context_window"],
    "providers": ["name", "models", "cli", "cli_args", "base_url", "api_key_env"],
}


def _section_value(key: str) -> st.SearchStrategy[Any]:
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "max_agents": st.integers(-2, 8),
        "concurrency_limit": st.integers(-2, 5),
        "lease_ttl_secs": st.one_of(st.integers(-1, 100), st.floats(-1, 100)),
        "busy_timeout_ms": st.integers(-5, 20_000),
        "name": st.one_of(st.sampled_from(MODEL_NAMES), key_texts),
        "models": st.lists(st.one_of(st.sampled_from(MODEL_NAMES), key_texts), max_size=3),
        "cost_tier": st.sampled_from([*TIERS, "luxury", ""]),
        "supports_tools": st.booleans(),
        "cli": st.sampled_from(["claude", ""]),
    }
    return st.one_of(plausible.get(key, toml_values), toml_values)


@st.composite
def toml_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A TOML document shaped like a config: right keys, often wrong types or values."""
    doc: dict[str, Any] = {}
    for section, keys in _SECTION_KEYS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))
            doc[section] = {key: draw(_section_value(key)) for key in chosen}
    for section, keys in _ENTRY_KEYS.items():
        if draw(st.booleans()):
            doc[section] = [
                {
                    key: draw(_section_value(key))
                    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4))
                }
                for _ in range(draw(st.integers(0, 3)))
            ]
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.sampled_from(["ui", "default", "models", "limiter"]))] = draw(toml_values)
    return doc


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_value(key)


def _toml_value(value: Any) -> str:  # noqa: PLR0911 - one return per TOML type
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string once astral characters are left as they are
        # (JSON would write surrogate pairs) and DEL is escaped (TOML requires it).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    """Serialize a document of the shapes above: scalars, tables, arrays of tables."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}"
        for k, v in doc.items()
        if not isinstance(v, dict) and not _is_table_array(v)
    ]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{_toml_key(key)}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif _is_table_array(value):
            for table in value:
                lines.append(f"[[{_toml_key(key)}]]")
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


# --- the faces machine (test_stateful_faces) ----------------------------------------------

# Which face each limiter of a run is: the first is sync and the second async, then more of
# either, so that sync and async waiters always share one queue.
face_kinds = st.lists(st.booleans(), max_size=2).map(lambda extra: [False, True, *extra])
# A blocked waiter's timeout: none, or one far longer than a run (it never fires there).
waiter_timeouts = st.sampled_from([None, 60.0])
# A timeout meant to expire: 0 is a single try; the others queue a ticket, then give up.
short_timeouts = st.sampled_from([0, 0.005, 0.03])


@st.composite
def tiered_config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A config whose first provider lists models of every tier, with and without tool use.

    Premium (glm-5 with tools, deepseek-r1 without), cheap (glm-4.7-flash with tools, gemma-3
    and o1-mini without) in any order, and a high global cap: a full primary then has
    capability candidates two tiers down or without tool use, so that the tier rule is tested.
    """
    doc = draw(config_documents())
    models = draw(st.permutations(["glm-5", "deepseek-r1", "glm-4.7-flash", "gemma-3", "o1-mini"]))
    others = [p for p in doc["providers"] if p["name"] != "zai"]
    doc["providers"] = [{"name": "zai", "models": models}, *others]
    doc["collaboration"] = {"max_agents": 8}
    return doc


tiered_configs = tiered_config_documents().map(Config.model_validate)
