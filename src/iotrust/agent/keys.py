"""The device's key stores, as the agent uses them: open the factory key, make the operational key.

Two stores, named by the key reference the factory recorded in the device folder's
``device.json`` (``key_ref``):

* ``devfile:`` — an unencrypted key file (:class:`~iotrust.adapters.keys.DeviceFileKey`), for
  development only: anyone who can read the file owns the device. The agent records
  ``key_storage: "file"`` and states it in its onboarding hello; the server records it on the
  device and the posture audit flags such devices as weak key storage.
  The operational key is ``<state>/operational.key.pem`` (mode 0600).
* ``pkcs11:`` — a key on a PKCS#11 token (:class:`~iotrust.adapters.keys.Pkcs11Signer`: secure
  element, TPM, HSM; SoftHSM2 in tests). The key is generated on the token, sensitive and not
  extractable; only signatures leave it. The operational key goes on the same token, labelled
  ``ldevid-<serial>-<n>`` (``n`` the first free number: an interrupted attempt leaves its key
  behind, and PKCS#11 labels are never reused). The PIN comes from ``IOTRUST_PKCS11_PIN``.
  The hello states ``key_storage: "pkcs11"``; the server records it only as far as the device
  model's hardware profile backs it.

The operational key always lives in the same kind of store as the factory key: a device with a
secure element does not put its operational key in a file.

This module does not talk to the server and does not decide anything about trust.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from iotrust.adapters.keys import (
    DeviceFileKey,
    KeyRef,
    KeyRefKind,
    Pkcs11Signer,
    open_signer,
    parse_key_ref,
    pin_from_environment,
)
from iotrust.core.lifecycle import KeyStorage
from iotrust.errors import ConflictError, InputError, IotrustError
from iotrust.ports import Signer

OPERATIONAL_KEY_FILE: Final = "operational.key.pem"
#: How many ``ldevid-<serial>-<n>`` labels are tried before giving up.
MAX_PKCS11_LABEL_ATTEMPTS: Final = 64

#: The ``key_storage`` values the agent records (as :class:`~iotrust.core.lifecycle.KeyStorage`).
FILE_STORAGE: Final = KeyStorage.FILE.value
PKCS11_STORAGE: Final = KeyStorage.PKCS11.value


@dataclass(frozen=True, slots=True)
class OperationalKey:
    """A freshly made operational key: its signer, its reference and the kind of storage."""

    signer: Signer
    key_ref: str
    key_storage: str


def key_storage(ref: str | KeyRef) -> str:
    """The ``key_storage`` a key reference stands for (``file`` or ``pkcs11``).

    Raises:
        InputError: ``invalid_key_ref``, or ``unsupported_key_store`` for an encrypted
            ``file:`` key (a trust-domain store, not a device one).
    """
    key_ref = ref if isinstance(ref, KeyRef) else parse_key_ref(ref)
    if key_ref.kind is KeyRefKind.DEVFILE:
        return FILE_STORAGE
    if key_ref.kind is KeyRefKind.PKCS11:
        return PKCS11_STORAGE
    raise InputError("a device key is a devfile: or pkcs11: key", reason="unsupported_key_store")


def _devfile_path(key_ref: KeyRef, device_dir: Path) -> Path:
    """A minted device folder is self-contained: look for the key next to ``device.json`` first.

    The factory records the path it wrote, which may be relative to where it ran or point into
    a folder since moved; a file of the same name in ``device_dir`` wins.
    """
    recorded = Path(key_ref.path or "")
    local = device_dir / recorded.name
    return local if local.is_file() else recorded


def open_factory_signer(ref: str, device_dir: Path, *, pin: str | None = None) -> Signer:
    """Open the device's factory key named by ``device.json``'s ``key_ref``.

    Raises:
        InputError: ``invalid_key_ref``, ``unsupported_key_store`` and the key store's own
            reasons (``key_file_unreadable``, ``pin_missing``, ``bad_pin`` ...).
        NotFoundError, BackendError: from the key store.
    """
    key_ref = parse_key_ref(ref)
    key_storage(key_ref)
    if key_ref.kind is KeyRefKind.DEVFILE:
        return DeviceFileKey.load(_devfile_path(key_ref, device_dir))
    return open_signer(key_ref, pin=pin)


def open_operational_signer(ref: str, *, pin: str | None = None) -> Signer:
    """Open the operational key an onboarded agent recorded."""
    key_ref = parse_key_ref(ref)
    key_storage(key_ref)
    return open_signer(key_ref, pin=pin)


def create_operational_key(factory_ref: str, state_dir: Path, serial: str, *,
                           pin: str | None = None) -> OperationalKey:
    """Make a new operational key in the same kind of store as the factory key.

    ``devfile``: ``state_dir/operational.key.pem``; a file left there by an attempt that never
    confirmed must have been removed by the caller (:func:`discard_unconfirmed_file_key`).
    ``pkcs11``: the first free label ``ldevid-<serial>-<n>`` on the factory key's token.

    Raises:
        ConflictError: ``key_exists`` (devfile), ``key_labels_exhausted`` (pkcs11).
        InputError, BackendError: from the key store.
    """
    key_ref = parse_key_ref(factory_ref)
    storage = key_storage(key_ref)
    if key_ref.kind is KeyRefKind.DEVFILE:
        path = state_dir / OPERATIONAL_KEY_FILE
        signer = DeviceFileKey.generate(path)
        return OperationalKey(signer, str(KeyRef.device_file(path)), storage)
    module, token = key_ref.module or "", key_ref.token or ""
    secret = pin if pin is not None else pin_from_environment()
    for n in range(1, MAX_PKCS11_LABEL_ATTEMPTS + 1):
        label = f"ldevid-{serial}-{n}"
        try:
            p11 = Pkcs11Signer.generate(module, token, secret, label)
        except ConflictError as exc:
            if exc.reason == "key_exists":
                continue
            raise
        return OperationalKey(p11, str(KeyRef.pkcs11(module, token, label)), storage)
    raise ConflictError(f"labels ldevid-{serial}-1..{MAX_PKCS11_LABEL_ATTEMPTS} are all taken "
                        "on the token", reason="key_labels_exhausted")


def discard_unconfirmed_file_key(state_dir: Path) -> bool:
    """Remove ``operational.key.pem`` left by an attempt that never confirmed; True if removed.

    Only call this once the server has accepted a new hello: it answers ``clone_suspected`` to
    an onboarded device, so an accepted hello proves no confirmed credential uses that key.
    """
    path = state_dir / OPERATIONAL_KEY_FILE
    if not path.is_file():
        return False
    path.unlink()
    return True


def close_signer(signer: Signer) -> None:
    """Release a signer's key-store resources (a PKCS#11 session), if it holds any."""
    close = getattr(signer, "close", None)
    if callable(close):
        with contextlib.suppress(IotrustError):  # closing must not mask the caller's outcome
            close()
