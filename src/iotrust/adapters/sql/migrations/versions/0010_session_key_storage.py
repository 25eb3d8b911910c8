"""The key-storage claim of an onboarding hello, kept for its attest and confirm.

Adds ``onboarding_sessions.key_storage`` (nullable): what the device stated in its hello
(``file``, ``pkcs11``, ...; NULL when the hello had no claim). The attest re-checks it under the
factory key's signature and the confirm records it, capped by the model's hardware profile, on
the device. See ``iotrust.core.onboarding.key_storage``.

Revision ID: 0010
Revises: 0009 (audit indexes)
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("onboarding_sessions", sa.Column("key_storage", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("onboarding_sessions") as batch:
        batch.drop_column("key_storage")
