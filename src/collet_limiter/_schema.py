"""The tables, defined once: used by every query and by the Alembic migrations.

Times are stored twice: ``*_ts`` columns hold seconds since the epoch (REAL) for comparisons, and
the ``*_at`` columns hold the same instant as readable UTC text for people using ``sqlite3``.

The tables are SQLAlchemy objects, made when first used (``metadata``, ``leases``, ...: a module
``__getattr__``), so that the revision, the ``meta`` keys and the ``events`` columns can be read
without importing SQLAlchemy: the hot path runs stored SQL text (``_sqltext``) and needs none.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Table

# The Alembic revision this code writes and reads. A test checks it is the scripts' head, so
# opening an up-to-date database needs one SELECT and no Alembic import.
SCHEMA_REVISION: Final = "0006_events"

# Keys of the meta table.
META_MAX_AGENTS: Final = "max_agents"
META_FINGERPRINT: Final = "config_fingerprint"
META_CONFIG_SOURCE: Final = "config_source"
META_CONFIG_WRITTEN_AT: Final = "config_written_at"

# The columns of ``models`` that hold what was learned from refusals (see _cooldown).
HEALTH_COLUMNS: Final = (
    "effective_limit", "limited_at", "limited_ts", "recover_secs", "cooldown_until_at",
    "cooldown_until_ts", "cooldown_kind", "cooldown_reason",
)  # fmt: skip

# The columns of ``events`` but its id, in table order (``_define`` checks it): what
# ``_events.record`` writes.
EVENT_COLUMNS: Final = (
    "kind", "at", "ts", "provider", "model", "primary_provider", "primary_model", "via",
    "lease_id", "ticket_id", "holder", "pid", "hostname", "acquired_ts", "waited_ms", "held_ms",
    "reason", "cooldown_kind", "until_ts", "limit_before", "limit_after",
)  # fmt: skip

if TYPE_CHECKING:
    metadata: MetaData
    models: Table
    leases: Table
    waiters: Table
    events: Table
    event_counts: Table
    meta: Table

_TABLES: Final = frozenset(
    ("metadata", "models", "leases", "waiters", "events", "event_counts", "meta")
)
_DEFINING: Final = threading.Lock()  # two threads' first uses must get the same tables


def __getattr__(name: str) -> Any:
    if name not in _TABLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _DEFINING:
        made = globals().get(name)
        if made is None:
            globals().update(_define())  # the next lookup is a plain attribute
    return globals()[name]


def _define() -> dict[str, Any]:
    """Make the tables (once: ``__getattr__`` keeps them as module attributes)."""
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Float,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        Text,
    )

    metadata = MetaData()

    # Ids only grow and are never reused: 64-bit on PostgreSQL (BIGSERIAL); SQLite's INTEGER PRIMARY
    # KEY is 64-bit already, and must be spelled INTEGER to be the rowid.
    ids = Integer().with_variant(BigInteger(), "postgresql")

    models = Table(
        "models",
        metadata,
        Column("provider", String, primary_key=True),
        Column("model", String, primary_key=True),
        Column("concurrency_limit", Integer, nullable=False),
        Column("cost_tier", String, nullable=False),
        Column("supports_tool_use", Boolean, nullable=False),
        Column("is_cli", Boolean, nullable=False),
        # Place among the config's providers' models; NULL for keys added on demand.
        Column("position", Integer, nullable=True),
        # What the limiter learned from the provider's refusals (migration 0005, see _cooldown):
        # the adaptive limit set by the last report (NULL: concurrency_limit), that report's time
        # and the recovery step, and the cooldown (no new lease before cooldown_until_ts).
        Column("effective_limit", Integer, nullable=True),
        Column("limited_at", String, nullable=True),
        Column("limited_ts", Float, nullable=True),
        Column("recover_secs", Float, nullable=True),
        Column("cooldown_until_at", String, nullable=True),
        Column("cooldown_until_ts", Float, nullable=True),
        Column(
            "cooldown_kind", String, nullable=True
        ),  # rate_limited, overloaded, quota, exit_code
        Column("cooldown_reason", Text, nullable=True),
    )

    leases = Table(
        "leases",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column("token", String, nullable=False),
        Column("provider", String, nullable=False),
        Column("model", String, nullable=False),
        Column("primary_provider", String, nullable=False),
        Column("primary_model", String, nullable=False),
        Column("via", String, nullable=False),
        Column("holder", Text, nullable=True),
        Column("pid", Integer, nullable=False),
        Column("pid_start", Float, nullable=False),
        Column("host_id", String, nullable=False),
        Column("hostname", String, nullable=False),
        # The Limiter instance that holds the lease: its heartbeat renews, its close() releases.
        Column("owner", String, nullable=False),
        Column("acquired_at", String, nullable=False),
        Column("expires_at", String, nullable=False),
        Column("acquired_ts", Float, nullable=False),
        Column("expires_ts", Float, nullable=False),
        # When the request that got it began (migration 0006): acquired_ts minus this is how long
        # it waited. NULL for a lease granted by an older collet-limiter.
        Column("requested_ts", Float, nullable=True),
        # No index but the primary key (migration 0006 dropped the two there were): the global cap
        # keeps this table to a few pages, which a scan reads faster than an index is kept, and
        # each index cost every acquire and release one more page to write.
        sqlite_autoincrement=True,  # ids are never reused (a released id could be mistaken)
    )

    waiters = Table(
        "waiters",
        metadata,
        # The id is the ticket: smaller ids were queued earlier and are served first.
        Column("id", ids, primary_key=True, autoincrement=True),
        Column("token", String, nullable=False),
        Column("provider", String, nullable=False),
        Column("model", String, nullable=False),
        Column("holder", Text, nullable=True),
        Column("pid", Integer, nullable=False),
        Column("pid_start", Float, nullable=False),
        Column("host_id", String, nullable=False),
        Column("hostname", String, nullable=False),
        Column("owner", String, nullable=False),
        Column("enqueued_at", String, nullable=False),
        Column("expires_at", String, nullable=False),
        Column("enqueued_ts", Float, nullable=False),
        Column("expires_ts", Float, nullable=False),
        # Where to send this waiter's wake-up: an abstract Unix datagram socket name (Linux), or
        # NULL for a waiter that only polls.
        Column("wake_addr", String, nullable=True),
        # The token of the lease a transaction that frees room inserts for this waiter when its turn
        # comes (migration 0004); NULL for an older waiter, which is woken and claims for itself.
        Column("lease_token", String, nullable=True),
        # When the request began (migration 0006; NULL from an older collet-limiter): copied to
        # the lease a release grants from this ticket.
        Column("requested_ts", Float, nullable=True),
        Index("ix_waiters_model", "provider", "model"),
        Index("ix_waiters_owner", "owner"),
        sqlite_autoincrement=True,  # a ticket id is a place in the queue: never handed out twice
    )

    # The history (migration 0006, see _events): one row per ended lease (kind released, reclaimed
    # or discarded, with how long it waited and was held) and one per other event (queued,
    # timed_out, cancelled, fell_back, lost, rate_limited, cooldown_started, cooldown_ended,
    # limit_changed), written in the transaction that causes it; pruned by age.
    events = Table(
        "events",
        metadata,
        Column("id", ids, primary_key=True, autoincrement=True),
        Column("kind", String, nullable=False),
        Column("at", String, nullable=False),
        Column("ts", Float, nullable=False),
        Column("provider", String, nullable=True),  # NULL: the global cap (limit_changed)
        Column("model", String, nullable=True),
        Column("primary_provider", String, nullable=True),  # what was asked for
        Column("primary_model", String, nullable=True),
        Column("via", String, nullable=True),
        Column("lease_id", Integer().with_variant(BigInteger(), "postgresql"), nullable=True),
        Column("ticket_id", Integer().with_variant(BigInteger(), "postgresql"), nullable=True),
        Column("holder", Text, nullable=True),
        Column("pid", Integer, nullable=True),
        Column("hostname", String, nullable=True),
        Column("acquired_ts", Float, nullable=True),
        Column("waited_ms", Float, nullable=True),
        Column("held_ms", Float, nullable=True),
        Column("reason", Text, nullable=True),
        Column("cooldown_kind", String, nullable=True),
        Column("until_ts", Float, nullable=True),  # the model's cooldown end after this event
        Column("limit_before", Integer, nullable=True),
        Column("limit_after", Integer, nullable=True),
        # No index on ts and no AUTOINCREMENT: each would cost every release one more page to
        # write. Rows are pruned in id order (see _events), so ids are not reused but for the
        # case of every row pruned.
    )

    # What pruning removed from ``events``, counted, so that counters (``collet-limiter metrics``)
    # never go down: the count of a kind is this row's plus the rows still in ``events``. Keys are
    # '' where the event has none (a global limit change has no model; most kinds have no via).
    event_counts = Table(
        "event_counts",
        metadata,
        Column("kind", String, primary_key=True),
        Column("provider", String, primary_key=True),
        Column("model", String, primary_key=True),
        Column("via", String, primary_key=True),
        Column("count", Integer().with_variant(BigInteger(), "postgresql"), nullable=False),
    )

    meta = Table(
        "meta",
        metadata,
        Column("key", String, primary_key=True),
        Column("value", Text, nullable=False),
    )
    written = tuple(c.name for c in events.columns if c.name != "id")
    assert written == EVENT_COLUMNS, f"EVENT_COLUMNS must be {written}"
    return {
        "metadata": metadata,
        "models": models,
        "leases": leases,
        "waiters": waiters,
        "events": events,
        "event_counts": event_counts,
        "meta": meta,
    }
