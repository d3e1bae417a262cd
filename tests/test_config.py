"""collet's TOML format, [limiter], env overrides and the errors that name file, key and value."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest

from collet_limiter import Config, ConfigError, CostTier, Limiter, ModelKey, load_config
from collet_limiter._config import default_db_path

if TYPE_CHECKING:
    from pathlib import Path

COLLET_CONFIG = """
[default]
provider = "zai"
model = "glm-5"

[collaboration]
max_agents = 6
mode = "swarm"

[ui]
theme = "dark"

[[models]]
name = "glm-5"
concurrency_limit = 2
context_window = 200000
supports_reasoning = true

[[models]]
name = "zai/glm-4.7"
concurrency_limit = 4
cost_tier = "premium"
supports_tools = false

[[providers]]
name = "zai"
base_url = "https://api.z.ai/api/coding/paas/v4"
models = ["glm-5", "glm-4.7"]
api_key_env = "ZAI_API_KEY"

[[providers]]
name = "claude"
cli = "claude"
cli_args = ["-p"]
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_collet_config_file_loads_as_is(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, COLLET_CONFIG))
    assert config.max_agents == 6
    assert config.models[0].context_window == 200000  # collet's other fields are kept
    assert config.models[0].supports_reasoning is True
    assert config.providers[0].api_key_env == "ZAI_API_KEY"
    assert config.providers[1].is_cli and config.providers[1].cli_args == ("-p",)
    assert config.source == str(tmp_path / "config.toml")


def test_limits_match_the_model_name_first_then_provider_slash_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, COLLET_CONFIG))
    assert config.limit(ModelKey("zai", "glm-5")) == 2
    assert config.limit(ModelKey("other", "glm-5")) == 2  # by model name, whatever the provider
    assert config.limit(ModelKey("zai", "glm-4.7")) == 4
    assert config.limit(ModelKey("other", "glm-4.7")) == 5  # no entry: STANDARD default
    assert config.limit(ModelKey("x", "glm-4.7-flash")) == 8


def test_profile_overrides_come_from_models_entries(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, COLLET_CONFIG))
    profile = config.profile(ModelKey("zai", "glm-4.7"))
    assert profile.cost_tier is CostTier.PREMIUM and not profile.supports_tool_use
    assert config.profile(ModelKey("other", "glm-4.7")).cost_tier is CostTier.STANDARD


def test_a_tier_override_moves_the_default_limit() -> None:
    config = Config.model_validate({"models": [{"name": "llama-3", "cost_tier": "cheap"}]})
    assert config.limit(ModelKey("local", "llama-3")) == 8


def test_a_cli_provider_without_models_is_keyed_name_slash_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, COLLET_CONFIG))
    rows = config.model_rows()
    assert [str(r.key) for r in rows] == ["zai/glm-5", "zai/glm-4.7", "claude/claude"]
    assert [r.position for r in rows] == [0, 1, 2]
    assert rows[2].is_cli and not rows[0].is_cli


def test_no_config_at_all_uses_built_in_defaults() -> None:
    config = load_config(env={})
    assert config.max_agents == 3
    assert config.providers == () and config.source is None


def test_the_config_env_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[collaboration]\nmax_agents = 7\n")
    assert load_config(env={"COLLET_LIMITER_CONFIG": str(path)}).max_agents == 7


def test_an_explicit_path_beats_the_env_variable(tmp_path: Path) -> None:
    named = write(tmp_path, "[collaboration]\nmax_agents = 7\n", "a.toml")
    env_file = write(tmp_path, "[collaboration]\nmax_agents = 9\n", "b.toml")
    assert load_config(named, env={"COLLET_LIMITER_CONFIG": str(env_file)}).max_agents == 7


def test_env_max_agents_beats_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[collaboration]\nmax_agents = 7\n")
    assert load_config(path, env={"COLLET_COLLAB_MAX_AGENTS": "2"}).max_agents == 2


def test_env_db_beats_the_file_and_an_argument_beats_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, f'[limiter]\ndb = "{tmp_path / "file.db"}"\n')
    monkeypatch.setenv("COLLET_LIMITER_DB", str(tmp_path / "env.db"))
    config = load_config(path)
    assert config.limiter.db == str(tmp_path / "env.db")
    with Limiter(config=config) as limiter:
        assert limiter.db == str(tmp_path / "env.db")
    with Limiter(tmp_path / "arg.db", config=config) as limiter:
        assert limiter.db == str(tmp_path / "arg.db")


@pytest.mark.parametrize("raw", ["0", "-1", "many", "2.5"])
def test_a_bad_env_max_agents_is_a_config_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=f"COLLET_COLLAB_MAX_AGENTS='{raw}'"):
        load_config(env={"COLLET_COLLAB_MAX_AGENTS": raw})


def test_a_named_but_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(env={"COLLET_LIMITER_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[collaboration\nmax_agents = 1", r"config.toml: invalid TOML: .*line 1"),
        (
            "[collaboration]\nmax_agents = 0\n",
            r"collaboration.max_agents: .*greater than or equal to 1 \(got 0\)",
        ),
        ("[collaboration]\nmax_agents = 'three'\n", r"collaboration.max_agents: .*\(got 'three'\)"),
        (
            "[[models]]\nname = 'glm-5'\nconcurrency_limit = 0\n",
            r"models\[0\].concurrency_limit: .*\(got 0\)",
        ),
        ("[[models]]\nname = 'glm-5'\nconcurrency_limit = -3\n", r"models\[0\].concurrency_limit"),
        ("[[models]]\nname = 'x'\ncost_tier = 'gold'\n", r"models\[0\].cost_tier: .*'gold'"),
        ("[[models]]\nname = '/x'\n", r"models\[0\].name: .*neither a model name"),
        ("[[models]]\nconcurrency_limit = 2\n", r"models\[0\].name: Field required"),
        ("[[providers]]\nname = 'a/b'\n", r"providers\[0\].name: .*no '/'"),
        ("[[providers]]\nname = 'a'\n[[providers]]\nname = 'a'\n", r"providers: .*defined twice"),
        ("[limiter]\nlease_ttl = 5\n", r"limiter.lease_ttl: unknown key"),
        ("[limiter]\nlease_ttl_secs = -1\n", r"limiter.lease_ttl_secs: .*greater than 0"),
        ("models = 3\n", r"models: .*\(got 3\)"),
    ],
)
def test_bad_config_errors_name_the_file_the_key_path_and_the_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unknown_keys_outside_limiter_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[agent]\nfoo = 1\n[collaboration]\nextra = true\n[[models]]\nname='m'\nx=1\n"
    )
    config = load_config(path)
    assert config.agent == {"foo": 1}
    assert config.collaboration.extra is True


def test_configs_are_frozen_and_have_a_readable_repr() -> None:
    config = Config.model_validate({"collaboration": {"max_agents": 2}})
    with pytest.raises(ValueError, match="frozen"):
        config.collaboration.max_agents = 5  # type: ignore[misc]
    assert "max_agents=2" in repr(config)


def test_the_default_database_lives_in_the_state_directory(tmp_path: Path) -> None:
    assert (
        default_db_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "collet-limiter/limiter.db"
    )
    assert str(default_db_path({})).endswith(".local/state/collet-limiter/limiter.db")


def test_the_default_database_and_directory_are_owner_only(tmp_path: Path) -> None:
    with Limiter() as limiter:
        path = tmp_path / "state/collet-limiter/limiter.db"
        assert limiter.db == str(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
