"""The ``config-copied`` audit check: device configuration documents copied between devices.

Configuration documents are signed TUF targets of the ``config`` role (DESIGN.md §8), published
per *scope*:

* ``config/<device id>/config-vN.json`` — a **device-specific** document: it may hold that
  device's credentials, ids or secrets, so its settings must differ from every other device's;
* ``config/groups/<group>/config-vN.json`` — a **group** document, shared by design by every
  member of the group (model-wide or fleet-wide settings belong here).

The scope is the only thing that says "shared on purpose": a group document never triggers the
check, whatever it contains. A device's current document is its highest version (what the
director offers); superseded versions are not compared.

The published bytes are ``{"scope", "version", "settings"}`` and name their scope, so the
target hash of the signed metadata differs for every device even when the settings were copied
verbatim. The check therefore compares a hash of the *settings alone*: :func:`describe` checks
the bytes against the signed target hash first (a file that does not match its signature is
reported, never compared), then hashes the settings in canonical form (sorted keys, no
whitespace). Two or more devices whose current documents have the same non-empty settings give
one finding, CRITICAL when a setting name looks like a secret (``password``, ``token``,
``psk``, ...), HIGH otherwise; the evidence carries the settings hash, the target names and
hashes and the secret-looking setting *names* (never a value).

This module does no I/O: the service reads the metadata and the target bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from iotrust.core.audit import ConfigDocument, Finding, Snapshot
from iotrust.core.audit_keys import Severity
from iotrust.core.ids import DEVICE_ID_RE

__all__ = [
    "GROUP_SCOPE_PREFIX",
    "ConfigCopied",
    "ConfigTarget",
    "current_targets",
    "describe",
    "secret_fields",
    "settings_digest",
    "wants_bytes",
]

#: Scopes starting with this are shared by design.
GROUP_SCOPE_PREFIX: Final = "groups/"
#: Published configuration documents are at most 64 KiB (``services.updates``); a little slack.
MAX_DOCUMENT_BYTES: Final = 64 * 1024 + 1024
_MAX_DEPTH: Final = 32
_MAX_SECRET_FIELDS: Final = 50
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
# Setting names that look like secrets: substrings, and whole words (``pin``, ``key``).
_SECRET_PARTS: Final = ("passw", "passphrase", "secret", "token", "private", "credential",
                        "apikey", "psk")
_SECRET_WORDS: Final = frozenset({"pin", "key", "pass", "pwd", "auth"})
_WORD_SPLIT: Final = re.compile(r"[^a-z0-9]+")
_CAMEL: Final = re.compile(r"([a-z0-9])([A-Z])")


class ConfigTarget(NamedTuple):
    """A configuration target as its signed metadata describes it."""

    path: str
    scope: str
    version: int
    sha256: str
    length: int


def current_targets(targets: Iterable[ConfigTarget]) -> list[ConfigTarget]:
    """The highest-version target of each scope, sorted by scope."""
    best: dict[str, ConfigTarget] = {}
    for t in targets:
        held = best.get(t.scope)
        if held is None or t.version > held.version:
            best[t.scope] = t
    return [best[scope] for scope in sorted(best)]


def settings_digest(settings: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``settings`` in canonical form (sorted keys, compact, UTF-8)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _secret_like(name: str) -> bool:
    lowered = name.lower()
    if any(part in lowered for part in _SECRET_PARTS):
        return True
    words = _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower())
    return any(word in _SECRET_WORDS for word in words)


def secret_fields(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """Dotted paths of settings whose names look like secrets (at most 50), sorted."""
    found: set[str] = set()

    def walk(value: object, prefix: str, depth: int) -> None:
        if depth > _MAX_DEPTH or len(found) >= _MAX_SECRET_FIELDS:
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                path = f"{prefix}{key}"
                if _secret_like(str(key)):
                    found.add(path)
                walk(item, f"{path}.", depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{prefix}[].", depth + 1)

    walk(settings, "", 0)
    return tuple(sorted(found))[:_MAX_SECRET_FIELDS]


class _Unreadable(Exception):  # noqa: N818 - internal control flow, never escapes
    """A document :func:`describe` cannot compare; the message says why."""


def _settings_of(target: ConfigTarget, data: bytes | None) -> dict[str, Any]:
    if not _SHA256.fullmatch(target.sha256):
        raise _Unreadable("the signed metadata has no SHA-256 for it")
    if not 0 < target.length <= MAX_DOCUMENT_BYTES:
        raise _Unreadable("the signed length is not that of a configuration document")
    if data is None:
        raise _Unreadable("the target file is missing")
    if len(data) > MAX_DOCUMENT_BYTES or hashlib.sha256(data).hexdigest() != target.sha256:
        raise _Unreadable("the target file does not match its signed hash")
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _Unreadable("the target file is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("settings"), dict):
        raise _Unreadable("the target file has no settings object")
    if body.get("scope") != target.scope:
        raise _Unreadable("the document names another scope than its target")
    settings: dict[str, Any] = body["settings"]
    return settings


def wants_bytes(target: ConfigTarget) -> bool:
    """Whether :func:`describe` needs ``target``'s bytes (a SHA-256 and a plausible length)."""
    return bool(_SHA256.fullmatch(target.sha256)) and 0 < target.length <= MAX_DOCUMENT_BYTES


