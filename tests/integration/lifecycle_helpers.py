"""A simulated device's side of credential rotation, for in-process service tests and benchmarks.

:class:`RotatingDevice` holds a key and a certificate files (the layout of
``tests/integration/mqtt.py`` identities) and runs begin/complete/confirm against a
:class:`~iotrust.services.rotation.RotationService` directly, with real signatures.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.core import pki
from iotrust.core import rotation as rot
from iotrust.services.rotation import RotationService


@dataclass(slots=True)
class RotatingDevice:
    """A device id with its current key and certificate files."""

    device_id: str
    cert: Path
    key: Path

    @property
    def serial(self) -> str:
        return f"{pki.load_certificate(self.cert.read_bytes()).serial_number:x}"

    def signer(self) -> DeviceFileKey:
        return DeviceFileKey.load(self.key)

    def begin_request(self, signer: DeviceFileKey | None = None) -> rot.BeginRequest:
        nonce = os.urandom(32)
        serial = self.serial
        key = signer or self.signer()
        sig = key.sign(rot.begin_transcript(device_id=self.device_id, credential_serial=serial,
                                            device_nonce=nonce))
        return rot.BeginRequest(device_id=self.device_id, credential_serial=serial,
                                device_nonce=nonce, signature=sig)

    def complete_request(self, begun: rot.BeginResponse, new_key: DeviceFileKey,
                         csr: bytes | None = None) -> rot.CompleteRequest:
        csr = csr if csr is not None else pki.build_csr(new_key).public_bytes(Encoding.DER)
        serial = self.serial
        sig = self.signer().sign(rot.rotation_transcript(
            session_id=begun.session_id, server_nonce=begun.server_nonce,
            device_id=self.device_id, credential_serial=serial,
            csr_sha256=hashlib.sha256(csr).digest()))
        return rot.CompleteRequest(session_id=begun.session_id, device_id=self.device_id,
                                   credential_serial=serial, server_nonce=begun.server_nonce,
                                   csr=csr, signature=sig)

    @staticmethod
    def confirm_request(begun: rot.BeginResponse, done: rot.CompleteResponse,
                        new_key: DeviceFileKey, device_id: str) -> rot.ConfirmRequest:
        sig = new_key.sign(rot.confirm_transcript(
            session_id=begun.session_id, server_nonce=begun.server_nonce,
            certificate_sha256=hashlib.sha256(done.certificate).digest()))
        return rot.ConfirmRequest(session_id=begun.session_id, device_id=device_id,
                                  server_nonce=begun.server_nonce, signature=sig)

    def rotate(self, service: RotationService, *, source: str = "127.0.0.1") -> str:
        """One whole rotation; the files then hold the new key and certificate. New serial."""
        begun = service.begin(self.begin_request().to_wire(), source=source)
        new_path = self.key.with_name(self.key.name + ".next")
        new_path.unlink(missing_ok=True)
        new_key = DeviceFileKey.generate(new_path)
        done = service.complete(self.complete_request(begun, new_key).to_wire(), source=source)
        service.confirm(self.confirm_request(begun, done, new_key, self.device_id).to_wire(),
                        source=source)
        new_path.replace(self.key)
        cert = pki.load_certificate(done.certificate)
        self.cert.write_bytes(cert.public_bytes(Encoding.PEM))
        return f"{cert.serial_number:x}"
