"""Onboarding, device side, from the minted device folder to a saved state (DESIGN.md §6).

:func:`onboard` runs the whole first contact over a :class:`~.transport.Transport`:

1. read the factory identity the device shipped with (:func:`read_device_folder`: the factory
   certificate, its issuing chain, the manufacturer root(s), ``device.json``) and open the
   factory key;
2. **hello** — stating the device's key storage (``file`` or ``pkcs11``, from the factory key's
   reference; the factory key signs it again in the attest) — then verify the voucher the
   server returns against the *shipped* manufacturer root and check it names this device and
   this factory key; pin the owner it names;
3. make a **new** operational key in the device's own kind of key store and a CSR for it;
4. **attest** — sign the transcript with the factory key; verify the reply: the certificate is
   for the CSR key and names the device id, and its chain ends in the pinned owner root
   (``owner_mismatch`` otherwise: a rogue server cannot capture the device);
5. save the state as *unconfirmed*, **confirm** with the operational key, save it confirmed.

All checks are the core's (:mod:`iotrust.core.onboarding.device`); this module only does the I/O
around them. Time and randomness are injected. A refusal (by the server or by the device's own
checks) ends the attempt at once and is never retried; only the transport retries, and only
failures to get an answer.

This module does not run the device afterwards (telemetry, updates, rotation).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.agent import keys
from iotrust.agent.state import (
    AgentState,
    ensure_state_dir,
    has_state,
    load_state,
    pem_chain,
    save_state,
)
from iotrust.agent.transport import Transport, check_reply
from iotrust.core import pki
from iotrust.core.ids import SERIAL_RE
from iotrust.core.onboarding import (
    AttestResponse,
    HelloResponse,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.errors import ConflictError, InputError, NotFoundError
from iotrust.ports import Signer

HELLO_PATH: Final = "/v1/onboarding/hello"
ATTEST_PATH: Final = "/v1/onboarding/attest"
CONFIRM_PATH: Final = "/v1/onboarding/confirm"

DEVICE_FILE: Final = "device.json"
FACTORY_CERTIFICATE_FILE: Final = "factory.crt.pem"
FACTORY_CHAIN_FILE: Final = "chain.pem"
MANUFACTURER_ROOT_FILE: Final = "manufacturer-root.pem"
MAX_DEVICE_FILE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class FactoryIdentity:
    """What a device ships with: its serial, factory chain, manufacturer roots and key reference."""

    serial: str
    manufacturer: str
    factory_certificate: x509.Certificate
    factory_chain: tuple[bytes, ...]  # DER, leaf first, then the issuing CA(s); no root
    manufacturer_roots: tuple[x509.Certificate, ...]
    key_ref: str


def _read(path: Path, limit: int = MAX_DEVICE_FILE_BYTES) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{str(path)!r} is missing: not a minted device folder",
                            reason="no_device_folder") from None
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror}",
                         reason="device_folder_unreadable") from None
    if len(data) > limit:
        raise InputError(f"{str(path)!r} is too large", reason="device_folder_damaged")
    return data


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def read_device_folder(device_dir: Path) -> FactoryIdentity:
    """Read a minted device folder (the layout ``iotrust factory mint`` writes).

    Raises:
        NotFoundError: ``no_device_folder``.
        InputError: ``device_folder_damaged`` (unparsable files, a ``device.json`` that
            disagrees with the factory certificate), ``device_folder_unreadable``.
    """
    try:
        info = json.loads(_read(device_dir / DEVICE_FILE).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{DEVICE_FILE} is not JSON", reason="device_folder_damaged") from exc
    if not isinstance(info, dict) or not all(
            isinstance(info.get(k), str) for k in ("serial", "manufacturer", "key_ref")):
        raise InputError(f"{DEVICE_FILE} lacks serial, manufacturer or key_ref",
                         reason="device_folder_damaged")
    try:
        leaf = pki.load_certificate(_read(device_dir / FACTORY_CERTIFICATE_FILE))
        chain = pki.load_certificates(_read(device_dir / FACTORY_CHAIN_FILE))
        roots = pki.load_certificates(_read(device_dir / MANUFACTURER_ROOT_FILE))
        identity = pki.read_factory_identity(leaf)
    except InputError as exc:
        raise InputError(f"the factory certificates in {str(device_dir)!r} do not parse: "
                         f"{exc.message}", reason="device_folder_damaged") from exc
    serial = info["serial"]
    if not SERIAL_RE.fullmatch(serial) or identity.serial != serial \
            or identity.manufacturer != info["manufacturer"]:
        raise InputError(f"{DEVICE_FILE} and the factory certificate disagree",
                         reason="device_folder_damaged")
    root_spkis = {pki.spki_sha256(r.public_key()) for r in roots}
    intermediates = tuple(_der(c) for c in chain
                          if pki.spki_sha256(c.public_key()) not in root_spkis)
    return FactoryIdentity(serial=serial, manufacturer=info["manufacturer"],
                           factory_certificate=leaf, factory_chain=(_der(leaf), *intermediates),
                           manufacturer_roots=tuple(roots), key_ref=info["key_ref"])


def _post(transport: Transport, path: str, body: bytes) -> bytes:
    status, reply = transport.post_json(path, body)
    return check_reply(status, reply)


def _check_factory_key(signer: Signer, identity: FactoryIdentity) -> None:
    if pki.spki_sha256(signer.public_key) != pki.spki_sha256(
            identity.factory_certificate.public_key()):
        raise InputError("the factory key does not match the factory certificate",
                         reason="factory_key_mismatch")


def onboard(device_dir: Path, state_dir: Path, transport: Transport, *,
            now: Callable[[], datetime], random: Callable[[int], bytes],
            server_url: str = "", pin: str | None = None) -> AgentState:
    """Onboard the device in ``device_dir``; save and return its state in ``state_dir``.

    ``server_url`` is only recorded in the state; ``pin`` is the PKCS#11 user PIN (default:
    ``IOTRUST_PKCS11_PIN``).

    Raises:
        ConflictError: ``already_onboarded`` — ``state_dir`` holds a confirmed state.
        TrustError: a refusal, by the server (its reason: ``unknown_device``,
            ``clone_suspected`` ...) or by the device's own checks (``voucher_invalid``,
            ``voucher_mismatch``, ``owner_mismatch``, ``certificate_mismatch``,
            ``chain_invalid``). Never retried.
        BackendError: the server could not be reached or failed, after the transport's
            retries; or the key store failed.
        InputError, NotFoundError: the device folder, the key store or a server reply is
            unusable.
    """
    if has_state(state_dir) and load_state(state_dir).confirmed:
        raise ConflictError(f"{str(state_dir)!r} already holds an onboarded device",
                            reason="already_onboarded")
    identity = read_device_folder(device_dir)
    ensure_state_dir(state_dir)
    factory = keys.open_factory_signer(identity.key_ref, device_dir, pin=pin)
    operational: keys.OperationalKey | None = None
    try:
        _check_factory_key(factory, identity)
        storage = keys.key_storage(identity.key_ref)
        hello = build_hello(serial=identity.serial, factory_chain=identity.factory_chain,
                            random=random, key_storage=storage)
        hello_resp = HelloResponse.from_wire(_post(transport, HELLO_PATH, hello.to_wire()))
        session = accept_hello_response(hello_resp, hello=hello,
                                        manufacturer_anchors=identity.manufacturer_roots,
                                        now=now())
        # The server accepted a hello, so no confirmed credential uses a key left behind.
        if storage == keys.FILE_STORAGE:
            keys.discard_unconfirmed_file_key(state_dir)
        operational = keys.create_operational_key(identity.key_ref, state_dir, identity.serial,
                                                  pin=pin)
        csr = pki.build_csr(operational.signer).public_bytes(Encoding.DER)
        attest = build_attest(session, factory_signer=factory, csr_der=csr)
        attest_resp = AttestResponse.from_wire(_post(transport, ATTEST_PATH, attest.to_wire()))
        onboarded = accept_attest_response(attest_resp, session=session,
                                           csr_public_key=operational.signer.public_key,
                                           now=now())
        confirm = build_confirm(session, onboarded, operational_signer=operational.signer)
        state = AgentState(
            device_id=onboarded.device_id, serial=identity.serial,
            manufacturer=identity.manufacturer, owner=session.owner,
            owner_spki_sha256=session.owner_spki_sha256, server_id=session.server_id,
            server_url=server_url, operational_key_ref=operational.key_ref,
            key_storage=operational.key_storage,
            certificate_pem=onboarded.certificate.public_bytes(Encoding.PEM),
            ca_chain_pem=pem_chain(onboarded.ca_chain), broker_host=onboarded.broker.host,
            broker_port=onboarded.broker.port, update_root=onboarded.update_root,
            policy=onboarded.policy, onboarded_at=now().replace(microsecond=0),
            confirm_by=onboarded.confirm_by, confirmed=False)
        save_state(state_dir, state)  # unconfirmed: what the device holds if confirm is lost
        _post(transport, CONFIRM_PATH, confirm.to_wire())
        confirmed = dataclasses.replace(state, confirmed=True)
        save_state(state_dir, confirmed)
        return confirmed
    finally:
        keys.close_signer(factory)
        if operational is not None:
            keys.close_signer(operational.signer)

