"""Our :class:`~iotrust.ports.Signer` port as a ``securesystemslib`` signer, for TUF metadata.

python-tuf signs metadata through ``securesystemslib.signer.Signer`` (``sign(payload) ->
Signature``, ``public_key -> Key``). :class:`PortSigner` adapts any key our key stores open (an
encrypted file key, a PKCS#11 token key) to that interface: the public key becomes an
``SSlibKey`` of type ``ecdsa`` with scheme ``ecdsa-sha2-nistp256`` (the key id is
securesystemslib's default, a hash of the canonical public key), and the signature is the port's
DER ECDSA-SHA256 signature over the payload, hex-encoded, exactly what python-tuf verifies.

This module does not open keys (see :mod:`iotrust.adapters.keys`) and does not decide which key
signs which role (see :mod:`.keyring`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from iotrust.adapters.tuf._api import Key, Signature, SSlibKey, SslibSigner
from iotrust.errors import BackendError, InputError

if TYPE_CHECKING:
    from iotrust.adapters.tuf._api import SecretsHandler
    from iotrust.ports import Signer

SCHEME = "ecdsa-sha2-nistp256"


def tuf_key(public_key: ec.EllipticCurvePublicKey) -> SSlibKey:
    """The TUF key (``ecdsa`` / ``ecdsa-sha2-nistp256``) of a P-256 public key."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1):
        raise InputError("TUF keys here are ECDSA P-256", reason="unsupported_key")
    return SSlibKey.from_crypto(public_key, scheme=SCHEME)


class PortSigner(SslibSigner):
    """A ``securesystemslib`` signer over an iotrust :class:`~iotrust.ports.Signer`."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._key = tuf_key(signer.public_key)

    @property
    def public_key(self) -> Key:
        """The TUF public key (its ``keyid`` names it in metadata)."""
        return self._key

    @property
    def keyid(self) -> str:
        """The key id."""
        return str(self._key.keyid)

    def sign(self, payload: bytes) -> Signature:
        """Sign ``payload`` (canonical JSON of ``signed``) with the underlying key."""
        try:
            der = self._signer.sign(payload)
        except (InputError, BackendError):
            raise
        except Exception as exc:  # noqa: BLE001 - the key-store seam: any driver failure
            raise BackendError("the update signing key failed to sign",
                               reason="key_store_failed",
                               detail=type(exc).__name__) from None
        return Signature(self.keyid, der.hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> SslibSigner:
        """Not supported: iotrust opens keys through its own key references."""
        del priv_key_uri, public_key, secrets_handler
        raise TypeError("open iotrust keys with iotrust.adapters.keys.open_signer")
