"""Safe defaults checked before the service starts: the profile, the transport, the CA keys.

Two profiles: ``development`` (the default: ``iotrust run`` / ``make run`` on plain HTTP on
loopback) and ``production`` (``IOTRUST_PROFILE=production`` or ``iotrust serve --production``).

* In production the API (device endpoints included) is served only over TLS
  (``--tls-cert``/``--tls-key``); plain HTTP is refused with ``plain_http_refused`` unless the
  operator says ``--unsafe-plain-http`` (a TLS-terminating proxy in front, for example).
* In every profile the service refuses to start when a CA key would be usable without a secret
  kept elsewhere: a ``devfile:`` reference or a ``file:`` key whose PEM is not encrypted
  (``unencrypted_ca_key``), and in production a development passphrase file next to the keys
  (``DATA/passphrase``, ``development_passphrase``). ``--unsafe-unencrypted-ca-key`` overrides
  both; the encrypted-file key store still refuses to sign with a plaintext ``file:`` key.

This module reads key-file headers (never the keys), does not start anything and never logs.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iotrust.adapters.keys.refs import KeyRefKind, parse_key_ref
from iotrust.adapters.sql.store import Database
from iotrust.errors import InputError, TrustError
from iotrust.services.settings import Settings

PROFILE_ENV = "IOTRUST_PROFILE"
_HEAD_BYTES = 64
_PLAINTEXT_HEADERS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----")


class Profile(enum.StrEnum):
    """How strict the service's defaults are."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"

    @classmethod
    def resolve(cls, *, production: bool = False,
                env: Mapping[str, str] | None = None) -> Profile:
        """``production`` if asked for on the command line, else ``IOTRUST_PROFILE``."""
        if production:
            return cls.PRODUCTION
        value = (os.environ if env is None else env).get(PROFILE_ENV, "").strip().lower()
        if not value:
            return cls.DEVELOPMENT
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"{PROFILE_ENV} must be development or production",
                             reason="invalid_profile") from None


@dataclass(frozen=True, slots=True)
class StartupOptions:
    """What the operator asked for when starting the service."""

    profile: Profile
    tls_cert: Path | None = None
    tls_key: Path | None = None
    unsafe_plain_http: bool = False
    unsafe_unencrypted_ca_key: bool = False

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InputError("--tls-cert and --tls-key go together", reason="tls_incomplete")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise InputError(f"no such file: {path}", reason="tls_file_missing")

    @property
    def tls(self) -> bool:
        """Whether the service will speak TLS itself."""
        return self.tls_cert is not None


def check_transport(options: StartupOptions) -> None:
    """Refuse plain HTTP in production unless explicitly unsafe."""
    if options.profile is Profile.PRODUCTION and not options.tls \
            and not options.unsafe_plain_http:
        raise TrustError("the production profile serves device endpoints over TLS only: pass "
                         "--tls-cert and --tls-key (or --unsafe-plain-http behind a TLS proxy)",
                         reason="plain_http_refused")


def unprotected_ca_keys(db: Database) -> list[str]:
    """The ids of non-retired CAs whose key is usable without a secret (see module doc)."""
    with db.transaction(readonly=True) as tx:
        cas = [c for c in tx.list_cas() if c.state != "retired"]
    found: list[str] = []
    for ca in cas:
        ref = parse_key_ref(ca.key_ref)
        plaintext_file = ref.kind is KeyRefKind.FILE and ref.path is not None \
            and _plaintext_pem(Path(ref.path))
        if ref.kind is KeyRefKind.DEVFILE or plaintext_file:
            found.append(ca.id)
    return found


def _plaintext_pem(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES).lstrip()
    except OSError:
        return False  # an offline (exported) key: nothing online to protect
    return head.startswith(_PLAINTEXT_HEADERS)


def check_ca_keys(db: Database, settings: Settings, options: StartupOptions) -> None:
    """Refuse to start with CA keys usable without a secret kept elsewhere."""
    if options.unsafe_unencrypted_ca_key:
        return
    bare = unprotected_ca_keys(db)
    if bare:
        raise TrustError(f"CA key(s) stored unencrypted: {', '.join(bare)}; re-create them "
                         "encrypted or in PKCS#11 (or pass --unsafe-unencrypted-ca-key)",
                         reason="unencrypted_ca_key")
    if options.profile is Profile.PRODUCTION and (settings.data_dir / "passphrase").exists():
        raise TrustError("a development passphrase file sits next to the CA keys "
                         f"({settings.data_dir / 'passphrase'}); move it out and set "
                         "IOTRUST_PASSPHRASE_FILE (or pass --unsafe-unencrypted-ca-key)",
                         reason="development_passphrase")


def check_startup(db: Database, settings: Settings, options: StartupOptions) -> None:
    """Every check, transport first."""
    check_transport(options)
    check_ca_keys(db, settings, options)
