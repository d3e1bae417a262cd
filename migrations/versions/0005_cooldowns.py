"""Models remember what the providers' refusals taught: a cooldown and an adaptive limit.

A reported 429 (or 529, or quota refusal) stops new leases on the model until
``cooldown_until_ts``; with ``[limiter] adaptive`` it also lowers ``effective_limit``, which
recovers by one every ``recover_secs`` after ``limited_ts``. All NULL: nothing learned, and the
configured ``concurrency_limit`` is in force, as before. An older collet-limiter ignores these
columns (it would not honour a cooldown, but never breaks a limit).

Revision ID: 0005_cooldowns
Revises: 0004_grant_on_release
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_cooldowns"
down_revision = "0004_grant_on_release"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("effective_limit", sa.Integer),
    ("limited_at", sa.String),
    ("limited_ts", sa.Float),
    ("recover_secs", sa.Float),
    ("cooldown_until_at", sa.String),
    ("cooldown_until_ts", sa.Float),
    ("cooldown_kind", sa.String),
    ("cooldown_reason", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        for name, _kind in reversed(_COLUMNS):
            batch.drop_column(name)
