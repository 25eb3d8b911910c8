"""Message counters: each device's signed-message replay window, persisted write-behind.

Adds ``message_counters``, one row per device that ever had a signed message accepted: the highest
accepted counter, the window bitmap (big-endian bytes), the window size it was written for, and
``reserved`` — a durable ceiling above every accepted counter, written *before* a message above
it is accepted, and cleared on a clean shutdown. See ``iotrust.services.counters``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_counters",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("highest", sa.BigInteger(), nullable=False),
        sa.Column("bitmap", sa.LargeBinary(), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("highest >= -1", name="ck_message_counters_highest"),
        sa.CheckConstraint("window_size BETWEEN 1 AND 1024",
                           name="ck_message_counters_window_size"),
        sa.CheckConstraint("reserved IS NULL OR reserved >= highest",
                           name="ck_message_counters_reserved"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_message_counters_device_id_devices"),
        sa.PrimaryKeyConstraint("device_id", name="pk_message_counters"),
    )


def downgrade() -> None:
    op.drop_table("message_counters")
