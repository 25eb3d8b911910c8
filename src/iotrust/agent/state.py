"""The agent's state folder: what a device holds once it has onboarded.

Layout of ``<state>/`` (the folder is mode 0700):

* ``state.json`` (0600) — device id, serial, manufacturer, owner and the **pinned owner SPKI
  hash**, server id and URL, operational key reference and ``key_storage``, broker endpoint,
  policy, times, and ``confirmed`` (false between attest and a successful confirm);
* ``operational.crt.pem`` (0644) — the operational certificate (LDevID);
* ``ca-chain.pem`` (0644) — issuing CA(s) then the owner's operational root;
* ``update-root.json`` (0600) — the update repository's trusted root metadata, as received
  (possibly empty);
* ``operational.key.pem`` (0600) — only for development file keys (see :mod:`.keys`).

Every file is written atomically (temporary file in the same folder, fsync, rename, fsync of the
folder): a crash leaves the old file or the new one. ``state.json`` is written last, so it never
names files that are not there yet. :func:`load_state` reads it back through one bounded parse
boundary (a damaged folder is an :class:`~iotrust.errors.InputError`).

This module does not talk to the server, open keys or judge certificates beyond parsing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotrust.core import pki
from iotrust.core.ids import DEVICE_ID_RE, SERIAL_RE
from iotrust.errors import BackendError, InputError, NotFoundError

STATE_FILE: Final = "state.json"
CERTIFICATE_FILE: Final = "operational.crt.pem"
CA_CHAIN_FILE: Final = "ca-chain.pem"
UPDATE_ROOT_FILE: Final = "update-root.json"
STATE_VERSION: Final = 1
MAX_STATE_BYTES: Final = 1024 * 1024

_SECRET_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
_DIR_MODE: Final = 0o700


@dataclass(frozen=True, slots=True)
class AgentState:
    """Everything the agent knows after onboarding. Build it with :func:`load_state` or onboard."""

    device_id: str
    serial: str
    manufacturer: str
    owner: str
    owner_spki_sha256: str
    server_id: str
    server_url: str
    operational_key_ref: str
    key_storage: str
    certificate_pem: bytes
    ca_chain_pem: bytes
    broker_host: str
    broker_port: int
    update_root: bytes
    policy: tuple[dict[str, Any], ...]
    onboarded_at: datetime
    confirm_by: datetime
    confirmed: bool
    certificate: x509.Certificate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.fullmatch(self.device_id):
            raise InputError("the state names an invalid device id", reason="state_damaged")
        if not SERIAL_RE.fullmatch(self.serial):
            raise InputError("the state names an invalid serial", reason="state_damaged")
        if len(self.owner_spki_sha256) != 64 or not all(  # noqa: PLR2004 - SHA-256 hex
                c in "0123456789abcdef" for c in self.owner_spki_sha256):
            raise InputError("the state's owner pin is not a SHA-256", reason="state_damaged")
        for when in (self.onboarded_at, self.confirm_by):
            if when.tzinfo is None:
                raise TypeError("state times are timezone-aware")
        try:
            cert = pki.load_certificate(self.certificate_pem)
            chain = pki.load_certificates(self.ca_chain_pem)
        except InputError as exc:
            raise InputError("the state's certificates do not parse",
                             reason="state_damaged") from exc
        if pki.spki_sha256(chain[-1].public_key()) != self.owner_spki_sha256:
            raise InputError("the state's CA chain does not end in the pinned owner",
                             reason="state_damaged")
        object.__setattr__(self, "certificate", cert)

    @property
    def not_after(self) -> datetime:
        """When the operational certificate expires."""
        return self.certificate.not_valid_after_utc

    def summary(self, now: datetime) -> dict[str, object]:
        """What ``iotrust-agent status`` shows (no secrets: key references are not secrets)."""
        return {
            "device_id": self.device_id, "serial": self.serial,
            "manufacturer": self.manufacturer, "owner": self.owner,
            "owner_spki_sha256": self.owner_spki_sha256, "server_id": self.server_id,
            "server_url": self.server_url, "confirmed": self.confirmed,
            "key_storage": self.key_storage, "operational_key_ref": self.operational_key_ref,
            "certificate_not_after": _time(self.not_after),
            "certificate_expired": now >= self.not_after,
            "broker": {"host": self.broker_host, "port": self.broker_port},
            "policy_rules": len(self.policy), "update_root_bytes": len(self.update_root),
            "onboarded_at": _time(self.onboarded_at),
        }


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise InputError("a time in the state is not text", reason="state_damaged")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InputError("a time in the state is malformed", reason="state_damaged") from exc


# --- writing -----------------------------------------------------------------------------------


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state folder (0700) if needed; refuse one readable by group or others."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        mode = state_dir.stat().st_mode & 0o777
    except OSError as exc:
        raise InputError(f"cannot create the state folder {str(state_dir)!r}: {exc.strerror}",
                         reason="state_dir_unusable") from None
    if mode & 0o077:
        raise InputError(f"the state folder {str(state_dir)!r} is accessible by group or others "
                         f"(mode {mode:04o}); chmod 700 it", reason="state_dir_permissions")


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically, with ``mode`` from the start."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BackendError(f"cannot write in {str(path.parent)!r}: {exc.strerror}",
                           reason="state_io") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise BackendError(f"cannot write {str(path)!r}: {exc.strerror}",
                           reason="state_io") from None
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _record(state: AgentState) -> dict[str, object]:
    return {
        "version": STATE_VERSION, "device_id": state.device_id, "serial": state.serial,
        "manufacturer": state.manufacturer, "owner": state.owner,
        "owner_spki_sha256": state.owner_spki_sha256, "server_id": state.server_id,
        "server_url": state.server_url, "operational_key_ref": state.operational_key_ref,
        "key_storage": state.key_storage,
        "broker": {"host": state.broker_host, "port": state.broker_port},
        "policy": list(state.policy), "onboarded_at": _time(state.onboarded_at),
        "confirm_by": _time(state.confirm_by), "confirmed": state.confirmed,
    }


def save_state(state_dir: Path, state: AgentState) -> None:
    """Write the state folder; ``state.json`` last."""
    ensure_state_dir(state_dir)
    write_atomic(state_dir / CERTIFICATE_FILE, state.certificate_pem, mode=_PUBLIC_MODE)
    write_atomic(state_dir / CA_CHAIN_FILE, state.ca_chain_pem, mode=_PUBLIC_MODE)
    write_atomic(state_dir / UPDATE_ROOT_FILE, state.update_root, mode=_SECRET_MODE)
    data = json.dumps(_record(state), indent=2, sort_keys=True).encode("utf-8") + b"\n"
    write_atomic(state_dir / STATE_FILE, data, mode=_SECRET_MODE)


def pem_chain(certs: tuple[x509.Certificate, ...]) -> bytes:
    """Certificates as one PEM bundle, in order."""
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


# --- reading -----------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{str(path)!r} is missing", reason="not_onboarded") from None
    except OSError as exc:
        raise InputError(f"cannot read {str(path)!r}: {exc.strerror}",
                         reason="state_unreadable") from None
    if len(data) > MAX_STATE_BYTES:
        raise InputError(f"{str(path)!r} is too large", reason="state_damaged")
    return data


def has_state(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a state (confirmed or not)."""
    return (state_dir / STATE_FILE).is_file()


