"""A history: the ``events`` table, the counts pruning folded away, and views over them.

Each transaction that causes an event writes its row (see ``collet_limiter._events``): one row
per ended lease (``released``, ``reclaimed`` or ``discarded``, with how long it waited and how
long it was held) and one per other event. It also drops the two indexes of ``leases`` (see
``upgrade``). Leases and tickets gain ``requested_ts``, when the
request began, so that a lease knows how long it waited. An older collet-limiter on the same
file writes no events (and leaves ``requested_ts`` NULL: a wait of 0), but breaks nothing.

The views give ``collet-limiter stats``'s figures to ``sqlite3`` and ``psql`` users, over all the
history kept (the command computes them in Python, for any window; a test checks both agree):

- ``lease_history``: every lease, ended (from ``events``) or held now (from ``leases``);
- ``model_stats``: per model, and in total (provider and model ``*``): acquisitions and how
  they were granted, waits (nearest-rank percentiles, ms), timeouts, cancellations, reclaimed
  leases, lost leases, rate-limit reports, seconds spent cooling down (the total is the models'
  sum) and the peak of concurrently held leases.

Revision ID: 0006_events
Revises: 0005_cooldowns
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_events"
down_revision = "0005_cooldowns"
branch_labels = None
depends_on = None

_ID = sa.Integer().with_variant(sa.BigInteger(), "postgresql")

# Seconds since the epoch, now: the only dialect-specific part of the views.
_NOW = {
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "CAST(extract(epoch FROM clock_timestamp()) AS double precision)",
}

_LEASE_HISTORY = """
CREATE VIEW lease_history AS
SELECT lease_id, provider, model, primary_provider, primary_model, via, holder, pid, hostname,
       acquired_ts, waited_ms, ts AS ended_ts, held_ms, kind AS ended, reason
FROM events
WHERE kind IN ('released', 'reclaimed', 'discarded') AND lease_id IS NOT NULL
UNION ALL
SELECT id, provider, model, primary_provider, primary_model, via, holder, pid, hostname,
       acquired_ts, (acquired_ts - COALESCE(requested_ts, acquired_ts)) * 1000.0,
       NULL, NULL, NULL, NULL
