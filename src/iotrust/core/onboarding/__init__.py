"""The onboarding protocol core (DESIGN.md §6, wire format in ``docs/protocol.md``): sans-I/O.

Three proofs, all required: genuine hardware (the factory chain), expected device (a voucher
naming this serial and this factory key) and fresh possession (the factory key signs a transcript
over a single-use server nonce). Then the device proves use of its new operational key (confirm).

* :mod:`.messages` — the five wire messages, one parse boundary each;
* :mod:`.transcript` — the signed byte strings (deterministic CBOR);
* :mod:`.server` — the server's decision functions (``check_hello``, ``new_session``,
  ``check_attest``, ``check_confirm``);
* :mod:`.device` — the device's builders and checks (voucher owner pinning);
* :mod:`.reasons` — every reason code with its meaning and HTTP status.

Nothing here reads a clock, draws randomness, stores, looks up or sends anything: time,
randomness and stored facts are arguments; the services and the agent do the I/O.
"""

from __future__ import annotations

from iotrust.core.onboarding.device import (
    DeviceSession,
    Onboarded,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.core.onboarding.messages import (
    PROTOCOL_VERSION,
    AttestRequest,
    AttestResponse,
    Broker,
    ConfirmRequest,
    HelloRequest,
    HelloResponse,
)
from iotrust.core.onboarding.reasons import REASONS, Reason
from iotrust.core.onboarding.server import (
    MAX_SESSION_TTL_SECONDS,
    AttestDecision,
    ConfirmDecision,
    HelloDecision,
    ManufacturerTrust,
    NewSession,
    check_attest,
    check_confirm,
    check_hello,
    hello_response,
    new_session,
    nonce_sha256,
    precheck_attest,
    session_record_id,
)
from iotrust.core.onboarding.transcript import (
    ATTEST_CONTEXT,
    CONFIRM_CONTEXT,
    attest_transcript,
    confirm_transcript,
)

__all__ = [
    "ATTEST_CONTEXT",
    "CONFIRM_CONTEXT",
    "MAX_SESSION_TTL_SECONDS",
    "PROTOCOL_VERSION",
    "REASONS",
    "AttestDecision",
    "AttestRequest",
    "AttestResponse",
    "Broker",
    "ConfirmDecision",
    "ConfirmRequest",
    "DeviceSession",
    "HelloDecision",
    "HelloRequest",
    "HelloResponse",
    "ManufacturerTrust",
    "NewSession",
    "Onboarded",
    "Reason",
    "accept_attest_response",
    "accept_hello_response",
    "attest_transcript",
    "build_attest",
    "build_confirm",
    "build_hello",
    "check_attest",
    "check_confirm",
    "check_hello",
    "confirm_transcript",
    "hello_response",
    "new_session",
    "nonce_sha256",
    "precheck_attest",
    "session_record_id",
]
