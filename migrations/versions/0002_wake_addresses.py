"""Waiters record where to send their wake-up.

A waiter's limiter listens on a Unix datagram socket; a transaction that frees room sends the
ticket id there after commit, so the waiter claims at once instead of at its next poll.

Revision ID: 0002_wake_addresses
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_wake_addresses"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("waiters") as batch:
        batch.add_column(sa.Column("wake_addr", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("waiters") as batch:
        batch.drop_column("wake_addr")
