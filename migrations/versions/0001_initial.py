"""The initial schema: models, leases, waiters, meta.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def _holder_columns() -> list[sa.Column[object]]:
    """Who holds a lease or ticket: the same columns in both tables."""
    return [
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pid_start", sa.Float(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
    ]


# Ids only grow and are never reused: 64-bit on PostgreSQL (BIGSERIAL); SQLite's INTEGER PRIMARY
# KEY is 64-bit already, and must be spelled INTEGER to be the rowid.
_ID = sa.Integer().with_variant(sa.BigInteger(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("provider", sa.String(), primary_key=True),
        sa.Column("model", sa.String(), primary_key=True),
        sa.Column("concurrency_limit", sa.Integer(), nullable=False),
        sa.Column("cost_tier", sa.String(), nullable=False),
        sa.Column("supports_tool_use", sa.Boolean(), nullable=False),
        sa.Column("is_cli", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
    )
    op.create_table(
        "leases",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("primary_provider", sa.String(), nullable=False),
        sa.Column("primary_model", sa.String(), nullable=False),
        sa.Column("via", sa.String(), nullable=False),
        *_holder_columns(),
        sa.Column("acquired_at", sa.String(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.Column("acquired_ts", sa.Float(), nullable=False),
        sa.Column("expires_ts", sa.Float(), nullable=False),
    )
    op.create_index("ix_leases_model", "leases", ["provider", "model"])
    op.create_index("ix_leases_owner", "leases", ["owner"])
    op.create_table(
        "waiters",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        *_holder_columns(),
        sa.Column("enqueued_at", sa.String(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.Column("enqueued_ts", sa.Float(), nullable=False),
        sa.Column("expires_ts", sa.Float(), nullable=False),
    )
    op.create_index("ix_waiters_model", "waiters", ["provider", "model"])
    op.create_index("ix_waiters_owner", "waiters", ["owner"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_table("waiters")
    op.drop_table("leases")
    op.drop_table("models")
