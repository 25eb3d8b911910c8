"""Ingested messages: the database sink of the ingest service.

Adds ``ingested_messages``, one row per signed device message the ingest service accepted (the
envelope verified, fresh, not replayed): the device, its counter and device time, the topic,
content type and payload, the serial of the signing credential and when it was received. Rows
are only ever inserted, in batches (one commit per batch). See ``iotrust.services.ingest``.

Revision ID: 0006
Revises: 0005 (lifecycle: rotation, zombies)
Create Date: 2026-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingested_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.Column("device_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("topic", sa.String(1024), nullable=False),
        sa.Column("content_type", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("credential_serial", sa.String(64), nullable=False),
        sa.Column("device_state", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_ingested_messages_device_id_devices"),
        sa.PrimaryKeyConstraint("id", name="pk_ingested_messages"),
    )
    op.create_index("ix_ingested_messages_device_id_counter", "ingested_messages",
                    ["device_id", "counter"])
    op.create_index("ix_ingested_messages_received_at", "ingested_messages", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_ingested_messages_received_at", table_name="ingested_messages")
    op.drop_index("ix_ingested_messages_device_id_counter", table_name="ingested_messages")
    op.drop_table("ingested_messages")
