"""collet-limiter: per-model concurrency limits for LLM calls, shared by every process on a host.

Permits are rows in one SQLite file (WAL mode) that any number of processes share and anyone can
read with ``sqlite3``. When the wanted ``provider/model`` is full, the limiter falls back along the
agent's chain, then to a model of the same or one-lower cost tier with tool support, then to a CLI
provider, and otherwise waits its turn in a fair queue. A Python port of the per-model limiter of
the Rust agent orchestrator collet.
"""

from __future__ import annotations

import typing as _typing

from ._errors import (
    AcquireTimeout,
    AsyncContextError,
    ConfigError,
    DatabaseBusyError,
    DatabaseCorruptError,
    DatabaseUnavailableError,
    InvalidKeyError,
    LimiterClosedError,
    LimiterError,
    SchemaVersionError,
    StorageError,
)
from ._keys import ModelKey, parse_providers_chain
from ._profiles import CostTier, ModelProfile, default_concurrency, profile_for

if _typing.TYPE_CHECKING:
    from ._agents import load_agent_chain
    from ._aio import AsyncLease, AsyncLimiter
    from ._config import Config, load_config
    from ._doctor import Diagnosis, diagnose
    from ._inspect import Inspector
    from ._limiter import Lease, Limiter
    from ._results import (
        Acquired,
        CandidateReport,
        Cooldown,
        Explanation,
        LeaseInfo,
        ModelStatus,
        QueueWait,
        Reaped,
        Status,
        TicketInfo,
    )
    from ._stats import ModelStats, Stats

# The rest loads on first use: SQLAlchemy and pydantic cost hundreds of milliseconds, which a
# program that only names an error class or a key, or a command's --help, should not pay.
_LAZY: _typing.Final = {
    "load_agent_chain": "_agents",
    "AsyncLease": "_aio",
    "AsyncLimiter": "_aio",
    "Config": "_config",
    "load_config": "_config",
    "Diagnosis": "_doctor",
    "diagnose": "_doctor",
    "Inspector": "_inspect",
    "Lease": "_limiter",
    "Limiter": "_limiter",
    **dict.fromkeys(
        (
            "Acquired",
            "CandidateReport",
            "Cooldown",
            "Explanation",
            "LeaseInfo",
            "ModelStatus",
            "QueueWait",
            "Reaped",
            "Status",
            "TicketInfo",
        ),
        "_results",
    ),
    "ModelStats": "_stats",
    "Stats": "_stats",
}

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeout",
    "Acquired",
    "AsyncContextError",
    "AsyncLease",
    "AsyncLimiter",
    "CandidateReport",
    "Config",
    "ConfigError",
    "Cooldown",
    "CostTier",
    "DatabaseBusyError",
    "DatabaseCorruptError",
    "DatabaseUnavailableError",
    "Diagnosis",
    "Explanation",
    "Inspector",
    "InvalidKeyError",
    "Lease",
    "LeaseInfo",
    "Limiter",
    "LimiterClosedError",
    "LimiterError",
    "ModelKey",
    "ModelProfile",
    "ModelStats",
    "ModelStatus",
    "QueueWait",
    "Reaped",
    "SchemaVersionError",
    "Stats",
    "Status",
    "StorageError",
    "TicketInfo",
    "__version__",
    "default_concurrency",
    "diagnose",
    "load_agent_chain",
    "load_config",
    "parse_providers_chain",
    "profile_for",
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
