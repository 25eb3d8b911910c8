"""Onboarding service: session bindings, confirmation deadline, rate-limit attempts.

Adds to ``onboarding_sessions`` what the attest and confirm steps need after the hello: the
factory public key the hello proved (DER SubjectPublicKeyInfo), the SHA-256 of the voucher that
was sent, and the confirmation deadline set when the nonce is consumed; an index for the sweep of
unconfirmed sessions. Adds ``onboarding_attempts``, one row per hello, which the per-serial and
per-source rate limits count (in the database, so every worker sees the same counts).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("onboarding_sessions") as batch:
        batch.add_column(sa.Column("factory_spki", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("voucher_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("confirm_by", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_onboarding_sessions_state_confirm_by", "onboarding_sessions",
                    ["state", "confirm_by"])
    op.create_index("ix_onboarding_sessions_device_id_state", "onboarding_sessions",
                    ["device_id", "state"])
    op.create_table(
        "onboarding_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("serial", sa.String(64), nullable=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_onboarding_attempts"),
    )
    op.create_index("ix_onboarding_attempts_serial_at", "onboarding_attempts", ["serial", "at"])
    op.create_index("ix_onboarding_attempts_source_at", "onboarding_attempts", ["source", "at"])
    op.create_index("ix_onboarding_attempts_at", "onboarding_attempts", ["at"])


def downgrade() -> None:
    op.drop_index("ix_onboarding_attempts_at", table_name="onboarding_attempts")
    op.drop_index("ix_onboarding_attempts_source_at", table_name="onboarding_attempts")
    op.drop_index("ix_onboarding_attempts_serial_at", table_name="onboarding_attempts")
    op.drop_table("onboarding_attempts")
    op.drop_index("ix_onboarding_sessions_device_id_state", table_name="onboarding_sessions")
    op.drop_index("ix_onboarding_sessions_state_confirm_by", table_name="onboarding_sessions")
    with op.batch_alter_table("onboarding_sessions") as batch:
        batch.drop_column("confirm_by")
        batch.drop_column("voucher_sha256")
        batch.drop_column("factory_spki")
