"""What the sync and async limiters share: settings, requests, config seeding and decision logs.

Neither waiting nor I/O lives here; ``Limiter`` and ``AsyncLimiter`` run the ``_store``
transactions and wait in their own way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from ._config import ENV_DB, Config, default_db_path, load_config
from ._engine import Target, resolve_target
from ._errors import ConfigError
from ._identity import current_holder, new_token
from ._keys import ModelKey, coerce_chain, coerce_key
from ._store import ClaimRequest, ClaimResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._fallback import ModelRow
    from ._store import Removed

log: Final = logging.getLogger("collet_limiter")


def _positive(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if not value > 0:
        raise ConfigError(f"{name} must be > 0 (got {value!r})", argument=name)
    return float(value)


class Core:
    """The state and rules a limiter facade needs, independent of how it waits."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None,
        *,
        config: Config | None,
        clock: Callable[[], float] | None,
        lease_ttl: float | None,
        poll_interval: float | None,
        max_poll_interval: float | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.config = config if config is not None else load_config(env=env)
        settings = self.config.limiter
        explicit = db if db is not None else (env.get(ENV_DB) or settings.db)
        self.is_default_path = explicit is None
        self.target: Target = resolve_target(explicit or default_db_path(env))
        self.clock: Callable[[], float] = clock or time.time
        self.ttl = _positive("lease_ttl", lease_ttl, settings.lease_ttl_secs)
        self.poll_interval = _positive(
            "poll_interval", poll_interval, settings.poll_interval_ms / 1000
        )
        self.max_poll_interval = max(
            self.poll_interval,
            _positive("max_poll_interval", max_poll_interval, settings.max_poll_interval_ms / 1000),
        )
        self.busy_timeout_ms = settings.busy_timeout_ms
        self.config_rows = self.config.model_rows()
        self.fingerprint = config_fingerprint(self.config, self.config_rows)
        self.reset_identity()

    def reset_identity(self) -> None:
        """A new owner id and process identity (at creation, and in a child after ``fork``)."""
        self.owner = uuid.uuid4().hex
        self.pid = os.getpid()
        self.holder = current_holder()

    @property
    def display(self) -> str:
        """The database, for messages."""
        return self.target.display

    def demand(self, key: ModelKey) -> ModelRow:
        """The row to add for a key the table lacks."""
        return self.config.demand_row(key)

    def request(
        self,
        primary: ModelKey | str,
        chain: Iterable[ModelKey | str] | str | None,
        *,
        fallback: bool,
        enqueue: bool,
        label: str | None,
    ) -> ClaimRequest:
        """A claim request from this process for ``primary``."""
        if label is not None and not isinstance(label, str):
            raise ConfigError(f"holder must be a string (got {label!r})", argument="holder")
        return ClaimRequest(
            primary=coerce_key(primary, what="primary model"),
            chain=tuple(coerce_chain(chain)),
            fallback=fallback,
            ticket=None,
            enqueue=enqueue,
            holder=self.holder,
            label=label,
            owner=self.owner,
            token=new_token(),
            ticket_token=new_token(),
            ttl=self.ttl,
        )

    @staticmethod
    def with_ticket(request: ClaimRequest, result: ClaimResult) -> ClaimRequest:
        """The request to retry with: the primary only, holding the ticket the last claim left."""
        return replace(request, ticket=result.ticket, enqueue=False, fallback=False)

    def log_claim(self, request: ClaimRequest, result: ClaimResult) -> None:
        """Log the decision: debug when the primary is full, info on fallback, warning on none."""
        for removed in result.reaped:
            log_reaped(removed)
        if result.requeued:
            log.warning(
                "%s: this waiter's ticket had expired (process stalled longer than the lease TTL "
                "of %ss); queued again at the back",
                request.primary,
                self.ttl,
            )
        if not request.fallback:
            if result.lease is None:
                log.debug("%s: still waiting (%s)", request.primary, _first_reason(result))
            return
        primary_reason = _first_reason(result)
        lease = result.lease
        if lease is not None and lease.via == "primary":
            return
        log.debug("%s: primary not available (%s)", request.primary, primary_reason)
        if lease is not None:
            verdict = next(v for v in result.verdicts if v.granted)
            log.info(
                "%s: falling back to %s via %s (%s; primary: %s)",
                request.primary,
                lease.key,
                lease.via,
                verdict.candidate.reason,
                primary_reason,
            )
        else:
            log.warning(
                "%s: all %d candidates exhausted (%s); %s",
                request.primary,
                len(result.verdicts),
                result.global_reason or primary_reason,
                "queueing for the primary" if request.enqueue else "returning QueueWait",
            )


def _first_reason(result: ClaimResult) -> str:
    return result.verdicts[0].reason if result.verdicts else result.global_reason


def log_reaped(removed: Removed) -> None:
    """Log one reclaimed lease or ticket."""
    log.info(
        "reclaimed %s %d on %s of pid %d on %s (%s)",
        removed.kind,
        removed.id,
        removed.key,
        removed.pid,
        removed.hostname,
        removed.reason,
    )


def config_fingerprint(config: Config, rows: Iterable[ModelRow]) -> str:
    """A digest of everything a config writes to the database (to notice config changes)."""
    payload = {
        "max_agents": config.max_agents,
        "rows": [
            [str(r.key), r.limit, r.cost_tier.value, r.supports_tool_use, r.is_cli, r.position]
            for r in rows
        ],
        "models": [entry.model_dump(mode="json") for entry in config.models],
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def monotonic() -> float:
    """Real elapsed time for timeouts and poll intervals (the injectable clock is for leases)."""
    return time.monotonic()
