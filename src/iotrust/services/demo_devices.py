"""The devices of ``iotrust demo`` and what the demo does by hand in a device's place.

:class:`AgentDevice` is a minted device's factory folder and (once onboarded) its agent state.
Most of the time real ``iotrust-agent`` processes act for the devices; two acts need finer
control than the agent offers, so they are done here with the same core protocol code:
:func:`replayed_onboarding` onboards a device over HTTP and sends its attest a second time (a
replay the server must refuse), and :func:`mqtt_knock` connects to the broker with a device's
old certificate (a zombie the broker must refuse).

This module decides nothing (the server and the broker do) and prints nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.adapters.keys.file import DeviceFileKey
from iotrust.adapters.mqtt.client import MqttEndpoint, MqttSession
from iotrust.core import pki
from iotrust.core.onboarding import (
    AttestResponse,
    HelloResponse,
    accept_attest_response,
    accept_hello_response,
    build_attest,
    build_confirm,
    build_hello,
)
from iotrust.errors import IotrustError


@dataclass(slots=True)
class AgentDevice:
    """A minted device and (once onboarded) its agent state folder."""

    serial: str
    folder: Path
    state: Path
    device_id: str | None = None


def _post(http: httpx.Client, server_url: str, step: str, body: bytes) -> httpx.Response:
    return http.post(f"{server_url}/v1/onboarding/{step}", content=body,
                     headers={"content-type": "application/json"})


def replayed_onboarding(device: AgentDevice, *, server_url: str,
                        factory_dir: Path) -> dict[str, Any]:
    """``device`` onboards over HTTP; its attest is sent a second time (a replay).

    ``factory_dir`` holds the manufacturer's ``issuing.crt.pem`` and ``root.crt.pem``. Sets
    :attr:`AgentDevice.device_id` and writes the operational key and certificate into its state
    folder; returns the replay's HTTP status and refusal reason.
    """
    key = DeviceFileKey.load(device.folder / "factory.key.pem")
    leaf = pki.load_certificate((device.folder / "factory.crt.pem").read_bytes())
    issuing = pki.load_certificate((factory_dir / "issuing.crt.pem").read_bytes())
    root = pki.load_certificate((factory_dir / "root.crt.pem").read_bytes())
    chain = tuple(c.public_bytes(Encoding.DER) for c in (leaf, issuing))
    device.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    operational = DeviceFileKey.generate(device.state / "operational.key.pem")
    with httpx.Client(timeout=30.0) as http:
        hello = build_hello(serial=device.serial, factory_chain=chain, random=os.urandom,
                            key_storage="file")  # its keys are files, as the agents' are
        reply = _post(http, server_url, "hello", hello.to_wire())
        reply.raise_for_status()
        session = accept_hello_response(HelloResponse.from_wire(reply.content), hello=hello,
                                        manufacturer_anchors=(root,), now=datetime.now(UTC))
        csr = pki.build_csr(operational).public_bytes(Encoding.DER)
        attest = build_attest(session, factory_signer=key, csr_der=csr)
        first = _post(http, server_url, "attest", attest.to_wire())
        first.raise_for_status()
        onboarded = accept_attest_response(AttestResponse.from_wire(first.content),
                                           session=session,
                                           csr_public_key=operational.public_key,
                                           now=datetime.now(UTC))
        replay = _post(http, server_url, "attest", attest.to_wire())
        reason = replay.json().get("reason") if replay.status_code >= 400 else None  # noqa: PLR2004
        confirm = build_confirm(session, onboarded, operational_signer=operational)
        _post(http, server_url, "confirm", confirm.to_wire()).raise_for_status()
    device.device_id = onboarded.device_id
    (device.state / "operational.crt.pem").write_bytes(
        onboarded.certificate.public_bytes(Encoding.PEM))
    return {"status": replay.status_code, "reason": reason, "device_id": device.device_id}


def mqtt_knock(device: AgentDevice, *, port: int) -> bool:
    """Connect to 127.0.0.1:``port`` with the device's agent credential; True if refused."""
    record = json.loads((device.state / "state.json").read_text())
    key = Path(str(record["operational_key_ref"]).split(":", 1)[1])
    endpoint = MqttEndpoint(host="127.0.0.1", port=port, ca_file=device.state / "ca-chain.pem",
                            cert_file=device.state / "operational.crt.pem", key_file=key)
    session = MqttSession(endpoint, client_id=f"{device.device_id}-knock", timeout=5.0)
    try:
        session.connect()
    except IotrustError:
        return True
    finally:
        session.close()
    return False
