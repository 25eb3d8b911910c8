"""Pkcs11Signer against a real SoftHSM2 token (private token directory per test process)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, ObjectClass
from tests.integration.softhsm import SoftHsmToken, softhsm_token, unique_key_label

from iotrust.adapters.keys.pkcs11 import Pkcs11Signer
from iotrust.adapters.keys.refs import KeyRef, open_signer
from iotrust.errors import BackendError, ConflictError, InputError, NotFoundError
from iotrust.ports import Signer

pytestmark = pytest.mark.hsm


@pytest.fixture
def token() -> SoftHsmToken:
    return softhsm_token()


@pytest.fixture
def signer(token: SoftHsmToken) -> Iterator[Pkcs11Signer]:
    s = Pkcs11Signer.generate(token.module, token.label, token.pin, unique_key_label())
    yield s
    s.close()


def _verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def test_generate_sign_verify(signer: Pkcs11Signer) -> None:
    assert isinstance(signer, Signer)
    assert isinstance(signer.public_key.curve, ec.SECP256R1)
    for data in (b"", b"hello", b"x" * 10_000):
        _verify(signer.public_key, signer.sign(data), data)


def test_signature_over_other_data_does_not_verify(signer: Pkcs11Signer) -> None:
    signature = signer.sign(b"one")
    with pytest.raises(InvalidSignature):
        _verify(signer.public_key, signature, b"two")


def test_private_key_is_sensitive_and_not_extractable(
    token: SoftHsmToken, signer: Pkcs11Signer
) -> None:
    # Look at the key on the token through a separate, unauthenticated-by-us session object:
    # the login state is shared, so the signer's session lets us read its attributes.
    library = pkcs11.lib(token.module)
    session = library.get_token(token_label=token.label).open(rw=False)
    try:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=signer.key_label)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.DERIVE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = private[Attribute.VALUE]
    finally:
        # Closing a session that did not log in does not log the shared login out.
        session.close()
    # The signer still works afterwards.
    _verify(signer.public_key, signer.sign(b"after"), b"after")


def test_open_finds_the_same_key(token: SoftHsmToken, signer: Pkcs11Signer) -> None:
    with Pkcs11Signer.open(token.module, token.label, token.pin, signer.key_label) as again:
        assert _spki(again.public_key) == _spki(signer.public_key)
        _verify(signer.public_key, again.sign(b"data"), b"data")
    # Closing the second signer leaves the first usable (shared session, reference-counted).
    _verify(signer.public_key, signer.sign(b"still"), b"still")


def test_key_persists_for_a_fresh_library_instance(
    token: SoftHsmToken, signer: Pkcs11Signer
) -> None:
    # A new process loads the module afresh and must find the key on the token directory.
    code = (
        "import sys\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from iotrust.adapters.keys.refs import open_signer\n"
        "s = open_signer(sys.argv[1], pin=sys.stdin.read())\n"
        "sys.stdout.write(s.sign(b'from-child').hex() + ' ')\n"
        "sys.stdout.write(s.public_key.public_bytes(serialization.Encoding.DER,"
        " serialization.PublicFormat.SubjectPublicKeyInfo).hex())\n"
        "s.close()\n"
    )
    ref = str(KeyRef.pkcs11(token.module, token.label, signer.key_label))
    result = subprocess.run(
        [sys.executable, "-c", code, ref],
        input=token.pin,
        env=token.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    signature_hex, spki_hex = result.stdout.split()
    assert bytes.fromhex(spki_hex) == _spki(signer.public_key)
    _verify(signer.public_key, bytes.fromhex(signature_hex), b"from-child")


def test_open_signer_from_reference(token: SoftHsmToken, signer: Pkcs11Signer) -> None:
    ref = f"pkcs11:module={token.module};token={token.label};object={signer.key_label}"
    opened = open_signer(ref, pin=token.pin)
    assert isinstance(opened, Pkcs11Signer)
    try:
        assert _spki(opened.public_key) == _spki(signer.public_key)
    finally:
        opened.close()


def test_open_signer_reads_pin_from_environment(
    token: SoftHsmToken, signer: Pkcs11Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTRUST_PKCS11_PIN", token.pin)
    opened = open_signer(str(KeyRef.pkcs11(token.module, token.label, signer.key_label)))
    assert isinstance(opened, Pkcs11Signer)
    opened.close()


def test_duplicate_label_refused(token: SoftHsmToken, signer: Pkcs11Signer) -> None:
    with pytest.raises(ConflictError) as info:
        Pkcs11Signer.generate(token.module, token.label, token.pin, signer.key_label)
    assert info.value.reason == "key_exists"
    # The failed attempt released its hold on the session: the signer still signs.
    _verify(signer.public_key, signer.sign(b"ok"), b"ok")


def test_missing_key_not_found(token: SoftHsmToken) -> None:
    with pytest.raises(NotFoundError) as info:
        Pkcs11Signer.open(token.module, token.label, token.pin, unique_key_label("absent"))
    assert info.value.reason == "key_not_found"


def test_wrong_pin_with_no_open_session(token: SoftHsmToken) -> None:
    # No signer holds the token here, so the PIN goes to the token's C_Login.
    with pytest.raises(InputError) as info:
        Pkcs11Signer.generate(token.module, token.label, "wrong-pin-0000", unique_key_label())
    assert info.value.reason == "bad_pin"
    assert "wrong-pin-0000" not in str(info.value)
    # The token is still usable with the right PIN.
    with Pkcs11Signer.generate(token.module, token.label, token.pin, unique_key_label()) as s:
        _verify(s.public_key, s.sign(b"x"), b"x")


def test_wrong_pin_while_a_session_is_open(token: SoftHsmToken, signer: Pkcs11Signer) -> None:
    # A signer holds the logged-in session; a second signer must still prove the PIN.
    with pytest.raises(InputError) as info:
        Pkcs11Signer.open(token.module, token.label, "wrong-pin-1111", signer.key_label)
    assert info.value.reason == "bad_pin"
    _verify(signer.public_key, signer.sign(b"x"), b"x")


def test_unknown_token_is_a_backend_error(token: SoftHsmToken) -> None:
    with pytest.raises(BackendError) as info:
        Pkcs11Signer.open(token.module, "no-such-token", token.pin, "k")
    assert info.value.reason == "token_missing"


def test_unloadable_module_is_a_backend_error() -> None:
    with pytest.raises(BackendError) as info:
        Pkcs11Signer.open("/nonexistent/libnothing.so", "t", "1234", "k")
    assert info.value.reason == "module_unavailable"


def test_invalid_labels_refused(token: SoftHsmToken) -> None:
    for label in ("", "a;b", "x=y", " padded", "a" * 200, "tab\there"):
        with pytest.raises(InputError) as info:
            Pkcs11Signer.generate(token.module, token.label, token.pin, label)
        assert info.value.reason == "invalid_label"


def test_closed_signer_refuses_to_sign(token: SoftHsmToken) -> None:
    s = Pkcs11Signer.generate(token.module, token.label, token.pin, unique_key_label())
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError):
        s.sign(b"x")


def test_concurrent_signing_from_threads(signer: Pkcs11Signer) -> None:
    errors: list[BaseException] = []
    signatures: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            for i in range(50):
                data = f"{n}-{i}".encode()
                sig = signer.sign(data)
                with lock:
                    signatures.append((data, sig))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(signatures) == 400
    for data, sig in signatures:
        _verify(signer.public_key, sig, data)


def test_thousands_of_signatures_reuse_the_session(signer: Pkcs11Signer) -> None:
    public_key = signer.public_key
    last = b""
    for i in range(2000):
        last = signer.sign(i.to_bytes(4, "big"))
    _verify(public_key, last, (1999).to_bytes(4, "big"))


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
