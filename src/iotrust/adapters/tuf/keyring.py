"""Which keys sign which TUF role: the update keyring (``data/tuf/keys.json``).

The keyring lists, for each repository (``image``, ``director``) and each role, a threshold and
the key references (``file:…`` encrypted PEM, ``pkcs11:…`` token objects, see
:mod:`iotrust.adapters.keys.refs`) of the keys that sign it. It holds no secret: keys are opened
through a caller-supplied ``open_key`` (which knows the passphrase or PIN) only when a role is
signed. The image repository's roles are ``root``, ``targets`` (offline-capable: only needed to
add a hardware class or rotate keys), ``snapshot`` and ``timestamp`` (online), ``release`` (signs
every ``fw-<hw_class>`` delegated role) and ``config`` (the configuration role); the director has
``root``, ``targets``, ``snapshot`` and ``timestamp``.

This module does not create keys or sign anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from iotrust.adapters.tuf.signer import PortSigner
from iotrust.errors import InputError, NotFoundError
from iotrust.ports import Signer

IMAGE_ROLES: Final = ("root", "targets", "snapshot", "timestamp", "release", "config")
DIRECTOR_ROLES: Final = ("root", "targets", "snapshot", "timestamp")
REPOSITORIES: Final = {"image": IMAGE_ROLES, "director": DIRECTOR_ROLES}
MAX_KEYRING_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class RoleKeys:
    """The keys of one role and how many must sign."""

    threshold: int
    refs: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.refs or not 1 <= self.threshold <= len(self.refs):
            raise InputError("a role needs 1 <= threshold <= number of keys",
                             reason="invalid_threshold")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Role → keys, per repository."""

    roles: Mapping[str, Mapping[str, RoleKeys]]

    def __post_init__(self) -> None:
        for repo, names in REPOSITORIES.items():
            if set(self.roles.get(repo, {})) != set(names):
                raise InputError(f"the keyring must name exactly the {repo} roles {names}",
                                 reason="keyring_damaged")

    def role(self, repo: str, role: str) -> RoleKeys:
        """The keys of ``role`` in ``repo``."""
        try:
            return self.roles[repo][role]
        except KeyError:
            raise NotFoundError(f"no {repo} role {role!r}", reason="unknown_role") from None

    def replace(self, repo: str, role: str, keys: RoleKeys) -> Keyring:
        """A new keyring with ``role`` of ``repo`` using ``keys``."""
        roles = {r: dict(v) for r, v in self.roles.items()}
        roles[repo][role] = keys
        return Keyring(roles)

    def to_json(self) -> bytes:
        """The file form."""
        doc = {repo: {role: {"threshold": k.threshold, "keys": list(k.refs)}
                      for role, k in sorted(roles.items())}
               for repo, roles in sorted(self.roles.items())}
        return json.dumps({"version": 1, "repositories": doc}, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Keyring:
        """Parse the file form (the parse boundary: ``InputError(keyring_damaged)``)."""
        if len(data) > MAX_KEYRING_BYTES:
            raise InputError("the update keyring is too large", reason="keyring_damaged")
        try:
            doc = json.loads(data)
            repos: dict[str, Any] = doc["repositories"] if doc.get("version") == 1 else {}
            roles = {repo: {role: RoleKeys(int(v["threshold"]), tuple(str(r) for r in v["keys"]))
                            for role, v in entries.items()}
                     for repo, entries in repos.items()}
        except InputError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError("the update keyring is damaged", reason="keyring_damaged") from exc
        return cls(roles)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read ``path``; ``NotFoundError(updates_not_initialised)`` if absent."""
        try:
            return cls.from_json(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError("updates are not initialised here: run `iotrust release init`",
                                reason="updates_not_initialised") from None


class RoleSigners:
    """Opens (once, lazily) and hands out the signers of a repository's roles."""

    def __init__(self, keyring: Keyring, repo: str, open_key: Callable[[str], Signer]) -> None:
        self._keyring = keyring
        self._repo = repo
        self._open = open_key
        self._cache: dict[str, PortSigner] = {}

    def threshold(self, role: str) -> int:
        """How many of ``role``'s keys must sign."""
        return self._keyring.role(self._repo, role).threshold

    def __call__(self, role: str) -> list[PortSigner]:
        """Every key of ``role`` (all of them sign: at least the threshold)."""
        out = []
        for ref in self._keyring.role(self._repo, role).refs:
            if ref not in self._cache:
                self._cache[ref] = PortSigner(self._open(ref))
            out.append(self._cache[ref])
        return out
