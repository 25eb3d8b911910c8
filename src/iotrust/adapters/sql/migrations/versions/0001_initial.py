"""Initial registry schema.

A frozen snapshot: later schema changes go in new revisions, never here. Types are plain
SQLAlchemy types (``DateTime(timezone=True)``); the aware-UTC handling is Python-side, in
``schema.UtcDateTime``. Constraint names follow ``schema.NAMING_CONVENTION``.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _states(table: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=f"ck_{table}_{column}")


def upgrade() -> None:
    op.create_table(
        "trust_domain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        _ts("created_at"),
        sa.Column("root_ca_id", sa.String(128), nullable=True),
        sa.Column("server_id", sa.String(128), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_trust_domain_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_trust_domain"),
    )
    op.create_table(
        "certificate_authorities",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("key_ref", sa.String(1000), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("not_after"),
        sa.Column("crl_number", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _states("certificate_authorities", "role", ("root", "issuing")),
        _states("certificate_authorities", "state", ("active", "retiring", "retired")),
        sa.PrimaryKeyConstraint("id", name="pk_certificate_authorities"),
    )
    op.create_table(
        "manufacturers",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("anchors_pem", sa.Text(), nullable=False),
        sa.Column("allowed", sa.JSON(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("unsafe_manufacturer_trust", sa.Boolean(), nullable=False,
                  server_default=sa.false()),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("name", name="pk_manufacturers"),
    )
    op.create_table(
        "device_models",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("manufacturer", sa.String(64), nullable=False),
        sa.Column("hardware_profile", sa.Text(), nullable=True),
        sa.Column("credential_lifetime_s", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["manufacturer"], ["manufacturers.name"],
                                name="fk_device_models_manufacturer_manufacturers"),
        sa.PrimaryKeyConstraint("name", name="pk_device_models"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(30), nullable=False),
        sa.Column("manufacturer", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("factory_spki_sha256", sa.String(64), nullable=False),
        sa.Column("vendor_id", sa.String(64), nullable=False),
        sa.Column("product_id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("retired_reason", sa.String(32), nullable=True),
        sa.Column("key_storage", sa.String(32), nullable=False),
        sa.Column("unsafe_admission", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("last_seen_at", nullable=True),
        _states("devices", "state", ("expected", "active", "quarantined", "retired")),
        sa.ForeignKeyConstraint(["manufacturer"], ["manufacturers.name"],
                                name="fk_devices_manufacturer_manufacturers"),
        sa.ForeignKeyConstraint(["model"], ["device_models.name"],
                                name="fk_devices_model_device_models"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("factory_spki_sha256", name="uq_devices_factory_spki_sha256"),
        sa.UniqueConstraint("manufacturer", "serial", name="uq_devices_manufacturer_serial"),
    )
    op.create_index("ix_devices_state_id", "devices", ["state", "id"])
    op.create_table(
        "vouchers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        _ts("imported_at"),
        sa.Column("superseded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_vouchers_device_id_devices"),
        sa.PrimaryKeyConstraint("id", name="pk_vouchers"),
        sa.UniqueConstraint("sha256", name="uq_vouchers_sha256"),
    )
    op.create_index("ix_vouchers_device_id_superseded", "vouchers", ["device_id", "superseded"])
    op.create_table(
        "credentials",
        sa.Column("serial_number", sa.String(40), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("issuer_ca_id", sa.String(128), nullable=False),
        _ts("not_before"),
        _ts("not_after"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        _ts("revoked_at", nullable=True),
        sa.Column("revocation_reason", sa.String(64), nullable=True),
        _ts("created_at"),
        _states("credentials", "state",
                ("issued", "active", "superseded", "revoked", "expired")),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_credentials_device_id_devices"),
        sa.ForeignKeyConstraint(["issuer_ca_id"], ["certificate_authorities.id"],
                                name="fk_credentials_issuer_ca_id_certificate_authorities"),
        sa.PrimaryKeyConstraint("serial_number", name="pk_credentials"),
        sa.UniqueConstraint("spki_sha256", name="uq_credentials_spki_sha256"),
    )
    op.create_index("ix_credentials_device_id_state", "credentials", ["device_id", "state"])
    op.create_index("ix_credentials_issuer_ca_id_state", "credentials",
                    ["issuer_ca_id", "state"])
    op.create_table(
        "onboarding_sessions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(30), nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("nonce_sha256", sa.String(64), nullable=False),
        sa.Column("device_nonce", sa.String(128), nullable=False),
        _ts("expires_at"),
        _ts("consumed_at", nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("credential_serial", sa.String(40), nullable=True),
        _ts("created_at"),
        _states("onboarding_sessions", "state",
                ("open", "attested", "confirmed", "expired", "refused")),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name="fk_onboarding_sessions_device_id_devices"),
        sa.PrimaryKeyConstraint("id", name="pk_onboarding_sessions"),
        sa.UniqueConstraint("nonce_sha256", name="uq_onboarding_sessions_nonce_sha256"),
    )
    op.create_index("ix_onboarding_sessions_device_id", "onboarding_sessions", ["device_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _states("api_tokens", "role", ("admin", "operator", "auditor")),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=False, nullable=False),
        _ts("at"),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(100), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
    )
    op.create_index("ix_events_device_id_seq", "events", ["device_id", "seq"])
    op.create_index("ix_events_kind_seq", "events", ["kind", "seq"])
    head = op.create_table(
        "event_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(200), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_event_head_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_event_head"),
    )
    # The head row always exists (seq 0 = empty log) so appenders can always lock it.
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": ""}])
    op.create_table(
        "seen_keys",
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=True),
        _ts("first_seen_at"),
        _states("seen_keys", "kind", ("factory", "csr", "credential")),
        sa.PrimaryKeyConstraint("spki_sha256", name="pk_seen_keys"),
    )


def downgrade() -> None:
    for index, table in (
        ("ix_events_kind_seq", "events"),
        ("ix_events_device_id_seq", "events"),
        ("ix_onboarding_sessions_device_id", "onboarding_sessions"),
        ("ix_credentials_issuer_ca_id_state", "credentials"),
        ("ix_credentials_device_id_state", "credentials"),
        ("ix_vouchers_device_id_superseded", "vouchers"),
        ("ix_devices_state_id", "devices"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("seen_keys", "event_head", "events", "api_tokens", "onboarding_sessions",
                  "credentials", "vouchers", "devices", "device_models", "manufacturers",
                  "certificate_authorities", "trust_domain"):
        op.drop_table(table)