FROM leases
"""

_MODEL_STATS = """
CREATE VIEW model_stats AS
WITH clock AS (SELECT {now} AS now),
delivered AS (
  SELECT provider, model, via, waited_ms FROM lease_history
  WHERE ended IS NULL OR ended <> 'discarded'
  UNION ALL
  SELECT '*', '*', via, waited_ms FROM lease_history
  WHERE ended IS NULL OR ended <> 'discarded'
),
ranked AS (
  SELECT provider, model, waited_ms,
         ROW_NUMBER() OVER (PARTITION BY provider, model ORDER BY waited_ms) AS rn,
         COUNT(*) OVER (PARTITION BY provider, model) AS n
  FROM delivered
),
waits AS (
  SELECT provider, model,
         MIN(CASE WHEN rn * 100 >= 50 * n THEN waited_ms END) AS wait_p50_ms,
         MIN(CASE WHEN rn * 100 >= 95 * n THEN waited_ms END) AS wait_p95_ms,
         MIN(CASE WHEN rn * 100 >= 99 * n THEN waited_ms END) AS wait_p99_ms,
         MAX(waited_ms) AS wait_max_ms
  FROM ranked GROUP BY provider, model
),
acquired AS (
  SELECT provider, model, COUNT(*) AS acquisitions,
         SUM(CASE WHEN via = 'primary' THEN 1 ELSE 0 END) AS via_primary,
         SUM(CASE WHEN via = 'queue' THEN 1 ELSE 0 END) AS via_queue,
         SUM(CASE WHEN via = 'chain' THEN 1 ELSE 0 END) AS via_chain,
         SUM(CASE WHEN via = 'capability' THEN 1 ELSE 0 END) AS via_capability,
         SUM(CASE WHEN via = 'cli' THEN 1 ELSE 0 END) AS via_cli
  FROM delivered GROUP BY provider, model
),
happened AS (
  SELECT provider, model, kind, lease_id FROM events WHERE provider IS NOT NULL
  UNION ALL
  SELECT '*', '*', kind, lease_id FROM events WHERE provider IS NOT NULL
),
counted AS (
  SELECT provider, model,
         SUM(CASE WHEN kind = 'queued' THEN 1 ELSE 0 END) AS queued,
         SUM(CASE WHEN kind = 'timed_out' THEN 1 ELSE 0 END) AS timeouts,
         SUM(CASE WHEN kind = 'cancelled' THEN 1 ELSE 0 END) AS cancellations,
         SUM(CASE WHEN kind = 'reclaimed' AND lease_id IS NOT NULL THEN 1 ELSE 0 END)
           AS reclaims,
         SUM(CASE WHEN kind = 'lost' THEN 1 ELSE 0 END) AS lost,
         SUM(CASE WHEN kind = 'rate_limited' THEN 1 ELSE 0 END) AS rate_limited
  FROM happened GROUP BY provider, model
),
reports AS (
  SELECT provider, model, ts, until_ts,
         LAG(until_ts) OVER (PARTITION BY provider, model ORDER BY id) AS prev_until
  FROM events WHERE kind = 'rate_limited'
),
pieces AS (
  SELECT provider, model,
         CASE WHEN prev_until IS NOT NULL AND prev_until > ts THEN prev_until ELSE ts END
           AS start_ts,
         CASE WHEN until_ts < clock.now THEN until_ts ELSE clock.now END AS end_ts
  FROM reports, clock
),
cooled_models AS (
  SELECT provider, model,
         SUM(CASE WHEN end_ts > start_ts THEN end_ts - start_ts ELSE 0 END) AS cooling_secs
  FROM pieces GROUP BY provider, model
),
cooled AS (
  SELECT provider, model, cooling_secs FROM cooled_models
  UNION ALL
  SELECT '*', '*', SUM(cooling_secs) FROM cooled_models HAVING COUNT(*) > 0
),
spans AS (
  SELECT provider, model, acquired_ts, ended_ts FROM lease_history
  UNION ALL
  SELECT '*', '*', acquired_ts, ended_ts FROM lease_history
),
points AS (
  SELECT provider, model, acquired_ts AS t, 1 AS d FROM spans
  UNION ALL
  SELECT provider, model, ended_ts, -1 FROM spans WHERE ended_ts IS NOT NULL
),
running AS (
  SELECT provider, model,
         SUM(d) OVER (PARTITION BY provider, model ORDER BY t, d
                      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS held
  FROM points
),
peaks AS (SELECT provider, model, MAX(held) AS peak_holders FROM running GROUP BY provider, model),
keys AS (
  SELECT provider, model FROM acquired
  UNION SELECT provider, model FROM counted
  UNION SELECT provider, model FROM peaks
)
SELECT keys.provider, keys.model,
       COALESCE(acquired.acquisitions, 0) AS acquisitions,
       COALESCE(acquired.via_primary, 0) AS via_primary,
       COALESCE(acquired.via_queue, 0) AS via_queue,
       COALESCE(acquired.via_chain, 0) AS via_chain,
       COALESCE(acquired.via_capability, 0) AS via_capability,
       COALESCE(acquired.via_cli, 0) AS via_cli,
       waits.wait_p50_ms, waits.wait_p95_ms, waits.wait_p99_ms, waits.wait_max_ms,
       COALESCE(counted.queued, 0) AS queued,
       COALESCE(counted.timeouts, 0) AS timeouts,
       COALESCE(counted.cancellations, 0) AS cancellations,
       COALESCE(counted.reclaims, 0) AS reclaims,
       COALESCE(counted.lost, 0) AS lost,
       COALESCE(counted.rate_limited, 0) AS rate_limited,
       COALESCE(cooled.cooling_secs, 0) AS cooling_secs,
       COALESCE(peaks.peak_holders, 0) AS peak_holders
FROM keys
LEFT JOIN acquired ON acquired.provider = keys.provider AND acquired.model = keys.model
LEFT JOIN waits ON waits.provider = keys.provider AND waits.model = keys.model
LEFT JOIN counted ON counted.provider = keys.provider AND counted.model = keys.model
LEFT JOIN cooled ON cooled.provider = keys.provider AND cooled.model = keys.model
LEFT JOIN peaks ON peaks.provider = keys.provider AND peaks.model = keys.model
"""


def upgrade() -> None:
    # The global cap keeps `leases` to a few pages: its indexes cost every acquire and release
    # a page write each (about 8 % of the uncontended cycles per second), and saved nothing.
    op.drop_index("ix_leases_model", table_name="leases")
    op.drop_index("ix_leases_owner", table_name="leases")
    for table in ("leases", "waiters"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("requested_ts", sa.Float(), nullable=True))
    op.create_table(
        "events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("primary_provider", sa.String(), nullable=True),
        sa.Column("primary_model", sa.String(), nullable=True),
        sa.Column("via", sa.String(), nullable=True),
        sa.Column("lease_id", _ID, nullable=True),
        sa.Column("ticket_id", _ID, nullable=True),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("hostname", sa.String(), nullable=True),
        sa.Column("acquired_ts", sa.Float(), nullable=True),
        sa.Column("waited_ms", sa.Float(), nullable=True),
        sa.Column("held_ms", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cooldown_kind", sa.String(), nullable=True),
        sa.Column("until_ts", sa.Float(), nullable=True),
        sa.Column("limit_before", sa.Integer(), nullable=True),
        sa.Column("limit_after", sa.Integer(), nullable=True),
    )
    op.create_table(
        "event_counts",
        sa.Column("kind", sa.String(), primary_key=True),
        sa.Column("provider", sa.String(), primary_key=True),
        sa.Column("model", sa.String(), primary_key=True),
        sa.Column("via", sa.String(), primary_key=True),
        sa.Column("count", _ID, nullable=False),
    )
    now = _NOW[op.get_bind().dialect.name]
    op.execute(_LEASE_HISTORY)
    op.execute(_MODEL_STATS.format(now=now))


def downgrade() -> None:
    op.execute("DROP VIEW model_stats")
    op.execute("DROP VIEW lease_history")
    op.drop_table("event_counts")
    op.drop_table("events")
    for table in ("waiters", "leases"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("requested_ts")
    op.create_index("ix_leases_owner", "leases", ["owner"])
    op.create_index("ix_leases_model", "leases", ["provider", "model"])
