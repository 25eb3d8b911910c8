"""How the agent reaches the server: one small seam, retries, and the reply-to-error mapping.

* :class:`Transport` is the seam (like python-tuf's fetcher): ``post_json(path, body)`` sends one
  JSON body and returns ``(status, body)``; it raises
  :class:`~iotrust.errors.BackendError` (``network``) when no reply came. Tests plug an
  in-memory server in here.
* :func:`check_reply` turns a reply into the error tree: ``2xx`` passes, ``403``/``401`` become
  :class:`~iotrust.errors.TrustError` with the server's ``reason`` (a refusal), ``422`` and other
  ``4xx`` :class:`~iotrust.errors.InputError` (or ``NotFoundError``/``ConflictError``), ``5xx``
  and ``429`` :class:`~iotrust.errors.BackendError`. The server's ``{"error", "reason",
  "detail"}`` body is parsed with bounds and sanitised: it comes from an unauthenticated peer
  and ends up on a terminal.
* :class:`RetryingTransport` wraps any transport and :class:`HttpTransport` (httpx) retries the
  same way (:class:`RetryPolicy`): on network errors, ``502``/``503``/``504`` and ``429`` (whose
  ``Retry-After`` is honoured up to a bound), with exponential backoff and injected jitter and
  sleep — and **never** on a refusal (any other ``4xx``): a refused device must not hammer the
  server, and retrying would not change the verdict.

A retry after a request that did reach the server can meet the protocol's single-use rules (a
second hello while the first session is live is ``clone_suspected``, a second attest is
``nonce_replayed``); those are refusals and end the attempt. Starting over once the session has
expired (at most 60 s) is the operator's call.

This module knows nothing about onboarding messages and keeps no state between calls.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, Self

import httpx

from iotrust.errors import (
    BackendError,
    ConflictError,
    InputError,
    IotrustError,
    NotFoundError,
    TrustError,
)

#: The reason of a :class:`BackendError` raised when no reply came (connect, TLS, timeout).
NETWORK: Final = "network"
#: Statuses worth another attempt (the server or a proxy is overloaded or restarting).
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
#: Largest reply body read (the largest onboarding message is 256 KiB).
MAX_REPLY_BYTES: Final = 512 * 1024
#: Largest error body parsed, and longest server ``detail`` shown to a human.
MAX_ERROR_BODY_BYTES: Final = 4096
MAX_DETAIL_CHARS: Final = 300

_REASON_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HTTP_OK_LOW, _HTTP_OK_HIGH = 200, 299
_HTTP_CLIENT_ERROR, _HTTP_SERVER_ERROR = 400, 500


class Transport(Protocol):
    """One POST of a JSON body to a path of the server.

    Returns the HTTP status and the reply body, whatever the status. Raises
    :class:`~iotrust.errors.BackendError` with reason :data:`NETWORK` when no reply arrived.
    Implementations may retry and may raise the error :func:`check_reply` gives for a final
    non-success reply.
    """

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send ``body`` (UTF-8 JSON) to ``path``; return ``(status, reply body)``."""
        ...


# --- replies -----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Printable, single-line, bounded: safe to print on a terminal."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(flat.split())[:MAX_DETAIL_CHARS]


def _error_body(body: bytes) -> tuple[str | None, str | None]:
    """The ``reason`` and ``detail`` of an error body, if it has a usable shape."""
    if len(body) > MAX_ERROR_BODY_BYTES:
        return None, None
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    reason = obj.get("reason")
    detail = obj.get("detail")
    good_reason = reason if isinstance(reason, str) and _REASON_RE.fullmatch(reason) else None
    good_detail = _clean(detail) if isinstance(detail, str) else None
    return good_reason, good_detail


#: Non-success statuses with an error class and the reason used when the body names none.
_STATUS_ERRORS: Final[dict[int, tuple[type[IotrustError], str]]] = {
    401: (TrustError, "refused"),
    403: (TrustError, "refused"),
    404: (NotFoundError, "not_found"),
    409: (ConflictError, "conflict"),
    429: (BackendError, "rate_limited"),
}


def reply_error(status: int, body: bytes) -> IotrustError:
    """The error a non-success reply stands for (see the module docstring)."""
    reason, detail = _error_body(body)
    text = detail or f"the server answered HTTP {status}"
    if status in _STATUS_ERRORS:
        cls, default = _STATUS_ERRORS[status]
    elif _HTTP_CLIENT_ERROR <= status < _HTTP_SERVER_ERROR:
        cls, default = InputError, "invalid_input"
    elif status >= _HTTP_SERVER_ERROR:
        cls, default = BackendError, "server_unavailable"
    else:
        return BackendError(f"unexpected HTTP status {status}", reason="unexpected_status")
    return cls(text, reason=reason or default)


def check_reply(status: int, body: bytes) -> bytes:
    """Return ``body`` of a ``2xx`` reply; raise :func:`reply_error` for anything else."""
    if _HTTP_OK_LOW <= status <= _HTTP_OK_HIGH:
        return body
    raise reply_error(status, body)


# --- retries -----------------------------------------------------------------------------------


def full_jitter(delay: float) -> float:
    """The default jitter: a uniformly random delay in ``[delay / 2, delay]``."""
    return secrets.SystemRandom().uniform(delay / 2, delay)


