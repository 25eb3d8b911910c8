"""Firmware and configuration update rules: custom target fields, must-match, anti-rollback.

Every image target carries ``custom`` fields that the image repository signs and the director
repeats (DESIGN.md §8):

* firmware: ``{"kind": "firmware", "component", "hw_class_ids": [...], "release_counter",
  "min_agent_version"}``;
* configuration: ``{"kind": "config", "scope": "<device id>" | "groups/<g>", "config_version"}``.

:func:`check_agreement` is the Uptane cross-check (the director and the image repository must
agree on length, hashes and every must-match field); :func:`check_release_for_device` is what a
device refuses before it downloads anything (another hardware class, a release counter not above
the installed one, an agent too old); :func:`check_config_newer` refuses stale configuration.
Each check returns nothing or raises :class:`~iotrust.errors.TrustError` with a stable reason from
:data:`REASONS`.

This module is pure: no I/O, no clock, no python-tuf types (targets come as plain values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from iotrust.errors import ConflictError, InputError, TrustError

FIRMWARE: Final = "firmware"
CONFIG: Final = "config"
MAX_COUNTER: Final = 2**53 - 1  # JSON-safe everywhere
COMPONENT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
HW_CLASS_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_RE: Final = re.compile(r"(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,3}")
SCOPE_RE: Final = re.compile(r"dev-[a-z2-7]{26}|groups/[a-z0-9][a-z0-9-]{0,63}")

#: Every reason a device refuses an update or a configuration with (reported as ``rejected``).
REASONS: Final = {
    "wrong_hw_class": "the image is for another hardware class",
    "release_rollback": "the release counter is not above the installed one",
    "agent_too_old": "the image needs a newer agent",
    "mix_and_match": "the director and the image repository disagree",
    "not_in_image_repository": "the image repository does not list the director's target",
    "hash_mismatch": "the downloaded file does not match its signed length and hashes",
    "metadata_expired": "signed metadata has expired (freeze attack or stale mirror)",
    "metadata_unsigned": "metadata lacks a threshold of valid signatures by trusted keys",
    "metadata_rollback": "metadata is older than what the device already trusts",
    "metadata_invalid": "metadata failed verification",
    "download_failed": "a file could not be downloaded",
    "invalid_custom": "the target's custom fields are malformed",
    "config_stale": "the configuration is not newer than the applied one",
    "config_unsigned": "the configuration is not signed by the configuration role",
    "install_failed": "the install hook failed",
    "health_check_failed": "the new image failed its health check",
}


def _refuse(reason: str, detail: str | None = None) -> TrustError:
    return TrustError(REASONS[reason], reason=reason, detail=detail)


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` → ``(1, 2, 3)``; ``InputError(invalid_version)`` otherwise."""
    if not isinstance(text, str) or not VERSION_RE.fullmatch(text):
        raise InputError("a version is 1 to 4 dot-separated numbers", reason="invalid_version")
    return tuple(int(p) for p in text.split("."))


def _check_counter(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNTER:
        raise InputError(f"{what} is an integer in [0, 2^53)", reason="invalid_counter")
    return value


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """The must-match fields of a firmware image."""

    component: str
    hw_class_ids: tuple[str, ...]
    release_counter: int
    min_agent_version: str = "0"

    def __post_init__(self) -> None:
        if not isinstance(self.component, str) or not COMPONENT_RE.fullmatch(self.component):
            raise InputError("a component is a lowercase slug", reason="invalid_component")
        if not self.hw_class_ids or len(self.hw_class_ids) > 64 or not all(  # noqa: PLR2004
                isinstance(h, str) and HW_CLASS_RE.fullmatch(h) for h in self.hw_class_ids):
            raise InputError("hardware class ids are 1 to 64 lowercase slugs",
                             reason="invalid_hw_class")
        if len(set(self.hw_class_ids)) != len(self.hw_class_ids):
            raise InputError("hardware class ids repeat", reason="invalid_hw_class")
        _check_counter(self.release_counter, "the release counter")
        parse_version(self.min_agent_version)

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` object of the target."""
        return {"kind": FIRMWARE, "component": self.component,
                "hw_class_ids": list(self.hw_class_ids), "release_counter": self.release_counter,
                "min_agent_version": self.min_agent_version}


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    """The must-match fields of a configuration document."""

    scope: str
    config_version: int

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not SCOPE_RE.fullmatch(self.scope):
            raise InputError("a configuration scope is a device id or groups/<group>",
                             reason="invalid_scope")
        _check_counter(self.config_version, "the configuration version")

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` object of the target."""
        return {"kind": CONFIG, "scope": self.scope, "config_version": self.config_version}


def _parse_custom(custom: object) -> ReleaseInfo | ConfigInfo:
    if not isinstance(custom, Mapping):
        raise InputError("custom is not an object")
    kind = custom.get("kind")
    if kind == FIRMWARE and set(custom) == {"kind", "component", "hw_class_ids",
                                            "release_counter", "min_agent_version"}:
        hw = custom["hw_class_ids"]
        if not isinstance(hw, list):
            raise InputError("hw_class_ids is a list")
        return ReleaseInfo(custom["component"], tuple(hw), custom["release_counter"],
                           custom["min_agent_version"])
    if kind == CONFIG and set(custom) == {"kind", "scope", "config_version"}:
        return ConfigInfo(custom["scope"], custom["config_version"])
    raise InputError("unknown kind or fields")


def parse_custom(custom: object) -> ReleaseInfo | ConfigInfo:
    """The custom fields of a target (the parse boundary: ``TrustError(invalid_custom)``)."""
    try:
        return _parse_custom(custom)
    except InputError as exc:
        raise _refuse("invalid_custom", exc.message) from None


def check_counter_is_newer(counter: int, highest: int | None, component: str) -> None:
    """Publishing side: refuse a release counter not above the component's highest."""
    if highest is not None and counter <= highest:
        raise ConflictError(f"release counter {counter} is not above {highest} for {component}",
                            reason="release_counter_not_newer")


def check_agreement(director: tuple[int, Mapping[str, str], object],
                    image: tuple[int, Mapping[str, str], object]) -> None:
    """Uptane cross-check: ``(length, hashes, custom)`` of both repositories must agree.

    Every hash both name must match and they must share at least one; the custom objects
    must be equal (every must-match field).
    """
    d_len, d_hashes, d_custom = director
    i_len, i_hashes, i_custom = image
    common = set(d_hashes) & set(i_hashes)
    if d_len != i_len or not common or any(d_hashes[a] != i_hashes[a] for a in common):
        raise _refuse("mix_and_match", "length or hashes differ")
    if d_custom != i_custom:
        raise _refuse("mix_and_match", "must-match fields differ")


def check_release_for_device(info: ReleaseInfo, *, hw_class: str, installed_counter: int | None,
                             agent_version: str) -> None:
    """Device side: refuse another hardware class, a non-newer counter, a too-old agent."""
    if hw_class not in info.hw_class_ids:
        raise _refuse("wrong_hw_class", f"device is {hw_class}")
    if installed_counter is not None and info.release_counter <= installed_counter:
        raise _refuse("release_rollback",
                      f"offered {info.release_counter}, installed {installed_counter}")
    if parse_version(agent_version) < parse_version(info.min_agent_version):
        raise _refuse("agent_too_old", f"needs {info.min_agent_version}")


def check_config_newer(info: ConfigInfo, applied_version: int | None) -> None:
    """Device side: refuse a configuration not newer than the one applied."""
    if applied_version is not None and info.config_version <= applied_version:
        raise _refuse("config_stale",
                      f"offered {info.config_version}, applied {applied_version}")
