"""Lease and ticket ids are never reused (SQLite AUTOINCREMENT).

Without AUTOINCREMENT SQLite hands the largest rowid out again once its row is deleted, so a
ticket queued just after a stalled waiter's ticket was reaped could take the same id, and the
stalled waiter could mistake it for its own place in the queue. The tables are rebuilt with
their rows. Other databases need nothing: PostgreSQL's sequences never hand an id out twice.

Revision ID: 0003_ids_never_reused
Revises: 0002_wake_addresses
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003_ids_never_reused"
down_revision = "0002_wake_addresses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for table in ("leases", "waiters"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    for table in ("leases", "waiters"):
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
