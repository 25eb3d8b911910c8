"""Operator API tokens bound to roles (admin, operator, auditor), stored only as SHA-256 hashes.

A token is 32 random bytes shown once at creation (``iot_`` + base64url). Lookup hashes the
presented token and finds the row by hash; the final comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable

from iotrust.adapters.sql.store import Database
from iotrust.core import events as ev
from iotrust.core.ids import check_slug
from iotrust.core.records import ApiToken
from iotrust.errors import AuthError, InputError
from iotrust.ports import Clock
from iotrust.services import eventlog

ROLES = ("admin", "operator", "auditor")
#: What each role may do; every operator endpoint names the permission it needs.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "operator": frozenset({"read", "write"}),
    "auditor": frozenset({"read"}),
}
PREFIX = "iot_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(db: Database, clock: Clock, *, name: str, role: str, actor: str,
                 random: Callable[[int], bytes] = os.urandom) -> tuple[ApiToken, str]:
    """Create a token; returns the stored record and the secret (shown once, never stored)."""
    check_slug(name, "token_name")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}", reason="invalid_role")
    secret = PREFIX + base64.urlsafe_b64encode(random(32)).decode().rstrip("=")
    record = ApiToken(id=name, name=name, role=role, token_sha256=_hash(secret),
                      created_at=clock.now(), revoked_at=None)
    with db.transaction() as tx:
        tx.add_token(record)
        eventlog.record(tx, clock, ev.TOKEN_CREATED, actor=actor,
                        data={"name": name, "role": role})
    return record, secret


def authenticate(db: Database, presented: str | None) -> ApiToken:
    """The live token behind ``presented``, or :class:`AuthError`."""
    if not presented or not presented.startswith(PREFIX) or len(presented) > 128:  # noqa: PLR2004
        raise AuthError("a valid operator token is required", reason="unauthenticated")
    digest = _hash(presented)
    with db.transaction() as tx:
        record = tx.find_token_by_hash(digest)
    if record is None or record.revoked_at is not None \
            or not hmac.compare_digest(record.token_sha256, digest):
        raise AuthError("a valid operator token is required", reason="unauthenticated")
    return record


def authorize(token: ApiToken, permission: str) -> None:
    """Raise unless the token's role grants ``permission``."""
    if permission not in PERMISSIONS.get(token.role, frozenset()):
        raise AuthError(f"role {token.role} may not {permission}", reason="forbidden")


def revoke_token(db: Database, clock: Clock, name: str, *, actor: str) -> None:
    """Revoke a token by name."""
    with db.transaction() as tx:
        tx.revoke_token(name, at=clock.now())
        eventlog.record(tx, clock, ev.TOKEN_REVOKED, actor=actor, data={"name": name})
