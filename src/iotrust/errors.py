"""The one exception tree of iotrust.

Every failure that a user, an operator or a device can cause is an :class:`IotrustError`. Each edge
maps the tree once: the HTTP API to a status code and ``{"error", "reason", "detail"}``, the CLI to
an exit code and a message. Programming mistakes (wrong call order, wrong types) are *not* part of
this tree: they are ``TypeError`` / ``RuntimeError`` and surface as bugs.

This module does not log and does not format for a terminal.
"""

from __future__ import annotations

from typing import ClassVar


class IotrustError(Exception):
    """Root of every expected failure.

    Args:
        message: one sentence for a human, never containing a secret.
        reason: a stable, machine-readable code (``snake_case``), defaulting to the class's.
        detail: optional extra context for a human.
    """

    default_reason: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(
        self, message: str, *, reason: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.detail = detail

    def diagnostics(self) -> str:
        """The user-facing explanation: message, reason code and detail."""
        text = f"{self.message} [{self.reason}]"
        if self.detail:
            text += f"\n{self.detail}"
        return text

    def as_dict(self) -> dict[str, str | None]:
        """The wire form used by the HTTP API and ``--json`` output."""
        return {"error": type(self).__name__, "reason": self.reason, "detail": self.message}


class InputError(IotrustError):
    """Malformed, oversized or otherwise unacceptable input (HTTP 422, exit 65)."""

    default_reason = "invalid_input"
    http_status = 422
    exit_code = 65


class NotFoundError(IotrustError):
    """A named thing does not exist (HTTP 404, exit 66)."""

    default_reason = "not_found"
    http_status = 404
    exit_code = 66


class ConflictError(IotrustError):
    """The request conflicts with current state: duplicate, illegal transition (409, exit 67)."""

    default_reason = "conflict"
    http_status = 409
    exit_code = 67


class TrustError(IotrustError):
    """A trust decision refused a device or an operator (HTTP 403, exit 77).

    ``reason`` is always one of the documented refusal codes (``unknown_device``,
    ``nonce_replayed``, ``clone_suspected``, ``retired`` ...).
    """

    default_reason = "refused"
    http_status = 403
    exit_code = 77


class AuthError(TrustError):
    """An operator is not authenticated or lacks the role (HTTP 401/403, exit 77)."""

    default_reason = "unauthenticated"
    http_status = 401


class BackendError(IotrustError):
    """A backing system (database, broker, key store) failed or is unreachable (503, exit 69)."""

    default_reason = "backend_unavailable"
    http_status = 503
    exit_code = 69


#: Exit codes of the ``iotrust`` CLI, documented in the README.
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": IotrustError.exit_code,
    "usage": 2,
    "input": InputError.exit_code,
    "not_found": NotFoundError.exit_code,
    "conflict": ConflictError.exit_code,
    "backend": BackendError.exit_code,
    "refused": TrustError.exit_code,
}
