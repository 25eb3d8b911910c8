"""A private SoftHSM2 token for tests: one temporary token directory per test process.

Usage (from a test under ``tests/integration``)::

    from tests.integration.softhsm import softhsm_token, unique_key_label

    token = softhsm_token()          # skips (or fails when CI=true) if SoftHSM2 is missing
    signer = Pkcs11Signer.generate(token.module, token.label, token.pin, unique_key_label())

Why one token per process: python-pkcs11 loads a module once per process and SoftHSM2 reads
``SOFTHSM2_CONF`` and its token directory only at ``C_Initialize``; a token created later with
``softhsm2-util`` stays invisible to the loaded library. So the first call points
``SOFTHSM2_CONF`` at a fresh temporary configuration, creates the token, and only then may anyone
load the module; every later call returns the same token, and tests keep apart by using unique
key labels (:func:`unique_key_label`). The directory is removed when the process exits.

This helper does not touch the system token directory (``/var/lib/softhsm``).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import missing_component

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM2_UTIL = "softhsm2-util"


@dataclass(frozen=True)
class SoftHsmToken:
    """A ready token: the PKCS#11 module to load, the token label, its user and SO PINs."""

    module: str
    label: str
    pin: str
    so_pin: str
    conf: Path
    directory: Path

    def env(self) -> dict[str, str]:
        """Environment for a child process that must see this token."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


_lock = threading.Lock()
_token: SoftHsmToken | None = None


def softhsm_available() -> str | None:
    """Return why SoftHSM2 cannot be used here, or ``None`` if it can."""
    if shutil.which(SOFTHSM2_UTIL) is None:
        return f"{SOFTHSM2_UTIL} is not installed (apt-get install softhsm2)"
    if not Path(SOFTHSM2_MODULE).exists():
        return f"the SoftHSM2 PKCS#11 module {SOFTHSM2_MODULE} is missing"
    return None


def require_softhsm() -> None:
    """Skip the calling test when SoftHSM2 is missing; fail instead when ``CI=true``."""
    problem = softhsm_available()
    if problem is None:
        return
    missing_component(f"SoftHSM2 ({problem})")


def softhsm_token() -> SoftHsmToken:
    """The process-wide test token, created on first use (see the module docstring)."""
    global _token  # noqa: PLW0603 - one token per process is the point of this helper
    require_softhsm()
    with _lock:
        if _token is None:
            _token = _create_token()
        return _token


def unique_key_label(prefix: str = "test") -> str:
    """A key label no other test in this process uses."""
    return f"{prefix}-{secrets.token_hex(6)}"


def _create_token() -> SoftHsmToken:
    import pkcs11  # noqa: PLC0415 - only to check nobody loaded the module before us

    if SOFTHSM2_MODULE in pkcs11._loaded:
        msg = (
            "the SoftHSM2 module was loaded before softhsm_token() set SOFTHSM2_CONF; "
            "call softhsm_token() before any pkcs11.lib() in this process"
        )
        raise RuntimeError(msg)
    directory = Path(tempfile.mkdtemp(prefix="iotrust-softhsm-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    token = SoftHsmToken(
        module=SOFTHSM2_MODULE,
        label=f"iotrust-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
        conf=conf,
        directory=directory,
    )
    result = subprocess.run(
        [
            SOFTHSM2_UTIL,
            "--init-token",
            "--free",
            "--label",
            token.label,
            "--pin",
            token.pin,
            "--so-pin",
            token.so_pin,
        ],
        env=token.env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        msg = f"softhsm2-util --init-token failed: {result.stderr.strip() or result.stdout.strip()}"
        raise RuntimeError(msg)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return token
