"""Model keys (``provider/model``) and fallback-chain parsing, as in collet's ``ModelKey``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True, order=True, slots=True)
class ModelKey:
    """One model of one provider: the unit a concurrency limit applies to.

    Frozen, hashable and ordered (by provider, then model). ``str(key)`` is ``provider/model``.
    """

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> ModelKey | None:
        """Split ``text`` at its first ``/``; None when there is no slash or a half is empty.

        Both halves are trimmed, and only the first slash separates them, so
        ``"openrouter/anthropic/claude"`` is provider ``openrouter``, model ``anthropic/claude``.
        """
        provider, sep, model = text.partition("/")
        provider, model = provider.strip(), model.strip()
        if not sep or not provider or not model:
            return None
        return cls(provider=provider, model=model)

    def as_str(self) -> str:
        """The ``provider/model`` form, the same as ``str(key)``."""
        return f"{self.provider}/{self.model}"

    def __str__(self) -> str:
        return self.as_str()


def parse_providers_chain(text: str) -> list[ModelKey]:
    """Parse ``"a/b, c/d"`` into keys, silently skipping items that are not ``provider/model``."""
    return [key for item in text.split(",") if (key := ModelKey.parse(item)) is not None]


def coerce_key(value: ModelKey | str, *, what: str = "model key") -> ModelKey:
    """Accept a ``ModelKey`` or its ``provider/model`` text; raise ``InvalidKeyError`` otherwise."""
    if isinstance(value, ModelKey):
        return value
    if isinstance(value, str):
        key = ModelKey.parse(value)
        if key is not None:
            return key
    from ._errors import InvalidKeyError

    raise InvalidKeyError(
        f"invalid {what} {value!r}: expected 'provider/model', e.g. 'zai-coding/glm-5'",
        value=str(value),
    )


def coerce_chain(values: Iterable[ModelKey | str] | str | None) -> list[ModelKey]:
    """A fallback chain from keys, ``provider/model`` strings, or one comma-separated string.

    A comma-separated string follows collet's rule (invalid items are skipped); an explicit list
    must hold only valid keys, since a typo there is almost certainly a bug.
    """
    if values is None:
        return []
    if isinstance(values, str):
        return parse_providers_chain(values)
    return [coerce_key(value, what="fallback chain entry") for value in values]