def describe(target: ConfigTarget, data: bytes | None) -> ConfigDocument:
    """What the audit compares of ``target``, given its bytes (``None``: the file is missing).

    The bytes must match the signed SHA-256 and parse as the published form whose ``scope``
    is the target's; otherwise the document carries a ``problem`` and no settings hash.
    """
    try:
        settings = _settings_of(target, data)
        digest = settings_digest(settings)
    except _Unreadable as exc:
        return ConfigDocument(target.path, target.scope, target.version, target.sha256, None,
                              problem=str(exc))
    except ValueError:  # NaN or infinity: not canonical JSON
        return ConfigDocument(target.path, target.scope, target.version, target.sha256, None,
                              problem="the settings cannot be put in canonical form")
    return ConfigDocument(target.path, target.scope, target.version, target.sha256, digest,
                          settings_count=len(settings), secret_fields=secret_fields(settings))


def _device_scoped(doc: ConfigDocument) -> bool:
    return not doc.scope.startswith(GROUP_SCOPE_PREFIX) and bool(
        DEVICE_ID_RE.fullmatch(doc.scope))


class ConfigCopied:
    """Device-scoped configuration documents whose settings are identical on several devices.

    Group documents (scope ``groups/<g>``) are shared by design and never compared; empty
    settings carry nothing device-specific and are not compared either.
    """

    id = "config-copied"
    title = "Configuration document copied verbatim between devices"
    severity = Severity.HIGH

    def run(self, snapshot: Snapshot) -> Iterator[Finding]:
        """One finding per set of identical device documents, one for unreadable ones."""
        limit = snapshot.config.max_affected
        by_digest: dict[str, list[ConfigDocument]] = {}
        unreadable: list[ConfigDocument] = []
        for doc in snapshot.config_documents():
            if not _device_scoped(doc):
                continue
            if doc.settings_sha256 is None:
                unreadable.append(doc)
            elif doc.settings_count > 0:
                by_digest.setdefault(doc.settings_sha256, []).append(doc)
        for digest, docs in sorted(by_digest.items()):
            devices = sorted({d.scope for d in docs})
            if len(devices) < 2:  # noqa: PLR2004 - "two or more devices"
                continue
            secrets = sorted({f for d in docs for f in d.secret_fields})
            severity = Severity.CRITICAL if secrets else Severity.HIGH
            shown = sorted(docs, key=lambda d: d.scope)[:limit]
            yield Finding(
                self.id, severity,
                f"{len(devices)} devices have the same configuration settings "
                f"({digest[:16]}…)" + (" including secret-looking settings" if secrets else ""),
                tuple(devices[:limit]),
                {"count": len(devices), "settings_sha256": digest,
                 "targets": [d.path for d in shown],
                 "target_sha256": {d.path: d.target_sha256 for d in shown},
                 "secret_like_fields": secrets},
                "publish a distinct document per device (fresh credentials and ids for each: "
                "iotrust release config --device ID) and rotate any secret the copies share; "
                "settings meant for many devices belong in a group document (--group G)")
        if unreadable:
            shown = unreadable[:limit]
            yield Finding(
                self.id, Severity.MEDIUM,
                f"{len(unreadable)} device configuration document(s) could not be compared",
                tuple(d.scope for d in shown),
                {"count": len(unreadable),
                 "problems": {d.path: d.problem for d in shown}},
                "republish these documents (iotrust release config); a file that no longer "
                "matches its signed hash was altered on disk")