def load_state(state_dir: Path) -> AgentState:
    """Read the state folder.

    Raises:
        NotFoundError: ``not_onboarded`` (no ``state.json``, or a file it needs is missing).
        InputError: ``state_damaged``, ``state_unreadable``.
    """
    raw = _read(state_dir / STATE_FILE)
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict) or obj.get("version") != STATE_VERSION:
            raise InputError("unsupported state version", reason="state_damaged")
        broker = obj["broker"]
        policy = obj["policy"]
        if not isinstance(policy, list) or not all(isinstance(p, dict) for p in policy):
            raise InputError("the state's policy is not a list of rules", reason="state_damaged")
        texts = {k: obj[k] for k in ("device_id", "serial", "manufacturer", "owner",
                                     "owner_spki_sha256", "server_id", "server_url",
                                     "operational_key_ref", "key_storage")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise InputError("a text field of the state is not text", reason="state_damaged")
        port = broker["port"]
        confirmed = obj["confirmed"]
        if not isinstance(port, int) or not isinstance(confirmed, bool):
            raise InputError("a field of the state has the wrong type", reason="state_damaged")
        return AgentState(
            **texts, certificate_pem=_read(state_dir / CERTIFICATE_FILE),
            ca_chain_pem=_read(state_dir / CA_CHAIN_FILE), broker_host=str(broker["host"]),
            broker_port=port, update_root=_read(state_dir / UPDATE_ROOT_FILE),
            policy=tuple(policy), onboarded_at=_parse_time(obj["onboarded_at"]),
            confirm_by=_parse_time(obj["confirm_by"]), confirmed=confirmed)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{str(state_dir / STATE_FILE)!r} is damaged",
                         reason="state_damaged") from exc
