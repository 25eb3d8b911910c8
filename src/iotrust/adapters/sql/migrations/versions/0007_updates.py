"""Signed updates: releases, rollouts, rollout devices, device update report counters.

Revision ID: 0007
Revises: 0006
Create Date: 2025-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("component", sa.String(64), nullable=False),
        sa.Column("release_counter", sa.BigInteger(), nullable=False),
        sa.Column("hw_class_ids", sa.JSON(), nullable=False),
        sa.Column("min_agent_version", sa.String(32), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_releases"),
        sa.UniqueConstraint("component", "release_counter",
                            name="uq_releases_component_release_counter"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("release_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("wave_index", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"],
                                name="fk_rollouts_release_id_releases"),
        sa.CheckConstraint("state IN ('active', 'paused', 'aborted', 'completed')",
                           name="ck_rollouts_state"),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("bucket", sa.String(20), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name="pk_rollout_devices"),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"],
                                name="fk_rollout_devices_rollout_id_rollouts"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_rollout_devices_device_id_devices"),
        sa.CheckConstraint("status IN ('pending', 'downloading', 'installed', 'committed', "
                           "'rolled_back', 'rejected')", name="ck_rollout_devices_status"),
    )
    op.create_index("ix_rollout_devices_rollout_id_wave", "rollout_devices",
                    ["rollout_id", "wave"])
    op.create_index("ix_rollout_devices_device_id", "rollout_devices", ["device_id"])
    op.create_table(
        "device_updates",
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("report_counter", sa.BigInteger(), nullable=False),
        sa.Column("installed_release", sa.String(128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_updates"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_device_updates_device_id_devices"),
    )


def downgrade() -> None:
    op.drop_table("device_updates")
    op.drop_index("ix_rollout_devices_device_id", "rollout_devices")
    op.drop_index("ix_rollout_devices_rollout_id_wave", "rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index("ix_rollouts_state", "rollouts")
    op.drop_table("rollouts")
    op.drop_table("releases")
