"""Bind a device model to the product it describes.

Adds ``device_models.product_id`` (nullable: models registered before this revision are bound
to no product) and a unique index on ``(manufacturer, product_id)``, so that a device of a known
manufacturer and product id has at most one model. Voucher import, unsafe onboarding admission
and model registration set ``devices.model`` from it (``iotrust.services.hardware``).

Revision ID: 0011
Revises: 0010 (session key storage)
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("device_models", sa.Column("product_id", sa.String(16), nullable=True))
    op.create_index("uq_device_models_manufacturer_product_id", "device_models",
                    ["manufacturer", "product_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_device_models_manufacturer_product_id", table_name="device_models")
    with op.batch_alter_table("device_models") as batch:
        batch.drop_column("product_id")
