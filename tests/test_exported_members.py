"""The public API is exactly what __init__ exports."""

from __future__ import annotations
import __future__

import pickle
import types

import collet_limiter
from collet_limiter import (
    AcquireTimeout,
    ConfigError,
    DatabaseUnavailableError,
    InvalidKeyError,
    LimiterError,
    ModelKey,
    StorageError,
)

REQUIRED = {
    "ModelKey",
    "parse_providers_chain",
    "CostTier",
    "ModelProfile",
    "profile_for",
    "default_concurrency",
    "Config",
    "load_config",
    "load_agent_chain",
    "Limiter",
    "Lease",
    "Acquired",
    "QueueWait",
    "LimiterError",
    "ConfigError",
    "AcquireTimeout",
}


def test_all_is_sorted_and_lists_every_public_name() -> None:
    public = {
        name
        for name in dir(collet_limiter)
        if not name.startswith("_")
        and getattr(collet_limiter, name) is not __future__.annotations
        and not isinstance(getattr(collet_limiter, name), types.ModuleType)  # e.g. the cli package
    }
    assert collet_limiter.__all__ == sorted(collet_limiter.__all__)
    assert set(collet_limiter.__all__) - {"__version__"} == public


def test_the_issue_surface_is_exported() -> None:
    assert set(collet_limiter.__all__) >= REQUIRED


def test_the_history_figures_are_exported() -> None:
    """``Inspector.stats`` returns a ``Stats`` of ``ModelStats``: callers name both types."""
    assert {"Inspector", "ModelStats", "Stats"} <= set(collet_limiter.__all__)
    assert collet_limiter.Stats.__module__ == collet_limiter.ModelStats.__module__


def test_every_public_name_has_a_docstring() -> None:
    for name in collet_limiter.__all__:
        obj = getattr(collet_limiter, name)
        if callable(obj):
            assert obj.__doc__, name


def test_errors_form_one_tree_with_the_matching_builtins() -> None:
    assert issubclass(AcquireTimeout, LimiterError) and issubclass(AcquireTimeout, TimeoutError)
    assert issubclass(ConfigError, LimiterError) and issubclass(ConfigError, ValueError)
    assert issubclass(InvalidKeyError, ConfigError)
    assert issubclass(DatabaseUnavailableError, StorageError) and issubclass(
        DatabaseUnavailableError, OSError
    )


def test_errors_survive_pickling_with_their_context() -> None:
    error = AcquireTimeout("no permit", key=ModelKey("a", "b"), timeout=1.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.key, copy.timeout) == (
        AcquireTimeout,
        "no permit",
        error.key,
        1.5,
    )
