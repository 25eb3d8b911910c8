"""Posture audit suppressions.

Adds ``audit_suppressions``: one row per (check id, target) an operator accepted, with the
reason, who did it, when, and an optional expiry. See ``iotrust.services.audit``.

Revision ID: 0008
Revises: 0007 (signed updates)
Create Date: 2026-01-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_suppressions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("check_id", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_suppressions"),
        sa.UniqueConstraint("check_id", "target", name="uq_audit_suppressions_check_id_target"),
    )


def downgrade() -> None:
    op.drop_table("audit_suppressions")