def no_jitter(delay: float) -> float:
    """Deterministic delays, for tests."""
    return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry (delays in seconds).

    Attempt ``k`` (0-based) that failed waits ``min(backoff_max, backoff_initial * 2**k)``
    passed through the jitter, or the server's ``Retry-After`` capped at ``retry_after_max``.
    """

    retries: int = 5
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    retry_after_max: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not 0 <= self.retries <= 100:  # noqa: PLR2004
            raise ValueError("retries must be 0..100")
        if not 0 < self.backoff_initial <= self.backoff_max <= 3600:  # noqa: PLR2004
            raise ValueError("need 0 < backoff_initial <= backoff_max <= 3600")
        if not 0 <= self.retry_after_max <= 3600:  # noqa: PLR2004
            raise ValueError("retry_after_max must be 0..3600")

    def delay(self, attempt: int, retry_after: float | None,
              jitter: Callable[[float], float]) -> float:
        """How long to wait after failed attempt number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        return jitter(min(self.backoff_max, self.backoff_initial * 2 ** min(attempt, 32)))


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    retry_after: float | None = None


def _with_retries(send: Callable[[], _Reply], policy: RetryPolicy,
                  sleep: Callable[[float], None], jitter: Callable[[float], float],
                  ) -> tuple[int, bytes]:
    """Run ``send`` until a final reply; return it if it is a success, else raise its error."""
    attempt = 0
    while True:
        last = attempt >= policy.retries
        try:
            reply = send()
        except BackendError as exc:
            if exc.reason != NETWORK or last:
                raise
            sleep(policy.delay(attempt, None, jitter))
            attempt += 1
            continue
        if reply.status in RETRY_STATUSES and not last:
            sleep(policy.delay(attempt, reply.retry_after, jitter))
            attempt += 1
            continue
        return reply.status, check_reply(reply.status, reply.body)


class RetryingTransport:
    """Any :class:`Transport`, retried under a :class:`RetryPolicy`; final errors raised."""

    def __init__(self, inner: Transport, *, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float], float] = full_jitter) -> None:
        self._inner = inner
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send with retries; return a success reply or raise its error."""
        def send() -> _Reply:
            status, reply = self._inner.post_json(path, body)
            return _Reply(status, reply)
        return _with_retries(send, self._policy, self._sleep, self._jitter)


# --- HTTP --------------------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in delta-seconds; an HTTP date or garbage is ignored (backoff applies)."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > 6:  # noqa: PLR2004
        return None
    return float(int(value.strip()))


def _tls_failure(exc: BaseException) -> bool:
    """Whether a certificate verification failure lies behind ``exc``."""
    seen: BaseException | None = exc
    for _ in range(8):  # a bounded walk down the exception chain
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _verify(verify: bool | str) -> bool | ssl.SSLContext:
    if verify is True or verify is False:
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot use the CA bundle {verify!r}: {exc}",
                         reason="ca_bundle_unusable") from None


class HttpTransport:
    """The server over HTTP(S) with httpx, with retries (:class:`RetryPolicy`).

    ``verify``: ``True`` checks the server's TLS certificate against the system roots, a path
    checks it against that PEM bundle, ``False`` does not check it at all (the first-contact
    case: a device cannot know its owner's TLS root before onboarding; the voucher's owner pin
    is what protects the credential it receives, see ``docs/protocol.md`` §6).

    ``http_transport`` replaces httpx's network layer (``httpx.MockTransport`` in tests).
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0, verify: bool | str = True,
                 policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[float], float] = full_jitter,
                 http_transport: httpx.BaseTransport | None = None) -> None:
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError):
            raise InputError(f"not a server URL: {base_url!r:.200}", reason="invalid_url") from None
        if url.scheme not in {"http", "https"} or not url.host:
            raise InputError(f"the server URL must be http(s)://host[:port]: {base_url!r:.200}",
                             reason="invalid_url")
        if not 0 < timeout <= 600:  # noqa: PLR2004
            raise ValueError("timeout must be 0..600 seconds")
        self._base = str(url).rstrip("/")
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter
        self._client = httpx.Client(timeout=timeout, verify=_verify(verify),
                                    follow_redirects=False, transport=http_transport,
                                    headers={"Accept": "application/json"})

    @property
    def base_url(self) -> str:
        """The server's base URL (no trailing slash)."""
        return self._base

    def _send_once(self, path: str, body: bytes) -> _Reply:
        try:
            with self._client.stream(
                "POST", self._base + path, content=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_REPLY_BYTES:
                        raise InputError(f"the server's reply exceeds {MAX_REPLY_BYTES} bytes",
                                         reason="reply_too_large")
                return _Reply(response.status_code, bytes(data),
                              _retry_after(response.headers.get("Retry-After")))
        except httpx.TransportError as exc:
            if _tls_failure(exc):
                # A TLS certificate that does not verify will not verify on the next attempt.
                raise BackendError(f"the TLS certificate of {self._base} does not verify: "
                                   f"{_clean(str(exc))}", reason="tls_verify_failed") from None
            raise BackendError(f"cannot reach {self._base}: {type(exc).__name__} "
                               f"{_clean(str(exc))}".rstrip(), reason=NETWORK) from None

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST with retries; return a success reply or raise its error (see the module)."""
        if not path.startswith("/"):
            raise ValueError("paths start with '/'")
        return _with_retries(lambda: self._send_once(path, body), self._policy, self._sleep,
                             self._jitter)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
