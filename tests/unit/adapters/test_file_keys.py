"""File key stores, passphrase reading and key references (no token, no server)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotrust.adapters.keys.file import (
    MIN_PASSPHRASE_BYTES,
    DeviceFileKey,
    EncryptedFileSigner,
    passphrase_from_environment,
)
from iotrust.adapters.keys.refs import (
    KeyRef,
    KeyRefKind,
    open_signer,
    parse_key_ref,
    pin_from_environment,
)
from iotrust.errors import ConflictError, InputError
from iotrust.ports import HasPrivateKey, Signer

PASS = b"correct horse battery staple"


def _verify(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- EncryptedFileSigner -------------------------------------------------------------------


def test_generate_load_sign_verify(tmp_path: Path) -> None:
    path = tmp_path / "ca.key.pem"
    made = EncryptedFileSigner.generate(path, PASS)
    assert isinstance(made, Signer)
    assert isinstance(made, HasPrivateKey)
    assert isinstance(made.public_key.curve, ec.SECP256R1)
    _verify(made.public_key, made.sign(b"data"), b"data")

    loaded = EncryptedFileSigner.load(path, PASS)
    assert _spki(loaded.public_key) == _spki(made.public_key)
    _verify(made.public_key, loaded.sign(b"more"), b"more")
    assert _spki(loaded.private_key.public_key()) == _spki(made.public_key)
    with pytest.raises(InvalidSignature):
        _verify(made.public_key, loaded.sign(b"more"), b"other")


def test_file_is_encrypted_pkcs8_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    old_umask = os.umask(0)  # even with a permissive umask the key is private
    try:
        EncryptedFileSigner.generate(path, PASS)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    text = path.read_bytes()
    assert text.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # cryptography can read it back with the passphrase, and not without.
    serialization.load_pem_private_key(text, password=PASS)
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(text, password=None)


def test_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    EncryptedFileSigner.generate(path, PASS)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, b"not the passphrase at all")
    assert info.value.reason == "bad_passphrase"
    assert b"not the passphrase" not in str(info.value).encode()


def test_empty_passphrase_on_load(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    EncryptedFileSigner.generate(path, PASS)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, b"")
    assert info.value.reason == "bad_passphrase"


@pytest.mark.parametrize("weak", [b"", b"short", b"x" * (MIN_PASSPHRASE_BYTES - 1)])
def test_weak_passphrase_refused(tmp_path: Path, weak: bytes) -> None:
    path = tmp_path / "k.pem"
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.generate(path, weak)
    assert info.value.reason == "weak_passphrase"
    assert not path.exists()


def test_minimum_length_passphrase_accepted(tmp_path: Path) -> None:
    EncryptedFileSigner.generate(tmp_path / "k.pem", b"x" * MIN_PASSPHRASE_BYTES)


def test_passphrase_must_be_bytes(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        EncryptedFileSigner.generate(tmp_path / "k.pem", "a str passphrase!")  # type: ignore[arg-type]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    first = EncryptedFileSigner.generate(path, PASS)
    before = path.read_bytes()
    with pytest.raises(ConflictError) as info:
        EncryptedFileSigner.generate(path, PASS)
    assert info.value.reason == "key_exists"
    assert path.read_bytes() == before
    assert _spki(EncryptedFileSigner.load(path, PASS).public_key) == _spki(first.public_key)


def test_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "k.pem"
    link.symlink_to(target)
    with pytest.raises(ConflictError) as info:
        EncryptedFileSigner.generate(link, PASS)
    assert info.value.reason == "key_exists"
    assert not target.exists()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.generate(tmp_path / "nope" / "k.pem", PASS)
    assert info.value.reason == "key_path_unusable"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(tmp_path / "absent.pem", PASS)
    assert info.value.reason == "key_file_unreadable"


def test_directory_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(tmp_path, PASS)
    assert info.value.reason == "key_file_unreadable"


_ENC_BEGIN = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
_ENC_END = b"-----END ENCRYPTED PRIVATE KEY-----\n"


def _private_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        _ENC_BEGIN + b"!!!notbase64!!!\n" + _ENC_END,
        _ENC_BEGIN + b"AAAA\n" + _ENC_END,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_malformed_file(tmp_path: Path, content: bytes) -> None:
    path = _private_file(tmp_path / "k.pem", content)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "malformed_key_file"


def test_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pem"
    EncryptedFileSigner.generate(good, PASS)
    lines = good.read_bytes().splitlines(keepends=True)
    path = _private_file(tmp_path / "k.pem", b"".join(lines[:2] + lines[-1:]))
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "malformed_key_file"


def test_plaintext_key_refused_by_encrypted_store(tmp_path: Path) -> None:
    path = tmp_path / "dev.pem"
    DeviceFileKey.generate(path)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "key_not_encrypted"


def test_non_p256_key_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASS),
    )
    path = _private_file(tmp_path / "k.pem", pem)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "unsupported_key"


def test_rsa_key_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASS),
    )
    path = _private_file(tmp_path / "k.pem", pem)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "unsupported_key"


def test_group_readable_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    EncryptedFileSigner.generate(path, PASS)
    path.chmod(0o640)
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "key_file_permissions"


def test_oversized_file_refused(tmp_path: Path) -> None:
    path = _private_file(tmp_path / "k.pem", b"A" * (65 * 1024))
    with pytest.raises(InputError) as info:
        EncryptedFileSigner.load(path, PASS)
    assert info.value.reason == "key_file_too_large"


def test_repr_holds_no_secret(tmp_path: Path) -> None:
    signer = EncryptedFileSigner.generate(tmp_path / "k.pem", PASS)
    assert "PRIVATE" not in repr(signer)
    assert "k.pem" in repr(signer)


# --- DeviceFileKey -------------------------------------------------------------------------


def test_device_key_generate_load_sign(tmp_path: Path) -> None:
    path = tmp_path / "device.pem"
    made = DeviceFileKey.generate(path)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = DeviceFileKey.load(path)
    assert isinstance(loaded, Signer)
    assert isinstance(loaded, HasPrivateKey)
    assert _spki(loaded.public_key) == _spki(made.public_key)
    _verify(made.public_key, loaded.sign(b"telemetry"), b"telemetry")


def test_device_key_docstring_says_development_and_audit() -> None:
    doc = DeviceFileKey.__doc__ or ""
    assert "DEVELOPMENT" in doc.upper()
    assert "audit" in doc


def test_device_key_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "device.pem"
    DeviceFileKey.generate(path)
    with pytest.raises(ConflictError) as info:
        DeviceFileKey.generate(path)
    assert info.value.reason == "key_exists"


def test_device_key_refuses_encrypted_file(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    EncryptedFileSigner.generate(path, PASS)
    with pytest.raises(InputError) as info:
        DeviceFileKey.load(path)
    assert info.value.reason == "key_encrypted"


def test_device_key_malformed(tmp_path: Path) -> None:
    path = _private_file(tmp_path / "k.pem", b"not a key")
    with pytest.raises(InputError) as info:
        DeviceFileKey.load(path)
    assert info.value.reason == "malformed_key_file"


def test_device_key_world_readable_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    DeviceFileKey.generate(path)
    path.chmod(0o644)
    with pytest.raises(InputError) as info:
        DeviceFileKey.load(path)
    assert info.value.reason == "key_file_permissions"


# --- passphrase_from_environment -----------------------------------------------------------


def test_passphrase_from_variable() -> None:
    env = {"IOTRUST_PASSPHRASE": "from the environment"}
    assert passphrase_from_environment(environ=env) == b"from the environment"


def test_passphrase_from_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTRUST_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("IOTRUST_PASSPHRASE", "from os.environ here")
    assert passphrase_from_environment() == b"from os.environ here"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"secret in a file\n", b"secret in a file"),
        (b"secret in a file", b"secret in a file"),
        (b"secret in a file\r\n", b"secret in a file"),
        (b"two newlines\n\n", b"two newlines\n"),
        (b" spaces kept \n", b" spaces kept "),
    ],
)
def test_passphrase_from_file(tmp_path: Path, content: bytes, expected: bytes) -> None:
    path = tmp_path / "pass"
    path.write_bytes(content)
    env = {"IOTRUST_PASSPHRASE_FILE": str(path)}
    assert passphrase_from_environment(environ=env) == expected


def test_passphrase_custom_variable_names(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"custom\n")
    assert passphrase_from_environment("A", "B", environ={"B": str(path)}) == b"custom"
    assert passphrase_from_environment("A", "B", environ={"A": "direct"}) == b"direct"


def test_passphrase_missing_names_the_variables() -> None:
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ={})
    assert info.value.reason == "passphrase_missing"
    assert "IOTRUST_PASSPHRASE" in info.value.message
    assert "IOTRUST_PASSPHRASE_FILE" in info.value.message


def test_passphrase_empty_variable_is_missing() -> None:
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ={"IOTRUST_PASSPHRASE": ""})
    assert info.value.reason == "passphrase_missing"


def test_passphrase_empty_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"\n")
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ={"IOTRUST_PASSPHRASE_FILE": str(path)})
    assert info.value.reason == "passphrase_missing"


def test_passphrase_both_set_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"file one\n")
    env = {"IOTRUST_PASSPHRASE": "direct one", "IOTRUST_PASSPHRASE_FILE": str(path)}
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ=env)
    assert info.value.reason == "passphrase_ambiguous"


def test_passphrase_file_unreadable(tmp_path: Path) -> None:
    env = {"IOTRUST_PASSPHRASE_FILE": str(tmp_path / "absent")}
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ=env)
    assert info.value.reason == "passphrase_file_unreadable"


def test_passphrase_too_long(tmp_path: Path) -> None:
    path = tmp_path / "pass"
    path.write_bytes(b"x" * 10_000)
    with pytest.raises(InputError) as info:
        passphrase_from_environment(environ={"IOTRUST_PASSPHRASE_FILE": str(path)})
    assert info.value.reason == "passphrase_too_long"


def test_pin_from_environment() -> None:
    assert pin_from_environment(environ={"IOTRUST_PKCS11_PIN": "1234"}) == "1234"
    with pytest.raises(InputError) as info:
        pin_from_environment(environ={})
    assert info.value.reason == "pin_missing"
    assert "IOTRUST_PKCS11_PIN" in info.value.message


# --- key references ------------------------------------------------------------------------


def test_parse_file_refs() -> None:
    ref = parse_key_ref("file:/var/lib/iotrust/keys/root.pem")
    assert ref.kind is KeyRefKind.FILE
    assert ref.path == "/var/lib/iotrust/keys/root.pem"
    assert str(ref) == "file:/var/lib/iotrust/keys/root.pem"
    dev = parse_key_ref("devfile:data/device.pem")
    assert dev.kind is KeyRefKind.DEVFILE
    assert dev.path == "data/device.pem"
    assert str(dev) == "devfile:data/device.pem"


def test_parse_pkcs11_ref_any_order_canonical_output() -> None:
    ref = parse_key_ref("pkcs11:object=root-1;token=iotrust;module=/usr/lib/softhsm/libsofthsm2.so")
    assert ref.kind is KeyRefKind.PKCS11
    assert ref.module == "/usr/lib/softhsm/libsofthsm2.so"
    assert ref.token == "iotrust"
    assert ref.key_label == "root-1"
    assert str(ref) == "pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=iotrust;object=root-1"
    assert parse_key_ref(str(ref)) == ref


def test_constructors_round_trip(tmp_path: Path) -> None:
    for ref in (
        KeyRef.encrypted_file(tmp_path / "a.pem"),
        KeyRef.device_file("rel/dev.pem"),
        KeyRef.pkcs11("/usr/lib/softhsm/libsofthsm2.so", "tok", "key 1"),
    ):
        assert parse_key_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "root.pem",
        "file:",
        "devfile:",
        "ftp:/x",
        "FILE:/x",
        "file:/x\x00y",
        "file:/x\ny",
        "pkcs11:",
        "pkcs11:module=/m.so;token=t",
        "pkcs11:module=/m.so;token=t;object=",
        "pkcs11:module=;token=t;object=k",
        "pkcs11:module=/m.so;token=;object=k",
        "pkcs11:module=/m.so;token=t;object=k;object=k",
        "pkcs11:module=/m.so;token=t;object=k;pin-value=1234",
        "pkcs11:module=/m.so;token=t;object=k%20x",
        "pkcs11:module=/m.so;token=t;object=a=b",
        "pkcs11:module=/m.so;token=" + "t" * 33 + ";object=k",
        "pkcs11:module=/m.so;token=t;object=k;",
        "file:/" + "x" * 5000,
    ],
)
def test_malformed_refs_refused(bad: str) -> None:
    with pytest.raises(InputError) as info:
        parse_key_ref(bad)
    assert info.value.reason == "invalid_key_ref"


def test_key_ref_is_frozen() -> None:
    ref = parse_key_ref("file:/k.pem")
    with pytest.raises(AttributeError):
        ref.path = "/other"  # type: ignore[misc]


def test_key_ref_constructor_validates() -> None:
    with pytest.raises(InputError):
        KeyRef(KeyRefKind.FILE, path="/k", token="t")
    with pytest.raises(InputError):
        KeyRef(KeyRefKind.PKCS11, module="/m.so", token="t")


def test_open_signer_file_ref(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    made = EncryptedFileSigner.generate(path, PASS)
    opened = open_signer(f"file:{path}", passphrase=PASS)
    assert isinstance(opened, EncryptedFileSigner)
    assert _spki(opened.public_key) == _spki(made.public_key)


def test_open_signer_file_ref_passphrase_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.pem"
    EncryptedFileSigner.generate(path, PASS)
    monkeypatch.delenv("IOTRUST_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("IOTRUST_PASSPHRASE", PASS.decode())
    assert isinstance(open_signer(KeyRef.encrypted_file(path)), EncryptedFileSigner)
    monkeypatch.delenv("IOTRUST_PASSPHRASE")
    with pytest.raises(InputError) as info:
        open_signer(KeyRef.encrypted_file(path))
    assert info.value.reason == "passphrase_missing"


def test_open_signer_devfile_ref(tmp_path: Path) -> None:
    path = tmp_path / "d.pem"
    made = DeviceFileKey.generate(path)
    opened = open_signer(str(KeyRef.device_file(path)))
    assert isinstance(opened, DeviceFileKey)
    assert _spki(opened.public_key) == _spki(made.public_key)


def test_open_signer_pkcs11_needs_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTRUST_PKCS11_PIN", raising=False)
    with pytest.raises(InputError) as info:
        open_signer("pkcs11:module=/m.so;token=t;object=k")
    assert info.value.reason == "pin_missing"


def test_open_signer_bad_ref() -> None:
    with pytest.raises(InputError) as info:
        open_signer("nonsense")
    assert info.value.reason == "invalid_key_ref"
