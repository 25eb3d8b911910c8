"""What the server records of a device's key-storage claim: never more than its hardware allows.

A device states in its hello where its keys live (``HelloRequest.key_storage``). The statement is
signed (it is part of the attest transcript), so nobody can change it in flight, but it is still
only the device's word: firmware that is wrong or lies about its key store must not make the
fleet look stronger than it is. So the claim can only ever *lower* what the registry believes:

* no claim → ``unknown``;
* with a hardware profile for the device's model: the claim when the profile can hold it
  (:data:`PROFILE_ALLOWS`); otherwise the weaker of the two — the profile's own storage when it
  is weaker than the claim (``secure_element`` claimed on a ``software`` profile → ``software``),
  and ``unknown`` when they are different protected kinds (``tpm`` claimed on a
  ``secure_element`` profile) or the profile's storage has no device-record equivalent;
* without a hardware profile (no model, or a model without one) nothing backs a claim, so only
  the claims no stronger than ``unknown`` for the posture audit are kept as stated (``none``,
  ``file``); anything stronger is recorded as ``unknown`` (fail closed, as a model without a
  profile is barred from sensitive topics).

Recording the weaker value rather than refusing the device is deliberate: a refusal would buy no
safety (the recorded value is capped either way) and would turn a firmware misstatement into a
device that cannot onboard. The service records the claim next to the recorded value in the
onboarding event, so the difference is visible.

This module decides; it reads no profile (the service parses it) and stores nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from iotrust.core.hardware import HardwareKeyStorage
from iotrust.core.lifecycle import KeyStorage
from iotrust.core.onboarding.messages import KEY_STORAGE_CLAIMS

_WEAK: Final = frozenset({KeyStorage.NONE, KeyStorage.FILE})
#: Recorded values that do not use protected hardware (no key, a key file, a software store).
SOFTWARE_STORAGE: Final = _WEAK | {KeyStorage.SOFTWARE}

#: Which claims each hardware key storage can back.
PROFILE_ALLOWS: Final[Mapping[HardwareKeyStorage, frozenset[KeyStorage]]] = {
    HardwareKeyStorage.NONE: frozenset({KeyStorage.NONE}),
    HardwareKeyStorage.SOFTWARE: SOFTWARE_STORAGE,
    HardwareKeyStorage.SECURE_ELEMENT: SOFTWARE_STORAGE | {KeyStorage.PKCS11,
                                                           KeyStorage.SECURE_ELEMENT},
    HardwareKeyStorage.TPM2: SOFTWARE_STORAGE | {KeyStorage.PKCS11, KeyStorage.TPM},
    HardwareKeyStorage.TRUSTZONE: SOFTWARE_STORAGE | {KeyStorage.PKCS11},
}

#: The device-record value of each hardware key storage (TrustZone has none).
_PROFILE_VALUE: Final[Mapping[HardwareKeyStorage, KeyStorage | None]] = {
    HardwareKeyStorage.NONE: KeyStorage.NONE,
    HardwareKeyStorage.SOFTWARE: KeyStorage.SOFTWARE,
    HardwareKeyStorage.SECURE_ELEMENT: KeyStorage.SECURE_ELEMENT,
    HardwareKeyStorage.TPM2: KeyStorage.TPM,
    HardwareKeyStorage.TRUSTZONE: None,
}

#: How much protection each recorded value stands for (higher is stronger).
_STRENGTH: Final[Mapping[KeyStorage, int]] = {
    KeyStorage.NONE: 0, KeyStorage.FILE: 1, KeyStorage.SOFTWARE: 1, KeyStorage.PKCS11: 2,
    KeyStorage.SECURE_ELEMENT: 3, KeyStorage.TPM: 3,
}


def recorded_key_storage(claim: str | None,
                         profile_storage: HardwareKeyStorage | None) -> KeyStorage:
    """The key storage to record for a device that claimed ``claim``.

    ``profile_storage`` is the ``key_storage`` of the device model's hardware profile, ``None``
    when the device has no model or its model no profile. Raises ``ValueError`` for a claim
    outside the protocol's vocabulary (the message parser already refused it).
    """
    if claim is None:
        return KeyStorage.UNKNOWN
    if claim not in KEY_STORAGE_CLAIMS:
        raise ValueError(f"not a key-storage claim: {claim!r:.20}")
    stated = KeyStorage(claim)
    if profile_storage is None:
        return stated if stated in _WEAK else KeyStorage.UNKNOWN
    if stated in PROFILE_ALLOWS[profile_storage]:
        return stated
    ceiling = _PROFILE_VALUE[profile_storage]
    if ceiling is not None and _STRENGTH[ceiling] < _STRENGTH[stated]:
        return ceiling
    return KeyStorage.UNKNOWN
