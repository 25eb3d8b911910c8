"""Indexes for the fleet-scale posture audit.

Adds ``ix_devices_state_key_storage_model_id`` (the audit groups devices by state, key storage
and model from the index alone) and ``ix_credentials_state_not_after`` /
``ix_credentials_state_not_before`` (expiring, old and revoked-but-unexpired credentials are
range scans instead of reads of every stored certificate). See ``iotrust.adapters.sql.audit``.

Revision ID: 0009
Revises: 0008 (audit suppressions)
Create Date: 2026-01-09
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_devices_state_key_storage_model_id", "devices",
                    ["state", "key_storage", "model", "id"])
    op.create_index("ix_credentials_state_not_after", "credentials", ["state", "not_after"])
    op.create_index("ix_credentials_state_not_before", "credentials", ["state", "not_before"])


def downgrade() -> None:
    op.drop_index("ix_credentials_state_not_before", table_name="credentials")
    op.drop_index("ix_credentials_state_not_after", table_name="credentials")
    op.drop_index("ix_devices_state_key_storage_model_id", table_name="devices")
