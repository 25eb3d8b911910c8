"""Operator API tokens bound to roles (admin, operator, auditor), stored only as SHA-256 hashes.

A token is 32 random bytes shown once at creation or rotation (``iot_`` + base64url). Lookup
hashes the presented token and finds the row by hash; the final comparison is constant-time.
Rotation gives a token a new secret under the same name and role (the old secret stops working);
revocation ends it.

Failed authentications are limited per source address (:func:`authenticate_request`): each
failure is a row in the registry (the API is stateless, so every worker and machine sees the
same count), and a source with ``limit`` failures inside ``window`` is refused with
``rate_limited`` (HTTP 429), valid token or not, until its failures age out of the window. The
rows live in ``onboarding_attempts`` under the source ``auth:<address>`` and no serial, so they
never count against onboarding's own per-source limit; onboarding's sweep and this module prune
old rows.

This module never logs and never stores or returns a secret except the one it just created.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

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
#: A token got a new secret (``data``: name, role; never the secret).
TOKEN_ROTATED = "token.rotated"  # noqa: S105 - an event kind, not a credential
#: A source reached the authentication-failure limit and is refused for a while.
AUTH_RATE_LIMITED = "auth.rate_limited"
ACTOR_API = "api@iotrust"
LIMIT_ENV = "IOTRUST_AUTH_FAILURE_LIMIT"
WINDOW_ENV = "IOTRUST_AUTH_FAILURE_WINDOW_S"
_SOURCE_PREFIX = "auth:"
_MAX_SOURCE = 190
#: Failure rows older than this are pruned (onboarding's own window is at most an hour).
_KEEP = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AuthLimits:
    """How many failed authentications a source may make in ``window_s`` (0: no limit)."""

    limit: int = 20
    window_s: int = 60

    def __post_init__(self) -> None:
        if not 0 <= self.limit <= 1_000_000 or not 1 <= self.window_s <= 3600:  # noqa: PLR2004
            raise InputError("auth failure limit 0..1000000, window 1..3600 s",
                             reason="invalid_auth_limits")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> AuthLimits:
        """``IOTRUST_AUTH_FAILURE_LIMIT`` (default 20, 0 disables) and ``..._WINDOW_S`` (60)."""
        source = os.environ if env is None else env
        values: dict[str, int] = {}
        for name, field in ((LIMIT_ENV, "limit"), (WINDOW_ENV, "window_s")):
            text = source.get(name, "").strip()
            if text:
                if not text.isdigit():
                    raise InputError(f"{name} must be a non-negative integer",
                                     reason="invalid_auth_limits")
                values[field] = int(text)
        return cls(**values)


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


def authenticate_request(db: Database, clock: Clock, presented: str | None, *, source: str,
                         limits: AuthLimits | None = None) -> ApiToken:
    """:func:`authenticate`, limited per source: ``AuthError(rate_limited)`` past the limit.

    A failure is counted (in its own transaction) and re-raised; the event ``auth.rate_limited``
    is recorded once, when a source reaches the limit. While a source is limited nothing more is
    written for it, so a flood costs one read per request.
    """
    limits = limits or AuthLimits()
    if not limits.limit:
        return authenticate(db, presented)
    key = _SOURCE_PREFIX + (source or "unknown")[:_MAX_SOURCE]
    now = clock.now()
    since = now - timedelta(seconds=limits.window_s)
    with db.transaction(readonly=True) as tx:
        failures = tx.count_onboarding_attempts(since=since, source=key)
    if failures >= limits.limit:
        raise AuthError("too many failed authentications from this address; try again later",
                        reason="rate_limited")
    try:
        return authenticate(db, presented)
    except AuthError:
        with db.transaction() as tx:
            failures = tx.count_onboarding_attempts(since=since, source=key)
            if failures < limits.limit:
                tx.add_onboarding_attempt(None, key, now)
                if failures + 1 == limits.limit:
                    eventlog.record(tx, clock, AUTH_RATE_LIMITED, actor=ACTOR_API,
                                    reason="rate_limited",
                                    data={"source": key.removeprefix(_SOURCE_PREFIX),
                                          "failures": limits.limit,
                                          "window_s": limits.window_s})
                    tx.prune_onboarding_attempts(now - _KEEP)
        raise


def authorize(token: ApiToken, permission: str) -> None:
    """Raise unless the token's role grants ``permission``."""
    if permission not in PERMISSIONS.get(token.role, frozenset()):
        raise AuthError(f"role {token.role} may not {permission}", reason="forbidden")


def rotate_token(db: Database, clock: Clock, name: str, *, actor: str,
                 random: Callable[[int], bytes] = os.urandom) -> tuple[ApiToken, str]:
    """Give a live token a new secret (same name and role); the old secret is refused from now.

    Returns the updated record and the new secret (shown once, never stored).
    ``NotFoundError(unknown_token)``, ``ConflictError(token_revoked)``.
    """
    secret = PREFIX + base64.urlsafe_b64encode(random(32)).decode().rstrip("=")
    digest = _hash(secret)
    with db.transaction() as tx:
        tx.rotate_token(name, digest)
        record = next(t for t in tx.list_tokens() if t.name == name)
        eventlog.record(tx, clock, TOKEN_ROTATED, actor=actor,
                        data={"name": name, "role": str(record.role)})
    return record, secret


def revoke_token(db: Database, clock: Clock, name: str, *, actor: str) -> None:
    """Revoke a token by name."""
    with db.transaction() as tx:
        tx.revoke_token(name, at=clock.now())
        eventlog.record(tx, clock, ev.TOKEN_REVOKED, actor=actor, data={"name": name})
