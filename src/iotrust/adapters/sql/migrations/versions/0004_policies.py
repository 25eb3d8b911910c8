"""Least-privilege policies: named policies, device groups, a policy per device model.

Adds ``policies`` (name, rules as JSON, a version bumped on every change), ``device_groups`` (a
name and an optional policy) with ``device_group_members``, and ``device_models.policy``. SQLite
cannot add a foreign key to an existing table with ``ALTER TABLE ... ADD CONSTRAINT`` and a batch
rebuild of ``device_models`` would fail once devices reference it, so on SQLite the column is added
with an inline, named ``REFERENCES`` clause (allowed because its default is NULL).

Revision ID: 0004
Revises: 0003 (message counters)
Create Date: 2025-01-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MODEL_FK = "fk_device_models_policy_policies"


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_policies"),
    )
    op.create_table(
        "device_groups",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("policy", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_device_groups"),
        sa.ForeignKeyConstraint(["policy"], ["policies.name"],
                                name="fk_device_groups_policy_policies"),
    )
    op.create_table(
        "device_group_members",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "device_id", name="pk_device_group_members"),
        sa.ForeignKeyConstraint(["group_name"], ["device_groups.name"],
                                name="fk_device_group_members_group_name_device_groups"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_device_group_members_device_id_devices"),
    )
    op.create_index("ix_device_group_members_device_id", "device_group_members", ["device_id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"ALTER TABLE device_models ADD COLUMN policy VARCHAR(64) "
                   f"CONSTRAINT {_MODEL_FK} REFERENCES policies (name)")
    else:
        op.add_column("device_models", sa.Column("policy", sa.String(64), nullable=True))
        op.create_foreign_key(_MODEL_FK, "device_models", "policies", ["policy"], ["name"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE device_models DROP COLUMN policy")
    else:
        op.drop_constraint(_MODEL_FK, "device_models", type_="foreignkey")
        op.drop_column("device_models", "policy")
    op.drop_index("ix_device_group_members_device_id", table_name="device_group_members")
    op.drop_table("device_group_members")
    op.drop_table("device_groups")
    op.drop_table("policies")
