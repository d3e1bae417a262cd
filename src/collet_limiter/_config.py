"""collet's TOML config format (the parts the limiter reads) plus our own ``[limiter]`` table.

A collet config file works as-is: unknown keys and collet's other sections (``[default]``,
``[agent]``, ``[ui]``, ...) are accepted and kept. Only ``[limiter]`` is strict, since a typo there
would silently change how the limiter behaves.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ._errors import ConfigError
from ._fallback import ModelRow
from ._keys import ModelKey
from ._profiles import CostTier, ModelProfile, profile_for, tier_concurrency

if TYPE_CHECKING:
    from collections.abc import Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_DB: Final = "COLLET_LIMITER_DB"
ENV_CONFIG: Final = "COLLET_LIMITER_CONFIG"
ENV_MAX_AGENTS: Final = "COLLET_COLLAB_MAX_AGENTS"

DEFAULT_MAX_AGENTS: Final = 3
DEFAULT_LEASE_TTL_SECS: Final = 60.0


class _Open(BaseModel):
    """collet's own tables: unknown keys are kept (readable as attributes), never rejected."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self if value is not None)
        return f"{type(self).__name__}({fields})"


class Collaboration(_Open):
    """``[collaboration]``: the global cap on concurrent calls across every model."""

    max_agents: Annotated[int, Field(ge=1, strict=True)] = DEFAULT_MAX_AGENTS


class ModelEntry(_Open):
    """One ``[[models]]`` entry: a limit and profile overrides for a model name or key."""

    name: Annotated[str, Field(min_length=1)]
    concurrency_limit: Annotated[int, Field(ge=1, strict=True)] | None = None
    supports_tools: bool | None = None
    cost_tier: CostTier | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_model(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if "/" in value and ModelKey.parse(value) is None:
            raise ValueError(f"{value!r} is neither a model name nor 'provider/model'")
        return value


class ProviderEntry(_Open):
    """One ``[[providers]]`` entry; a provider with ``cli`` set is a CLI provider."""

    name: Annotated[str, Field(min_length=1)]
    base_url: str | None = None
    models: tuple[str, ...] = ()
    cli: str | None = None
    cli_args: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name_has_no_slash(cls, value: str) -> str:
        value = value.strip()
        if not value or "/" in value:
            raise ValueError(
                f"{value!r} is not a provider name: it must be non-empty and contain no '/'"
            )
        return value

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(model.strip() for model in value)
        if any(not model for model in cleaned):
            raise ValueError("model names must not be empty")
        return cleaned

    @property
    def is_cli(self) -> bool:
        """Whether this provider runs a CLI agent rather than an API."""
        return bool(self.cli)

    def model_keys(self) -> list[ModelKey]:
        """The provider's models as keys; a provider listing none is keyed ``name/name``."""
        return [ModelKey(self.name, model) for model in (self.models or (self.name,))]


class LimiterSettings(BaseModel):
    """``[limiter]``: our own settings. Strict: an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str | None = None
    lease_ttl_secs: Annotated[float, Field(gt=0)] = DEFAULT_LEASE_TTL_SECS
    poll_interval_ms: Annotated[float, Field(gt=0)] = 200.0
    max_poll_interval_ms: Annotated[float, Field(gt=0)] = 1000.0
    busy_timeout_ms: Annotated[int, Field(ge=0)] = 10_000
    group: Annotated[str, Field(min_length=1)] | None = None  # share the files with this group
    # Learning from the providers' refusals (see _cooldown): how long a reported 429 without a
    # Retry-After, and a quota refusal, cool the model; adaptive limits and their recovery; and
    # the random spread of the wake-ups of waiters whose model's cooldown ended.
    cooldown_secs: Annotated[float, Field(gt=0)] = 30.0
    quota_cooldown_secs: Annotated[float, Field(gt=0)] = 3600.0
    adaptive: bool = False
    adaptive_recover_secs: Annotated[float, Field(gt=0)] = 60.0
    cooldown_spread_ms: Annotated[float, Field(ge=0)] = 200.0
    # The history (see _events): whether this process's transactions write their events, and
    # how many days of them pruning keeps.
    history: bool = True
    history_days: Annotated[float, Field(gt=0)] = 7.0


class Config(_Open):
    """A validated, frozen config: collet's sections the limiter reads, and ``[limiter]``.

    Build one with ``load_config`` (file plus env variables) or directly, e.g.
    ``Config(models=[{"name": "glm-5", "concurrency_limit": 2}])``.
    """

    collaboration: Collaboration = Collaboration()
    models: tuple[ModelEntry, ...] = ()
    providers: tuple[ProviderEntry, ...] = ()
    limiter: LimiterSettings = LimiterSettings()
    _source: str | None = PrivateAttr(default=None)

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: tuple[ProviderEntry, ...]) -> tuple[ProviderEntry, ...]:
        seen: set[str] = set()
        for provider in value:
            if provider.name in seen:
                raise ValueError(f"provider {provider.name!r} is defined twice")
            seen.add(provider.name)
        return value

    @property
    def max_agents(self) -> int:
        """The global cap: ``[collaboration] max_agents``."""
        return self.collaboration.max_agents

    def model_entry(self, key: ModelKey) -> ModelEntry | None:
        """The ``[[models]]`` entry for ``key``: by model name first, then by ``provider/model``."""
        by_model = next((entry for entry in self.models if entry.name == key.model), None)
        if by_model is not None:
            return by_model
        full = key.as_str()
        return next((entry for entry in self.models if entry.name == full), None)

    def profile(self, key: ModelKey) -> ModelProfile:
        """The profile of ``key``: ``[[models]]`` overrides first, then the built-in table."""
        base = profile_for(key.model)
        entry = self.model_entry(key)
        if entry is None:
            return base
        return ModelProfile(
            cost_tier=entry.cost_tier if entry.cost_tier is not None else base.cost_tier,
            supports_tool_use=(
                entry.supports_tools if entry.supports_tools is not None else base.supports_tool_use
            ),
        )

    def limit(self, key: ModelKey) -> int:
        """The concurrency limit of ``key``: a ``[[models]]`` entry, else its tier's default."""
        entry = self.model_entry(key)
        if entry is not None and entry.concurrency_limit is not None:
            return entry.concurrency_limit
        return tier_concurrency(self.profile(key).cost_tier)

    def provider(self, name: str) -> ProviderEntry | None:
        """The ``[[providers]]`` entry called ``name``."""
        return next((provider for provider in self.providers if provider.name == name), None)

    @property
    def source(self) -> str | None:
        """The file this config was read from; None for built-in defaults or a mapping."""
        return self._source

    @property
    def origin(self) -> str:
        """Where this config came from, for messages: its file, or how it was built."""
        if self._source is not None:
            return self._source
        return "<built-in defaults>" if self == Config() else "<config built in code>"

    def row(self, key: ModelKey, *, position: int | None = None, is_cli: bool = False) -> ModelRow:
        """The ``models`` table row for ``key`` under this config."""
        profile = self.profile(key)
        return ModelRow(
            key=key,
            limit=self.limit(key),
            cost_tier=profile.cost_tier,
            supports_tool_use=profile.supports_tool_use,
            is_cli=is_cli,
            position=position,
        )

    def demand_row(self, key: ModelKey) -> ModelRow:
        """The row for a key the config's providers do not list (added when first requested)."""
        provider = self.provider(key.provider)
        return self.row(key, is_cli=provider is not None and provider.is_cli)

    def model_rows(self) -> list[ModelRow]:
        """The rows the providers define, in config order: the fallback engine's candidates."""
        rows: list[ModelRow] = []
        for provider in self.providers:
            for key in provider.model_keys():
                if all(row.key != key for row in rows):
                    rows.append(self.row(key, position=len(rows), is_cli=provider.is_cli))
        return rows


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; [limiter] accepts only documented keys)"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict) or error["type"] == "missing" else f" (got {value!r})"
    return f"{_key_path(tuple(error['loc']))}: {message}{shown}"


