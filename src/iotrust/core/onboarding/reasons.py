"""Every reason code the onboarding protocol can return, with its meaning and HTTP status.

This is the single list: the services raise these, the API maps them to a status, and the table
in ``docs/protocol.md`` is rendered from :data:`REASONS` (a test keeps the two identical).

It does not decide anything itself; the decision functions live in
:mod:`iotrust.core.onboarding.server` and :mod:`iotrust.core.onboarding.device`.
"""

from __future__ import annotations

from dataclasses import dataclass

from iotrust.errors import InputError, TrustError

# --- refusals by the server (TrustError, HTTP 403 unless stated) -------------------------------
UNKNOWN_DEVICE = "unknown_device"
RETIRED = "retired"
VOUCHER_INVALID = "voucher_invalid"
VOUCHER_MISMATCH = "voucher_mismatch"
CHAIN_INVALID = "chain_invalid"
MANUFACTURER_REVOKED = "manufacturer_revoked"
WRONG_VENDOR_PRODUCT = "wrong_vendor_product"
CLONE_SUSPECTED = "clone_suspected"
RATE_LIMITED = "rate_limited"
NONCE_UNKNOWN = "nonce_unknown"
NONCE_EXPIRED = "nonce_expired"
NONCE_REPLAYED = "nonce_replayed"
SIGNATURE_INVALID = "signature_invalid"
CSR_INVALID = "csr_invalid"
# --- refusals by the device (raised by the device-side helpers, never sent on the wire) -------
OWNER_MISMATCH = "owner_mismatch"
CERTIFICATE_MISMATCH = "certificate_mismatch"
# --- malformed input (InputError, HTTP 422) ---------------------------------------------------
MALFORMED_REQUEST = "malformed_request"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason code: who raises it, the HTTP status it maps to, and what it means."""

    code: str
    http_status: int
    side: str  # "server" or "device"
    meaning: str


REASONS: dict[str, Reason] = {r.code: r for r in (
    Reason(UNKNOWN_DEVICE, 403, "server",
           "no device is expected under this serial (no voucher imported) and unsafe mode is off"),
    Reason(RETIRED, 403, "server",
           "the device is retired; every contact is refused and recorded as a zombie"),
    Reason(VOUCHER_INVALID, 403, "server",
           "the voucher is missing, badly signed, expired or names another owner"),
    Reason(VOUCHER_MISMATCH, 403, "server",
           "voucher, device record, hello and factory certificate disagree on serial, factory "
           "key, vendor or product"),
    Reason(CHAIN_INVALID, 403, "server",
           "the factory chain does not verify to the manufacturer's anchors (signature, validity, "
           "revocation, CRL, key type)"),
    Reason(MANUFACTURER_REVOKED, 403, "server", "the manufacturer's trust has been revoked"),
    Reason(WRONG_VENDOR_PRODUCT, 403, "server",
           "the factory certificate's vendor:product is not allowed for its manufacturer"),
    Reason(CLONE_SUSPECTED, 403, "server",
           "the factory key is bound to another device, the device already has a live session or "
           "is already onboarded, or the CSR key was seen before"),
    Reason(RATE_LIMITED, 429, "server",
           "too many onboarding attempts for this serial or source; retry later"),
    Reason(NONCE_UNKNOWN, 403, "server",
           "no session with this id, server nonce and serial (or device id) exists"),
    Reason(NONCE_EXPIRED, 403, "server",
           "the session's nonce (attest) or confirmation deadline (confirm) has passed"),
    Reason(NONCE_REPLAYED, 403, "server", "the nonce or the session step was already used"),
    Reason(SIGNATURE_INVALID, 403, "server",
           "the transcript signature does not verify with the expected key"),
    Reason(CSR_INVALID, 403, "server",
           "the CSR is malformed, fails proof of possession, has a weak key, or reuses the "
           "factory key"),
    Reason(OWNER_MISMATCH, 403, "device",
           "the issued chain does not end in the owner root pinned from the voucher"),
    Reason(CERTIFICATE_MISMATCH, 403, "device",
           "the issued certificate is not for the CSR key or does not name the device id"),
    Reason(MALFORMED_REQUEST, 422, "server",
           "the message is not valid JSON of the documented shape, sizes and encodings"),
)}


def refuse(reason: str, message: str, *, detail: str | None = None) -> TrustError:
    """Build the :class:`TrustError` for a documented refusal ``reason`` (raise it yourself)."""
    if reason not in REASONS or reason == MALFORMED_REQUEST:
        raise ValueError(f"not an onboarding refusal reason: {reason!r}")
    return TrustError(message, reason=reason, detail=detail)


def malformed(message: str) -> InputError:
    """Build the :class:`InputError` for a message that fails its parse boundary."""
    return InputError(message, reason=MALFORMED_REQUEST)


def render_reason_table() -> str:
    """The Markdown reason-code table embedded in ``docs/protocol.md``."""
    lines = ["| reason | HTTP | raised by | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r.code}` | {r.http_status} | {r.side} | {r.meaning} |"
              for r in REASONS.values()]
    return "\n".join(lines) + "\n"
