"""Dashboard sessions and CSRF tokens: HMAC-signed, expiring, stateless over the registry.

A session cookie is ``v1.<token name>.<expiry>.<nonce>.<mac>``: the operator token's *name*
(never the token), the Unix expiry, 16 random bytes and an HMAC-SHA256 over those fields **and the
token's stored hash**. Checking a session (:meth:`SessionKeys.verify`) needs the token row, so the
caller re-reads it on every request: a revoked token (or one re-created under the same name)
ends every session made from it at once.

CSRF protection is a synchronizer token derived from the session nonce (HMAC with a separate
key), compared in constant time. Before login there is no session, so the login form is tied to a
short-lived pre-login cookie the same way (login CSRF).

The key is 32 random bytes in ``DATA/dashboard-session.key`` (0600), made once by whichever worker
gets there first (written to a temporary file, then hard-linked into place, so no worker ever reads
half a key); every worker and every machine sharing the data folder shares it. Deleting the file
and restarting ends every session.

This module does not look tokens up, set cookies or speak HTTP: :mod:`iotrust.api.dashboard` does.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from iotrust.core.ids import SLUG_RE
from iotrust.errors import BackendError

KEY_FILE: Final = "dashboard-session.key"
KEY_BYTES: Final = 32
SESSION_TTL_S: Final = 8 * 3600
LOGIN_TTL_S: Final = 15 * 60
MAX_COOKIE: Final = 256
_VERSION: Final = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _mac(key: bytes, *parts: str) -> str:
    return _b64(hmac.new(key, "|".join(parts).encode("utf-8"), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Session:
    """A parsed, not yet verified, session cookie."""

    token_name: str
    expires: int
    nonce: str
    mac: str


class SessionKeys:
    """The dashboard's keys: one for session MACs, one for CSRF tokens (both from one secret)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError("the dashboard secret is 32 bytes")
        self._session = hmac.new(secret, b"iotrust-dashboard-session-v1", hashlib.sha256).digest()
        self._csrf = hmac.new(secret, b"iotrust-dashboard-csrf-v1", hashlib.sha256).digest()

    # -- sessions ------------------------------------------------------------------------------

    def issue(self, token_name: str, token_sha256: str, *, now: int,
              random: bytes | None = None) -> str:
        """A cookie value for a session of ``token_name`` expiring :data:`SESSION_TTL_S` later."""
        if not SLUG_RE.fullmatch(token_name):
            raise ValueError("token names are slugs")
        nonce = _b64(random if random is not None else os.urandom(16))
        expires = str(now + SESSION_TTL_S)
        mac = _mac(self._session, _VERSION, token_name, expires, nonce, token_sha256)
        return f"{_VERSION}.{token_name}.{expires}.{nonce}.{mac}"

    @staticmethod
    def parse(value: str | None) -> Session | None:
        """The fields of a cookie value, or ``None`` if it is not one of ours."""
        if not value or len(value) > MAX_COOKIE:
            return None
        version, _, rest = value.partition(".")
        parts = rest.rsplit(".", 3)
        if version != _VERSION or len(parts) != 4:  # noqa: PLR2004 - name, expiry, nonce, mac
            return None
        name, expires, nonce, mac = parts
        if not SLUG_RE.fullmatch(name) or not expires.isdigit() or len(expires) > 12:  # noqa: PLR2004
            return None
        return Session(token_name=name, expires=int(expires), nonce=nonce, mac=mac)

    def verify(self, session: Session, token_sha256: str, *, now: int) -> bool:
        """Whether ``session`` was issued by us for the token with this hash and is unexpired."""
        expected = _mac(self._session, _VERSION, session.token_name, str(session.expires),
                        session.nonce, token_sha256)
        return hmac.compare_digest(expected, session.mac) and now < session.expires

    # -- CSRF ----------------------------------------------------------------------------------

    def csrf_token(self, session: Session) -> str:
        """The synchronizer token of every form shown in ``session``."""
        return _mac(self._csrf, "session", session.nonce)

    def check_csrf(self, session: Session, presented: str | None) -> bool:
        """Whether ``presented`` is ``session``'s CSRF token (constant-time)."""
        return bool(presented) and hmac.compare_digest(
            self.csrf_token(session).encode(), (presented or "").encode("utf-8", "replace"))

    def login_nonce(self, *, now: int, random: bytes | None = None) -> str:
        """A pre-login cookie value: expiry and nonce."""
        return f"{now + LOGIN_TTL_S}.{_b64(random if random is not None else os.urandom(16))}"

    def login_csrf(self, login_cookie: str) -> str:
        """The login form's CSRF token for a pre-login cookie."""
        return _mac(self._csrf, "login", login_cookie)

    def check_login_csrf(self, login_cookie: str | None, presented: str | None, *,
                         now: int) -> bool:
        """Whether the login form's token matches its unexpired pre-login cookie."""
        if not login_cookie or not presented or len(login_cookie) > MAX_COOKIE:
            return False
        expires, _, _nonce = login_cookie.partition(".")
        if not expires.isdigit() or len(expires) > 12 or int(expires) <= now:  # noqa: PLR2004
            return False
        return hmac.compare_digest(self.login_csrf(login_cookie).encode(),
                                   presented.encode("utf-8", "replace"))


def load_or_create_secret(data_dir: Path) -> bytes:
    """The dashboard secret in ``data_dir`` (created 0600 if absent).

    ``BackendError(reason="insecure_key_file")`` if the file is readable by group or others or
    is not 32 bytes; ``BackendError(reason="key_file_unavailable")`` if it cannot be read/made.
    """
    path = data_dir / KEY_FILE
    try:
        if not path.exists():
            _create(path)
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise BackendError(f"{path} must be readable by its owner only (chmod 600)",
                               reason="insecure_key_file")
        secret = path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read or create the dashboard key ({exc.strerror})",
                           reason="key_file_unavailable") from None
    if len(secret) != KEY_BYTES:
        raise BackendError(f"{path} is not a dashboard key (32 bytes)",
                           reason="insecure_key_file")
    return secret


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic and exclusive: the first worker's key wins
    finally:
        Path(tmp).unlink(missing_ok=True)
