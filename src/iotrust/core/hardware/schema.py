"""Hardware profile vocabulary: schema ids, input limits, the profile error, the named kinds.

The enums a profile is written in (device class, key storage, root of trust, RNG, rollback
counter), the algorithms and connectivity it may name, and the bounds every document is read
under. Values only: parsing is :mod:`._parse`, the profile :mod:`.profile`, the verdicts
:mod:`.assessment`.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from iotrust.errors import InputError

SCHEMA: Final = "iotrust.hardware/v1"
TIMELINES_SCHEMA: Final = "iotrust.crypto-timelines/v1"
ASSESSMENT_SCHEMA: Final = "iotrust.hardware-assessment/v1"

#: Limits on an untrusted profile document.
MAX_PROFILE_BYTES: Final = 64 * 1024
MAX_PROFILE_EVENTS: Final = 2_000
MAX_PROFILE_DEPTH: Final = 6
#: Limits on the (trusted, but still bounded) timelines document.
MAX_TIMELINES_BYTES: Final = 256 * 1024
MAX_TIMELINES_EVENTS: Final = 20_000
MAX_TIMELINES_DEPTH: Final = 6
MAX_TEXT: Final = 64
MAX_LIST: Final = 32
MAX_KB: Final = 1 << 32  # 4 TiB expressed in KiB: larger is a typo, not a device
MAX_LIFETIME_YEARS: Final = 50
MIN_YEAR: Final = 1990
MAX_YEAR: Final = 2200

_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------
# Errors


class ProfileError(InputError):
    """A hardware profile (or timelines document) is malformed; ``path`` is its JSON path."""

    default_reason = "profile_invalid"

    def __init__(self, path: str, problem: str, *, reason: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", reason=reason)
        self.path = path
        self.problem = problem


def key_path(base: str, key: object) -> str:
    """The JSON path of ``key`` under ``base`` (``$.a`` or ``$["odd key"]``, bounded)."""
    if isinstance(key, str) and _IDENT.fullmatch(key) and len(key) <= MAX_TEXT:
        return f"{base}.{key}"
    return f"{base}[{json.dumps(str(key)[:MAX_TEXT])}]"


# --------------------------------------------------------------------------------------------
# Vocabulary


class DeviceClass(enum.StrEnum):
    """What kind of computer the device is."""

    MCU = "mcu"
    LINUX = "linux"
    GATEWAY = "gateway"


class HardwareKeyStorage(enum.StrEnum):
    """Where the device keeps private keys.

    ``none``: ordinary flash, readable by any firmware or a debug probe. ``software``: a file or
    flash area protected only by the operating system or software encryption.
    """

    NONE = "none"
    SOFTWARE = "software"
    SECURE_ELEMENT = "secure_element"
    TPM2 = "tpm2"
    TRUSTZONE = "trustzone"


#: How reasons name each key storage.
STORAGE_NAMES: Final[Mapping[str, str]] = {
    "none": "ordinary flash", "software": "software-protected storage",
    "secure_element": "secure element", "tpm2": "TPM 2.0", "trustzone": "TrustZone secure world"}
PROTECTED_STORAGE: Final = frozenset({HardwareKeyStorage.SECURE_ELEMENT, HardwareKeyStorage.TPM2,
                                      HardwareKeyStorage.TRUSTZONE})


class RootOfTrust(enum.StrEnum):
    """What anchors secure boot."""

    ROM = "rom"
    OTP = "otp"
    TPM = "tpm"
    NONE = "none"


class RngKind(enum.StrEnum):
    """The device's source of randomness."""

    TRNG = "trng"
    DRBG_SEEDED = "drbg_seeded"
    NONE = "none"


class RollbackCounter(enum.StrEnum):
    """Where a monotonic anti-rollback counter lives."""

    OTP_FUSES = "otp_fuses"
    RPMB = "rpmb"
    TPM_NV = "tpm_nv"
    NONE = "none"


class AlgorithmKind(enum.StrEnum):
    """What an algorithm is for."""

    SIGNATURE = "signature"
    KEY_ESTABLISHMENT = "key_establishment"
    HASH = "hash"
    CIPHER = "cipher"
    MAC = "mac"


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A named algorithm a profile may list."""

    name: str
    kind: AlgorithmKind
    quantum_vulnerable: bool = False

    @property
    def asymmetric(self) -> bool:
        """Signature or key establishment."""
        return self.kind in {AlgorithmKind.SIGNATURE, AlgorithmKind.KEY_ESTABLISHMENT}


def _algs(kind: AlgorithmKind, names: str, *, vulnerable: bool = False) -> dict[str, Algorithm]:
    return {n: Algorithm(n, kind, vulnerable) for n in names.split()}


#: Every algorithm name a profile may use.
ALGORITHMS: Final[Mapping[str, Algorithm]] = {
    **_algs(AlgorithmKind.SIGNATURE, "ecdsa-p256 ecdsa-p384 ed25519 rsa-1024 rsa-2048 rsa-3072 "
            "rsa-4096", vulnerable=True),
    **_algs(AlgorithmKind.SIGNATURE, "ml-dsa-44 ml-dsa-65 ml-dsa-87 slh-dsa lms xmss"),
    **_algs(AlgorithmKind.KEY_ESTABLISHMENT, "ecdh-p256 ecdh-p384 x25519", vulnerable=True),
    **_algs(AlgorithmKind.KEY_ESTABLISHMENT, "ml-kem-512 ml-kem-768 ml-kem-1024"),
    **_algs(AlgorithmKind.HASH, "sha1 sha256 sha384 sha512 sha3-256"),
    **_algs(AlgorithmKind.CIPHER, "aes128 aes256 3des chacha20"),
    **_algs(AlgorithmKind.MAC, "hmac-sha256 cmac-aes"),
}
#: Assumed when a profile lists no public-key algorithm: the protocol baseline (DESIGN.md §1).
BASELINE_ALGORITHM: Final = "ecdsa-p256"

#: Connectivity a profile may list; the first group carries IP (so TLS) end to end.
IP_CONNECTIVITY: Final = frozenset({"wifi", "ethernet", "cellular", "lte-m", "nb-iot", "thread",
                                    "6lowpan"})
CONNECTIVITY: Final = IP_CONNECTIVITY | frozenset(
    {"ble", "zigbee", "lorawan", "sigfox", "sub-ghz", "serial", "can", "rs485", "usb", "nfc"})
