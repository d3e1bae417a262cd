"""Tickets carry the token of the lease they will hold, so a release can grant it.

A transaction that frees room inserts the leases of the waiters the fairness rule now admits,
from their tickets, and deletes those tickets: the woken waiter only reads its lease (one write
per handoff). A ticket with no ``lease_token`` (queued by an older collet-limiter) is never
granted this way: its waiter is woken and claims for itself, as before.

Revision ID: 0004_grant_on_release
Revises: 0003_ids_never_reused
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_grant_on_release"
down_revision = "0003_ids_never_reused"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("waiters") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("waiters") as batch:
        batch.drop_column("lease_token")
