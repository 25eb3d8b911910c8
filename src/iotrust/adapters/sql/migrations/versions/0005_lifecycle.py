"""Sustaining and ending trust: rotation sessions, renewal campaigns, zombie contacts.

Adds ``rotation_sessions`` (one credential renewal: the current credential, the hashed single-use
server nonce, the new credential and the confirmation deadline), ``rotation_requests`` (devices a
campaign asked to renew early) and ``zombies`` (contacts by retired, revoked or expired identities,
one row per identity and channel with a count and first/last seen).

Revision ID: 0005
Revises: 0004 (policies)
Create Date: 2025-01-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rotation_sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("credential_serial", sa.String(40), nullable=False),
        sa.Column("nonce_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirm_by", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("new_credential_serial", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rotation_sessions"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_rotation_sessions_device_id_devices"),
        sa.UniqueConstraint("nonce_sha256", name="uq_rotation_sessions_nonce_sha256"),
        sa.CheckConstraint(
            "state IN ('open', 'completed', 'confirmed', 'expired', 'refused')",
            name="ck_rotation_sessions_state"),
    )
    op.create_index("ix_rotation_sessions_device_id_state", "rotation_sessions",
                    ["device_id", "state"])
    op.create_index("ix_rotation_sessions_state_confirm_by", "rotation_sessions",
                    ["state", "confirm_by"])
    op.create_table(
        "rotation_requests",
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name="pk_rotation_requests"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_rotation_requests_device_id_devices"),
    )
    op.create_index("ix_rotation_requests_campaign_completed_at", "rotation_requests",
                    ["campaign", "completed_at"])
    op.create_table(
        "zombies",
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("where", sa.String(32), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_source", sa.String(200), nullable=False),
        sa.Column("last_reason", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("identity", "where", name="pk_zombies"),
    )
    op.create_index("ix_zombies_last_seen_at", "zombies", ["last_seen_at"])
    op.create_index("ix_zombies_device_id", "zombies", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_zombies_device_id", table_name="zombies")
    op.drop_index("ix_zombies_last_seen_at", table_name="zombies")
    op.drop_table("zombies")
    op.drop_index("ix_rotation_requests_campaign_completed_at", table_name="rotation_requests")
    op.drop_table("rotation_requests")
    op.drop_index("ix_rotation_sessions_state_confirm_by", table_name="rotation_sessions")
    op.drop_index("ix_rotation_sessions_device_id_state", table_name="rotation_sessions")
    op.drop_table("rotation_sessions")
