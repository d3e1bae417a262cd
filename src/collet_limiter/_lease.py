"""What a held permit knows about itself; the sync and async leases add how to release it."""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, LimiterError
from ._store import utc_datetime

if TYPE_CHECKING:
    from datetime import datetime

    from ._cooldown import Kind
    from ._fallback import Via
    from ._keys import ModelKey
    from ._runtime import Runtime
    from ._store import LeaseRecord


class BaseLease:
    """A permit for one call on ``key``, held until released.

    A lease is advisory: it is a row that other processes respect. A holder that stalls for
    longer than the lease TTL (SIGSTOP, a frozen VM) may find its lease reclaimed; the
    heartbeat then marks it ``lost`` and logs a warning, and its release does nothing.

    A lease garbage-collected without being released is given back by its limiter's heartbeat,
    with a ``ResourceWarning``, as an unclosed file is.
    """

    __slots__ = ("__weakref__", "_lost", "_pid", "_record", "_released", "_runtime", "expires_ts")

    def __init__(self, record: LeaseRecord, runtime: Runtime) -> None:
        self._record = record
        self._runtime = runtime
        self._pid = os.getpid()
        self._lost = False
        self._released = False
        self.expires_ts = record.expires_ts

    @property
    def key(self) -> ModelKey:
        """The model actually granted: call this one."""
        return self._record.key

    @property
    def primary(self) -> ModelKey:
        """The model that was asked for."""
        return self._record.primary

    @property
    def via(self) -> Via:
        """How it was granted: primary, chain, capability, cli or queue."""
        return self._record.via

    @property
    def holder(self) -> str | None:
        """The holder label given to acquire."""
        return self._record.holder

    @property
    def id(self) -> int:
        """The lease's row id in the ``leases`` table."""
        return self._record.id

    @property
    def token(self) -> str:
        """The secret that proves ownership of the row (release deletes by id and token)."""
        return self._record.token

    @property
    def acquired_at(self) -> datetime:
        """When it was granted (UTC)."""
        return utc_datetime(self._record.acquired_ts)

    @property
    def expires_at(self) -> datetime:
        """When it expires unless renewed (UTC); the heartbeat renews it every TTL/3."""
        return utc_datetime(self.expires_ts)

    @property
    def lost(self) -> bool:
        """True when the lease was reclaimed from under its holder (it had expired)."""
        return self._lost

    @property
    def released(self) -> bool:
        """True once released (or lost)."""
        return self._released or self._lost

    def _refusal(
        self, retry_after: float | None, *, quota: bool, reason: str | None, kind: Kind | None
    ) -> dict[str, Any]:
        """The arguments of ``Runtime.report`` for ``report_rate_limited``, checked (``kind``
        overrides the one ``quota`` implies: ``collet-limiter run --cooldown-on-exit`` reports
        ``exit_code``)."""
        if retry_after is not None and not (
            isinstance(retry_after, (int, float)) and 0 <= retry_after < math.inf
        ):
            raise ConfigError(
                f"retry_after must be a number of seconds >= 0, or None for [limiter] "
                f"cooldown_secs (got {retry_after!r})",
                argument="retry_after",
            )
        return {
            "kind": kind or ("quota" if quota else "rate_limited"),
            "retry_after": None if retry_after is None else float(retry_after),
            "reason": reason or ("quota refused" if quota else "reported rate limited"),
        }

    def _refusal_in(self, exc: BaseException | None) -> dict[str, Any] | None:
        """The arguments of ``Runtime.report`` if ``exc`` is a provider's refusal, else None."""
        if exc is None or isinstance(exc, LimiterError):
            return None
        from ._ratelimit import rate_limit_signal

        signal = rate_limit_signal(exc)
        if signal is None:
            return None
        return {"kind": signal.kind, "retry_after": signal.retry_after, "reason": signal.detail}

    def _mark_lost(self) -> None:
        self._lost = True
        self._released = True

    def _begin_release(self) -> bool:
        """Mark released; True when the row must still be deleted by this process."""
        if self._released:
            return False
        self._released = True
        # A lease inherited across fork() stays the parent's: the child never deletes it.
        return self._pid == os.getpid() and not self._lost

    def __del__(self) -> None:
        if getattr(self, "_released", True) or self._lost or self._pid != os.getpid():
            return  # released, lost, inherited across fork(), or never fully built
        message = f"{self!r} was garbage-collected without release(); giving its slot back"
        self._released = True
        self._runtime.drop(self._record.id, self._record.token)
        warnings.warn(message, ResourceWarning, source=self, stacklevel=1)

    def __repr__(self) -> str:
        state = "lost" if self._lost else "released" if self._released else "held"
        fallback = "" if self.key == self.primary else f" for {self.primary}"
        label = f" holder={self.holder!r}" if self.holder else ""
        return (
            f"<{type(self).__name__} {self.id} {self.key}{fallback} via {self.via}{label} {state}>"
        )