def config_error(exc: ValidationError, *, source: str) -> ConfigError:
    """A ``ConfigError`` naming the source, each bad key path and value."""
    problems = "; ".join(_describe(error) for error in exc.errors())
    return ConfigError(f"{source}: {problems}", path=source)


def config_from_mapping(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Validate a parsed TOML document; errors name ``source`` and the key path."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, source=source) from None
    config._source = source  # noqa: SLF001 - set once, right after validation
    return config


def read_config_file(path: str | os.PathLike[str]) -> Config:
    """Read and validate one TOML file, without env overrides."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found", path=source) from None
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read config file: {exc.strerror}", path=source
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason})", path=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}", path=source) from None
    return config_from_mapping(data, source=source)


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Load a config: ``path``, else ``$COLLET_LIMITER_CONFIG``, else built-in defaults.

    Env variables then override the file: ``COLLET_LIMITER_DB`` sets ``[limiter] db`` and
    ``COLLET_COLLAB_MAX_AGENTS`` sets ``[collaboration] max_agents``. A file that is named but
    missing is an error; no file at all is fine.
    """
    env = os.environ if env is None else env
    named = path if path is not None else env.get(ENV_CONFIG) or None
    config = read_config_file(named) if named is not None else Config()
    return apply_env(config, env)


def apply_env(config: Config, env: Mapping[str, str]) -> Config:
    """``config`` with the env variables' overrides applied."""
    db = env.get(ENV_DB)
    if db:
        config = config.model_copy(update={"limiter": config.limiter.model_copy(update={"db": db})})
    raw = env.get(ENV_MAX_AGENTS)
    if raw is not None and raw.strip():
        try:
            max_agents = int(raw.strip())
        except ValueError:
            max_agents = 0
        if max_agents < 1:
            raise ConfigError(
                f"{ENV_MAX_AGENTS}={raw!r}: must be a whole number >= 1", variable=ENV_MAX_AGENTS
            )
        collaboration = config.collaboration.model_copy(update={"max_agents": max_agents})
        config = config.model_copy(update={"collaboration": collaboration})
    return config


def default_db_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/collet-limiter/limiter.db``, with ``~/.local/state`` when unset."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "collet-limiter" / "limiter.db"
