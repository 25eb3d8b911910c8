"""The registry's tables as SQLAlchemy Core metadata (the same on SQLite and PostgreSQL).

This is the *current* schema, used to build statements and to check that the migrations produce
it; the migrations in ``migrations/versions`` are what actually create and change tables. Every
constraint has a deterministic name (``naming_convention``) so that integrity errors can be mapped
to precise reasons. Timestamps go through :class:`UtcDateTime`, which refuses naive values and
returns aware UTC datetimes on every backend.

This module runs no SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utc_for_storage(value: datetime | None) -> datetime | None:
    """An aware datetime normalised to UTC (``None`` stays); naive ones are a programming error."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError("only timezone-aware datetimes can be stored")
    return value.astimezone(UTC)


def utc_from_storage(value: datetime | None) -> datetime | None:
    """A stored datetime as aware UTC (naive values are UTC; ``None`` stays)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts and only returns aware UTC datetimes.

    SQLite has no time zones: values are stored as naive UTC text (fixed width, so comparisons in
    SQL order correctly) and come back tagged UTC. PostgreSQL stores ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC; naive datetimes are a programming error."""
        value = utc_for_storage(value)
        if value is not None and dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC."""
        del dialect
        return utc_from_storage(value)


def _states(column: str, values: tuple[str, ...], name: str | None = None) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=name or column)


DEVICE_STATES = ("expected", "active", "quarantined", "retired")
CREDENTIAL_STATES = ("issued", "active", "superseded", "revoked", "expired")
SESSION_STATES = ("open", "attested", "confirmed", "expired", "refused")

trust_domain = Table(
    "trust_domain", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("root_ca_id", String(128), nullable=True),
    Column("server_id", String(128), nullable=False),
    Column("settings", JSON, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

certificate_authorities = Table(
    "certificate_authorities", metadata,
    Column("id", String(128), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("certificate_pem", Text, nullable=False),
    Column("key_ref", String(1000), nullable=False),
    Column("state", String(16), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False),
    Column("crl_number", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    _states("role", ("root", "issuing")),
    _states("state", ("active", "retiring", "retired")),
)

manufacturers = Table(
    "manufacturers", metadata,
    Column("name", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("anchors_pem", Text, nullable=False),
    Column("allowed", JSON, nullable=False),
    Column("revoked", Boolean, nullable=False),
    Column("unsafe_manufacturer_trust", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime(), nullable=False),
)

device_models = Table(
    "device_models", metadata,
    Column("name", String(64), primary_key=True),
    Column("manufacturer", String(64), ForeignKey("manufacturers.name"), nullable=False),
    Column("hardware_profile", Text, nullable=True),
    Column("credential_lifetime_s", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # 0004: the policy every device of this model gets (NULL: the default policy)
    Column("policy", String(64), ForeignKey("policies.name"), nullable=True),
    # 0011: the product id its vouchers/factory certificates carry (NULL: not bound to one)
    Column("product_id", String(16), nullable=True),
    # 0011: one model per (manufacturer, product); NULLs (unbound models) never collide
    Index("uq_device_models_manufacturer_product_id", "manufacturer", "product_id", unique=True),
)

devices = Table(
    "devices", metadata,
    Column("id", String(30), primary_key=True),
    Column("manufacturer", String(64), ForeignKey("manufacturers.name"), nullable=False),
    Column("serial", String(64), nullable=False),
    Column("factory_spki_sha256", String(64), nullable=False, unique=True),
    Column("vendor_id", String(64), nullable=False),
    Column("product_id", String(64), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("model", String(64), ForeignKey("device_models.name"), nullable=True),
    Column("state", String(16), nullable=False),
    Column("retired_reason", String(32), nullable=True),
    Column("key_storage", String(32), nullable=False),
    Column("unsafe_admission", Boolean, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=True),
    UniqueConstraint("manufacturer", "serial"),
    Index(None, "state", "id"),
    _states("state", DEVICE_STATES),
)

vouchers = Table(
    "vouchers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(30), ForeignKey("devices.id"), nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("raw", LargeBinary, nullable=False),
    Column("owner", String(64), nullable=False),
    Column("imported_at", UtcDateTime(), nullable=False),
    Column("superseded", Boolean, nullable=False),
    Index(None, "device_id", "superseded"),
)

credentials = Table(
    "credentials", metadata,
    Column("serial_number", String(40), primary_key=True),
    Column("device_id", String(30), ForeignKey("devices.id"), nullable=True),
    Column("subject", String(200), nullable=False),
    Column("spki_sha256", String(64), nullable=False, unique=True),
    Column("issuer_ca_id", String(128), ForeignKey("certificate_authorities.id"), nullable=False),
    Column("not_before", UtcDateTime(), nullable=False),
    Column("not_after", UtcDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("certificate_pem", Text, nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("revocation_reason", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Index(None, "device_id", "state"),
    Index(None, "issuer_ca_id", "state"),
    _states("state", CREDENTIAL_STATES),
)

onboarding_sessions = Table(
    "onboarding_sessions", metadata,
    Column("id", String(128), primary_key=True),
    Column("device_id", String(30), ForeignKey("devices.id"), nullable=False, index=True),
    Column("serial", String(64), nullable=False),
    Column("nonce_sha256", String(64), nullable=False, unique=True),
    Column("device_nonce", String(128), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("consumed_at", UtcDateTime(), nullable=True),
    Column("state", String(16), nullable=False),
    Column("source", String(200), nullable=False),
    Column("credential_serial", String(40), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    # 0002: what attest and confirm need from the hello, and the confirmation deadline
    Column("factory_spki", LargeBinary, nullable=True),
    Column("voucher_sha256", String(64), nullable=True),
    Column("confirm_by", UtcDateTime(), nullable=True),
    # 0010: the hello's key-storage claim (NULL: none stated)
    Column("key_storage", String(16), nullable=True),
    Index(None, "state", "confirm_by"),
    Index(None, "device_id", "state"),
    _states("state", SESSION_STATES),
)

#: One row per onboarding hello, counted by the per-serial and per-source rate limits (0002).
onboarding_attempts = Table(
    "onboarding_attempts", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("serial", String(64), nullable=True),
    Column("source", String(200), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Index(None, "serial", "at"),
    Index(None, "source", "at"),
    Index(None, "at"),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    _states("role", ("admin", "operator", "auditor")),
)

events = Table(
    "events", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("kind", String(100), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("reason", String(100), nullable=True),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(200), nullable=False),
    Column("hash", String(200), nullable=False),
    Index(None, "device_id", "seq"),
    Index(None, "kind", "seq"),
)

event_head = Table(
    "event_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(200), nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

seen_keys = Table(
    "seen_keys", metadata,
    Column("spki_sha256", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("device_id", String(64), nullable=True),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    _states("kind", ("factory", "csr", "credential")),
)

# -- 0004: least-privilege policies, device groups -----------------------------------------------

#: Named policies; ``rules`` is ``[{"action", "template", "shared"}, ...]`` (core/policy.py).
policies = Table(
    "policies", metadata,
    Column("name", String(64), primary_key=True),
    Column("rules", JSON, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

#: Groups of devices sharing a policy (in addition to their model's).
device_groups = Table(
    "device_groups", metadata,
    Column("name", String(64), primary_key=True),
    Column("policy", String(64), ForeignKey("policies.name"), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

device_group_members = Table(
    "device_group_members", metadata,
    Column("group_name", String(64), ForeignKey("device_groups.name"), primary_key=True),
    Column("device_id", String(30), ForeignKey("devices.id"), primary_key=True),
    Column("added_at", UtcDateTime(), nullable=False),
    Index(None, "device_id"),
)

message_counters = Table(
    "message_counters", metadata,
    Column("device_id", String(64), ForeignKey("devices.id"), primary_key=True),
    Column("highest", BigInteger, nullable=False),
    Column("bitmap", LargeBinary, nullable=False),
    Column("window_size", Integer, nullable=False),
    Column("reserved", BigInteger, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    CheckConstraint("highest >= -1", name="highest"),
    CheckConstraint("window_size BETWEEN 1 AND 1024", name="window_size"),
    CheckConstraint("reserved IS NULL OR reserved >= highest", name="reserved"),
)

# -- 0005: credential rotation, renewal campaigns, zombie contacts -------------------------------

ROTATION_STATES = ("open", "completed", "confirmed", "expired", "refused")

#: One credential rotation (renewal with a new key, proven with the current one). The server
#: nonce is stored only as its SHA-256 and spent by one conditional update (open → completed).
rotation_sessions = Table(
    "rotation_sessions", metadata,
    Column("id", String(32), primary_key=True),
    Column("device_id", String(30), ForeignKey("devices.id"), nullable=False),
    Column("credential_serial", String(40), nullable=False),
    Column("nonce_sha256", String(64), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("source", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("consumed_at", UtcDateTime(), nullable=True),
    Column("confirm_by", UtcDateTime(), nullable=True),
    Column("confirmed_at", UtcDateTime(), nullable=True),
    Column("new_credential_serial", String(40), nullable=True),
    Index(None, "device_id", "state"),
    Index(None, "state", "confirm_by"),
    _states("state", ROTATION_STATES),
)

#: Devices asked to renew early by a rotation campaign (``iotrust rotate``).
rotation_requests = Table(
    "rotation_requests", metadata,
    Column("device_id", String(30), ForeignKey("devices.id"), primary_key=True),
    Column("campaign", String(64), nullable=False),
    Column("requested_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=True),
    Index(None, "campaign", "completed_at"),
)

#: Contacts by retired, revoked or expired identities, aggregated per identity and channel.
zombies = Table(
    "zombies", metadata,
    Column("identity", String(200), primary_key=True),
    Column("where", String(32), primary_key=True),
    Column("device_id", String(30), nullable=True),
    Column("count", BigInteger, nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("last_source", String(200), nullable=False),
    Column("last_reason", String(64), nullable=False),
    Index(None, "last_seen_at"),
    Index(None, "device_id"),
)

#: Signed device messages accepted by the ingest service (its database sink, 0006).
ingested_messages = Table(
    "ingested_messages", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("device_id", String(64), ForeignKey("devices.id"), nullable=False),
    Column("counter", BigInteger, nullable=False),
    Column("device_time_ms", BigInteger, nullable=False),
    Column("topic", String(1024), nullable=False),
    Column("content_type", String(128), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("credential_serial", String(64), nullable=False),
    Column("device_state", String(16), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Index(None, "device_id", "counter"),
    Index(None, "received_at"),
)

# -- 0007: signed updates: releases, rollouts, per-device progress and report counters -----------

ROLLOUT_STATES = ("active", "paused", "aborted", "completed")
ROLLOUT_DEVICE_STATES = ("pending", "downloading", "installed", "committed", "rolled_back",
                         "rejected")

#: Published firmware releases; ``targets`` maps each hardware class to its published path.
releases = Table(
    "releases", metadata,
    Column("id", String(128), primary_key=True),
    Column("component", String(64), nullable=False),
    Column("release_counter", BigInteger, nullable=False),
    Column("hw_class_ids", JSON, nullable=False),
    Column("min_agent_version", String(32), nullable=False),
    Column("targets", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("component", "release_counter"),
)

rollouts = Table(
    "rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("release_id", String(128), ForeignKey("releases.id"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("policy", JSON, nullable=False),
    Column("wave_index", Integer, nullable=False),
    Column("reason", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "state"),
    _states("state", ROLLOUT_STATES),
)

#: One row per device of a rollout; ``released_at`` NULL: not (or no longer) offered.
rollout_devices = Table(
    "rollout_devices", metadata,
    Column("rollout_id", String(64), ForeignKey("rollouts.id"), primary_key=True),
    Column("device_id", String(30), ForeignKey("devices.id"), primary_key=True),
    Column("bucket", String(20), nullable=False),
    Column("wave", Integer, nullable=False),
    Column("released_at", UtcDateTime(), nullable=True),
    Column("status", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index(None, "rollout_id", "wave"),
    Index(None, "device_id"),
    _states("status", ROLLOUT_DEVICE_STATES),
)

#: The highest status-report counter accepted per device, and what it runs.
device_updates = Table(
    "device_updates", metadata,
    Column("device_id", String(30), ForeignKey("devices.id"), primary_key=True),
    Column("report_counter", BigInteger, nullable=False),
    Column("installed_release", String(128), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# -- 0008: posture audit suppressions --------------------------------------------------------------

#: A finding target the operator chose to accept, with who and why (``target`` ``*``: the whole
#: check). Rows are never updated; lifting a suppression deletes it (and records an event).
audit_suppressions = Table(
    "audit_suppressions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("check_id", String(64), nullable=False),
    Column("target", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=True),
    UniqueConstraint("check_id", "target"),
)

# -- 0009: indexes for fleet-scale audit queries -------------------------------------------------

#: Devices per (state, key storage, model) from the index alone (the audit's policy sets).
Index("ix_devices_state_key_storage_model_id", devices.c.state, devices.c.key_storage,
      devices.c.model, devices.c.id)
#: Credentials by state and end / start of validity (expiring, old, revoked-but-unexpired):
#: range scans instead of reading every certificate.
Index("ix_credentials_state_not_after", credentials.c.state, credentials.c.not_after)
Index("ix_credentials_state_not_before", credentials.c.state, credentials.c.not_before)
