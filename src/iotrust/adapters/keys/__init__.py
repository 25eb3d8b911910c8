"""Key stores behind the :class:`iotrust.ports.Signer` port.

* :mod:`.file` — :class:`EncryptedFileSigner` (passphrase-encrypted PEM, the software store for
  trust-domain keys) and :class:`DeviceFileKey` (unencrypted, development-only device keys);
* :mod:`.pkcs11` — :class:`Pkcs11Signer` (keys generated and used inside a PKCS#11 token);
* :mod:`.refs` — key references (``file:``, ``devfile:``, ``pkcs11:``) that the registry records,
  and :func:`open_signer` to open the key one names.

This package does not choose a key store for a deployment and does not hold secrets beyond the
life of a signer.
"""

from iotrust.adapters.keys.file import (
    DeviceFileKey,
    EncryptedFileSigner,
    passphrase_from_environment,
)
from iotrust.adapters.keys.pkcs11 import Pkcs11Signer
from iotrust.adapters.keys.refs import (
    KeyRef,
    KeyRefKind,
    open_signer,
    parse_key_ref,
    pin_from_environment,
)

__all__ = [
    "DeviceFileKey",
    "EncryptedFileSigner",
    "KeyRef",
    "KeyRefKind",
    "Pkcs11Signer",
    "open_signer",
    "parse_key_ref",
    "passphrase_from_environment",
    "pin_from_environment",
]
